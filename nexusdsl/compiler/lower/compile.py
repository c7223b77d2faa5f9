"""`torch.compile` of a lowered module (the `torch.compile` target, `nexus run --backend
compile`).

The module is compiled in place, so it keeps its type, its `.graph` and its state_dict keys.
What gets compiled is the module's generated fx `forward`, not `NexusModule.forward`: the
latter is one code object shared by every model, so dynamo would recompile that one frame for
each new model and, past its recompile limit (8), silently run the rest in eager mode.

Inductor on the CPU needs a C++ compiler: without one it would fail at the first call with a
deep traceback, so `compile_module` looks for one first and says plainly what is missing.
"""

from __future__ import annotations

from nexusdsl.compiler.backends import BackendError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def cpp_compiler() -> str:
    """The C++ compiler Inductor would use (it honours $CXX), or a BackendError."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, RuntimeError, OSError) as err:
        raise BackendError("torch.compile (Inductor) needs a C++ compiler for CPU code, and "
                           "none was found: install g++ (or set $CXX), or use the eager "
                           f"target ({type(err).__name__})") from None


def compile_module(module, mode: str | None = None, backend: str = "inductor",
                   fullgraph: bool = False):
    """Compile `module` in place with torch.compile and return it. `backend="eager"` only
    traces (fast; what the tests use), "inductor" generates code."""
    if mode is not None and mode not in MODES:
        raise BackendError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    if backend == "inductor" and _on_cpu(module):
        cpp_compiler()
    import torch

    options = {"backend": backend, "fullgraph": fullgraph}
    if mode not in (None, "default"):
        options["mode"] = mode
    # NexusModule.forward calls `_forward`, the fx GraphModule's generated forward (one code
    # object per model); compiling it keeps dynamo's caches per model.
    module.__dict__["_forward"] = torch.compile(module._forward, **options)
    return module


def run_compiled(module, *inputs):
    """Call a compiled module; a failure inside the compiler becomes one BackendError."""
    import torch._dynamo.exc as dynamo_exc

    try:
        return module(*inputs)
    except dynamo_exc.BackendCompilerFailed as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendError(f"torch.compile failed: {first}") from err


def _on_cpu(module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())
