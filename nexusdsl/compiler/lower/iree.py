"""MLIR text -> an IREE vmfb, and running it.

    vmfb = compile_vmfb(to_mlir(module, "mlir-torch"), "iree-cpu")
    outputs = IreeRunner(vmfb, "iree-cpu")(tokens)

Measured with torch-mlir 20261001 and iree-base-compiler 3.13: torch-dialect MLIR fed with
`input_type="torch"` is the most robust route (the default); linalg output contains
`tm_tensor` ops and needs `input_type="tm_tensor"`. StableHLO and TOSA are no IREE routes:
IREE fails on torch-mlir's StableHLO for `topk` (`chlo.top_k` wants i32 indices) and for uint8
constants, and cannot parse its TOSA (`tosa.const_shape`). The CUDA
target compiles for the visible GPU's architecture (`visible_cuda_arch`: sm_75 on a Turing
card, which sm_80 code cannot run on), sm_80 where no GPU is visible; sm_90 fails inside
IREE, so Hopper and later GPUs get sm_80 code, which their driver compiles from its PTX.
"""

from __future__ import annotations

import functools

from nexusdsl.compiler.backends import IREE_ROUTES, BackendError

# target -> (IREE HAL target backend, runtime driver)
TARGETS = {"iree-cpu": ("llvm-cpu", "local-task"), "iree-cuda": ("cuda", "cuda")}
INPUT_TYPES = {"mlir-torch": "torch", "mlir-linalg": "tm_tensor"}
DEFAULT_CUDA_ARCH = "sm_80"
NEWEST_CUDA_ARCH = (8, 9)  # IREE 3.13 fails on sm_90: newer GPUs run sm_80 code (its PTX)
DEFAULT_CPU = "host"


def cuda_arch_of(capability: tuple[int, int]) -> str:
    """IREE's name of the architecture of a GPU of this compute capability: (7, 5) -> sm_75."""
    major, minor = capability
    if (major, minor) > NEWEST_CUDA_ARCH:
        return DEFAULT_CUDA_ARCH
    return f"sm_{major}{minor}"


def visible_cuda_arch() -> str:
    """The architecture of the current CUDA device, or sm_80 when none is visible."""
    import torch

    if not torch.cuda.is_available():
        return DEFAULT_CUDA_ARCH
    return cuda_arch_of(torch.cuda.get_device_capability())


def target_flags(target: str, cpu: str = DEFAULT_CPU, cuda_arch: str | None = None):
    """IREE's flags for `target`; `cuda_arch` None: the visible GPU's (`visible_cuda_arch`)."""
    if target == "iree-cpu":
        return [f"--iree-llvmcpu-target-cpu={cpu}"]
    return [f"--iree-cuda-target={cuda_arch or visible_cuda_arch()}"]


def compile_vmfb(mlir: str, target: str = "iree-cpu", route: str = "mlir-torch", *,
                 cpu: str = DEFAULT_CPU, cuda_arch: str | None = None) -> bytes:
    """Compile MLIR text of dialect `route` for an IREE target; returns the vmfb bytes."""
    check_route(target, route)
    compiler = _iree_compiler()
    backend, _ = TARGETS[target]
    try:
        return compiler.compile_str(mlir, target_backends=[backend],
                                    input_type=INPUT_TYPES[route],
                                    extra_args=target_flags(target, cpu, cuda_arch))
    except compiler.CompilerToolError as err:
        raise BackendError(f"IREE could not compile the {route} MLIR for {target}:\n"
                           f"{_diagnostics(str(err))}") from err


def check_route(target: str, route: str) -> None:
    if target not in TARGETS:
        raise BackendError(f"unknown IREE target {target!r}; choose one of {', '.join(TARGETS)}")
    if route == "mlir-tosa":
        raise BackendError("IREE 3.13 cannot parse torch-mlir's TOSA output (tosa.const_shape); "
                           "feed it mlir-torch (the default) or mlir-linalg")
    if route == "mlir-stablehlo":
        raise BackendError("IREE 3.13 fails on torch-mlir's StableHLO for topk (chlo.top_k) and "
                           "uint8 constants; feed it mlir-torch (the default) or mlir-linalg")
    if route not in IREE_ROUTES:
        raise BackendError(f"unknown MLIR route {route!r}; choose one of {', '.join(IREE_ROUTES)}")


def _diagnostics(message: str, limit: int = 12) -> str:
    """The compiler's diagnostics, without the command line it was invoked with."""
    text = message.split("Diagnostics:", 1)[-1].split("Invoked with:", 1)[0]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:limit])


def _iree_compiler():
    try:
        import iree.compiler as compiler
    except ImportError as err:
        raise BackendError("IREE targets need iree-base-compiler: pip install "
                           "'nexusdsl[mlir]'") from err
    return compiler


@functools.cache
def _runtime_config(driver: str):
    """One runtime device per driver and process (making one starts its worker threads)."""
    try:
        import iree.runtime as rt
    except ImportError as err:
        raise BackendError("running a vmfb needs iree-base-runtime: pip install "
                           "'nexusdsl[mlir]'") from err
    try:
        return rt.Config(driver)
    except (RuntimeError, ValueError) as err:
        what = "CUDA GPU" if driver == "cuda" else f"IREE {driver} driver"
        raise BackendError(f"cannot run the vmfb here: no {what} is available ({err})") from err


class IreeRunner:
    """A loaded vmfb: call it with torch tensors (positional, in the model's input order) and
    get torch tensors back, one or a tuple."""

    def __init__(self, vmfb: bytes, target: str = "iree-cpu", function: str = "main"):
        import iree.runtime as rt

        self.target = target
        config = _runtime_config(TARGETS[target][1])
        module = rt.VmModule.copy_buffer(config.vm_instance, vmfb)
        self._function = rt.load_vm_module(module, config)[function]

    def __call__(self, *inputs):
        import torch

        arrays = [t.detach().cpu().contiguous().numpy() for t in inputs]
        result = self._function(*arrays)
        if isinstance(result, (tuple, list)):
            return tuple(torch.from_numpy(r.to_host().copy()) for r in result)
        return torch.from_numpy(result.to_host().copy())
