"""The compile targets behind `nexusdsl.compile(..., target=...)`, all built from the one
lowered fx module:

- "torch": the eager `NexusModule`;
- "torch.compile": that module compiled in place by torch.compile (options: `mode`,
  `backend`, `fullgraph`);
- "mlir-torch", "mlir-linalg", "mlir-stablehlo", "mlir-tosa": MLIR text (options: `sizes`,
  `dynamic`);
- "iree-cpu", "iree-cuda": an `IreeModule`, called like the torch module and compiled by
  IREE for the shapes it is called with (options: `route`, `sizes`, `dynamic`, `cpu`,
  `cuda_arch`).

Every target first checks that each op of the graph lowers to it (`check_backend`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nexusdsl.compiler.backends import DEFAULT_ROUTE, BackendError, check_backend
from nexusdsl.compiler.lower.iree import DEFAULT_CPU, IreeRunner, check_route, compile_vmfb
from nexusdsl.compiler.lower.mlir import DIALECTS, InputShape, input_shapes, to_mlir

TARGETS = ("torch", "torch.compile", "iree-cpu", "iree-cuda", *DIALECTS)
OPTIONS = {
    "torch": set(),
    "torch.compile": {"mode", "backend", "fullgraph"},
    **{d: {"sizes", "dynamic"} for d in DIALECTS},
    **{t: {"route", "sizes", "dynamic", "cpu", "cuda_arch"} for t in ("iree-cpu", "iree-cuda")},
}


def build(graph, target: str, *, device="cpu", dtype="f32", seed=0, options=None,
          sources: dict[str, str] | None = None, fill=None):
    """What `nexusdsl.compile` returns for `target` (see the module docstring). `fill(module)`
    sets weights (a checkpoint's) on the lowered module before the target is built."""
    from nexusdsl.compiler.lower.fx import lower

    options = dict(options or {})
    unknown = set(options) - OPTIONS[target]
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[target])) or "none"
        raise ValueError(f"target {target} takes no option {', '.join(sorted(unknown))} "
                         f"(its options: {allowed})")
    check_backend(graph, target, options.get("route", DEFAULT_ROUTE), sources)
    module = lower(graph, device=device, dtype=dtype, seed=seed)
    if fill is not None:
        fill(module)
    if target == "torch":
        return module
    if target == "torch.compile":
        from nexusdsl.compiler.lower.compile import compile_module

        return compile_module(module, **options)
    if target in DIALECTS:
        return to_mlir(module, target, options.get("sizes"), options.get("dynamic", ()))
    return IreeModule(module, target, **options)


@dataclass
class Artifact:
    """One IREE compilation: the MLIR it came from, the vmfb, the input shapes it accepts
    (dynamic axes as named in `InputShape.dynamic`), and how long each stage took."""

    shapes: list[InputShape]
    mlir: str
    vmfb: bytes
    seconds: dict[str, float] = field(default_factory=dict)
    runner: IreeRunner | None = None

    def accepts(self, tensors) -> bool:
        for spec, t in zip(self.shapes, tensors):
            dynamic = {i for i, _ in spec.dynamic}
            if t.dim() != len(spec.shape):
                return False
            if any(n != s for i, (n, s) in enumerate(zip(t.shape, spec.shape)) if i not in dynamic):
                return False
        return True


class IreeModule:
    """A model run by IREE, called like its torch module: positional inputs (or by name),
    one tensor back for one output, a dict for several. It compiles on the first call with
    new input shapes (static shapes, except the axes named in `dynamic`) and keeps every
    compilation in `.artifacts`. Weights are those of `.module`, the eager module, frozen
    into the vmfb when it is compiled (exported from a CPU copy when it is on a GPU). Results
    come back on the device of the first input (the CPU without inputs). `cuda_arch` None:
    the visible GPU's architecture."""

    def __init__(self, module, target: str = "iree-cpu", route: str = DEFAULT_ROUTE,
                 sizes: dict[str, int] | None = None, dynamic: Sequence[str] = (),
                 cpu: str = DEFAULT_CPU, cuda_arch: str | None = None):
        check_route(target, route)
        if any(p.dtype.is_floating_point and p.dtype.itemsize < 4 for p in module.parameters()):
            raise BackendError("IREE targets run f32 or f64 models here (numpy has no bf16)")
        self.module, self.target, self.route = module, target, route
        self.graph = module.graph
        self.sizes, self.dynamic = dict(sizes or {}), tuple(dynamic)
        self.cpu, self.cuda_arch = cpu, cuda_arch
        self.artifacts: list[Artifact] = []

    @property
    def input_names(self) -> list[str]:
        return self.module.input_names

    @property
    def output_names(self) -> list[str]:
        return self.module.output_names

    def compile(self, inputs=None, sizes: dict[str, int] | None = None) -> Artifact:
        """Compile for the shapes of `inputs` (or for `sizes`, or the defaults)."""
        start = time.perf_counter()
        sizes = self._sizes_of(inputs) if inputs is not None else {**self.sizes, **(sizes or {})}
        shapes = input_shapes(self.graph, sizes, self.dynamic)
        mlir = to_mlir(self.module, self.route, sizes, self.dynamic, inputs)
        exported = time.perf_counter()
        vmfb = compile_vmfb(mlir, self.target, self.route, cpu=self.cpu, cuda_arch=self.cuda_arch)
        seconds = {"export": exported - start, "iree": time.perf_counter() - exported}
        artifact = Artifact(shapes, mlir, vmfb, seconds)
        self.artifacts.append(artifact)
        return artifact

    def save(self, path) -> None:
        """Write the vmfb of the latest compilation (compiling for `sizes` if none yet)."""
        from nexusdsl.fsutil import atomic_write_bytes

        artifact = self.artifacts[-1] if self.artifacts else self.compile()
        atomic_write_bytes(path, artifact.vmfb)

    def __call__(self, *args, **kwargs):
        inputs = self._bind(args, kwargs)
        artifact = next((a for a in self.artifacts if a.accepts(inputs)), None)
        if artifact is None:
            artifact = self.compile(inputs)
        if artifact.runner is None:
            artifact.runner = IreeRunner(artifact.vmfb, self.target)
        outputs = artifact.runner(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        if inputs and inputs[0].device.type != "cpu":  # the caller's device, as eager gives
            outputs = tuple(o.to(inputs[0].device) for o in outputs)
        if len(self.output_names) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs))

    def _bind(self, args, kwargs) -> list:
        names = self.input_names
        if len(args) > len(names):
            raise TypeError(f"model {self.graph.name} takes {len(names)} inputs, got {len(args)}")
        bound = dict(zip(names, args)) | kwargs
        missing = [n for n in names if n not in bound]
        extra = [n for n in bound if n not in names]
        if missing or extra:
            raise TypeError(f"model {self.graph.name} takes inputs {', '.join(names)}; "
                            f"missing {missing or 'none'}, unknown {extra or 'none'}")
        return [bound[n] for n in names]

    def _sizes_of(self, inputs) -> dict[str, int]:
        """The symbolic axis sizes these input tensors bind."""
        sizes: dict[str, int] = {}
        for node, tensor in zip(self.graph.inputs(), inputs):
            if tensor.dim() != node.type.rank:
                raise BackendError(f"input {node.name} should have {node.type.rank} axes "
                                   f"{node.type}, got shape {tuple(tensor.shape)}")
            for axis, n in zip(node.type.axes, tensor.shape):
                if axis.size is None:
                    sizes.setdefault(axis.name, int(n))
        return sizes
