"""The fx module -> MLIR text, through `torch.export` and torch-mlir's fx importer.

    text = to_mlir(module, "mlir-linalg", sizes={"B": 2, "T": 64}, dynamic=["B"])

Shapes are static: fixed axes keep their sizes, symbolic axes (B, T) take `sizes`, else the
defaults below; `dynamic` keeps some symbolic axes dynamic in the MLIR (one `torch.export.Dim`
per axis name, so every input's B is the same dimension). Weights are frozen into the module
as constants, so the MLIR (and a vmfb built from it) is self-contained.

Ops whose eager form torch-mlir cannot import may define `Op.lower_portable(attrs)` (same
numerics, MLIR-friendly form: static shapes, no complex numbers); `portable_forms` swaps those
in for the export and restores the module afterwards.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nexusdsl.compiler.backends import BackendError
from nexusdsl.ir.graph import Graph
from nexusdsl.ops import REGISTRY

# torch-mlir output types for our dialect names.
DIALECTS = {"mlir-torch": "torch", "mlir-linalg": "linalg-on-tensors",
            "mlir-stablehlo": "stablehlo", "mlir-tosa": "tosa"}
# What a symbolic axis becomes when no size is given: the leading axis of an input (the
# batch, by convention) 1, any other (a sequence length) 16.
DEFAULT_BATCH = 1
DEFAULT_SYMBOLIC = 16
_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16",
           "i64": "int64", "bool": "bool"}


@dataclass(frozen=True)
class InputShape:
    """One model input at concrete sizes. `dynamic` maps a position to its axis name."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    vocab: int | None = None
    dynamic: tuple[tuple[int, str], ...] = ()

    def __str__(self) -> str:
        names = dict(self.dynamic)
        dims = ", ".join(f"{names[i]}?" if i in names else str(s) for i, s in enumerate(self.shape))
        return f"{self.name}: {self.dtype}[{dims}]"


def symbolic_axes(graph: Graph) -> list[str]:
    """The names of the symbolic axes of the model's inputs, in order of appearance."""
    names: list[str] = []
    for node in graph.inputs():
        for axis in node.type.axes:
            if axis.size is None and axis.name not in names:
                names.append(axis.name)
    return names


def input_shapes(graph: Graph, sizes: dict[str, int] | None = None,
                 dynamic: Sequence[str] = ()) -> list[InputShape]:
    """Concrete shapes of the model's inputs. A dynamic axis gets an example size of at least
    2, since torch.export specialises sizes 0 and 1."""
    sizes, known = dict(sizes or {}), symbolic_axes(graph)
    for name in [*sizes, *dynamic]:
        if name not in known:
            listing = ", ".join(known) or "none"
            raise BackendError(f"no input of model {graph.name} has a symbolic axis {name} "
                               f"(its symbolic axes: {listing})")
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise BackendError(f"axis {name} must get a positive integer size, got {size!r}")
    shapes = []
    for node in graph.inputs():
        dims, dyn = [], []
        for i, axis in enumerate(node.type.axes):
            size = axis.size or sizes.get(axis.name, DEFAULT_BATCH if i == 0 else DEFAULT_SYMBOLIC)
            if axis.size is None and axis.name in dynamic:
                size, dyn = max(size, 2), [*dyn, (i, axis.name)]
            dims.append(size)
        shapes.append(InputShape(node.name, tuple(dims), node.type.dtype,
                                 id_bound(graph, node), tuple(dyn)))
    return shapes


def id_bound(graph: Graph, node) -> int | None:
    """How many ids an integer input may hold: its modality's vocabulary, or the smallest
    table among the `embed` nodes that read it (`embed(ids, dim, vocab = 100)`)."""
    bounds = [node.attrs["vocab"]] if node.attrs.get("vocab") else []
    for user in graph.users(node):
        weight = user.params.get("weight") if user.op == "embed" else None
        if weight is not None and not weight.tied_to:
            bounds.append(weight.shape[0])
    return min(bounds) if bounds else None


def example_inputs(shapes: list[InputShape], device="cpu", seed: int = 0) -> list:
    """Random inputs of these shapes: ids below the vocabulary, floats standard normal."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for s in shapes:
        dtype = getattr(torch, _DTYPES[s.dtype])
        if s.dtype == "i64":
            t = torch.randint(0, s.vocab or 256, s.shape, generator=gen)
        elif s.dtype == "bool":
            t = torch.rand(s.shape, generator=gen) < 0.5
        else:
            t = torch.randn(s.shape, generator=gen).to(dtype)
        tensors.append(t.to(device))
    return tensors


@contextlib.contextmanager
def portable_forms(module) -> Iterator[None]:
    """Swap in `lower_portable` forms of the ops that have one, and eval mode (no dropout),
    for the duration of an export; the module is restored afterwards."""
    swapped, training = [], module.training
    for node, op_module in _op_modules(module.graph, module):
        op = REGISTRY[node.op]
        portable = getattr(op, "lower_portable", None)
        if portable is not None:
            swapped.append((op_module, op_module._fn))
            op_module._fn = portable(op.Attrs.model_validate(node.attrs))
    module.eval()
    try:
        yield
    finally:
        for op_module, fn in swapped:
            op_module._fn = fn
        module.train(training)


def _op_modules(graph: Graph, module):
    """(node, its OpModule) for every op node, nested regions included."""
    for node in graph.nodes():
        if node.op == "input" or node.shares:
            continue
        op_module = module.get_submodule(node.name)
        yield node, op_module
        if node.regions:
            bodies = getattr(op_module, REGISTRY[node.op].region_name)
            for region, body in zip(node.regions, bodies):
                yield from _op_modules(region, body)


def export_program(module, shapes: list[InputShape], inputs: list | None = None):
    """`torch.export` of the module at these shapes (dynamic axes shared by name), always
    from the CPU (`on_cpu`): a model on a GPU is exported from a copy."""
    import torch

    module = on_cpu(module)
    inputs = [t.cpu() for t in inputs] if inputs is not None else example_inputs(shapes)
    dims: dict[str, object] = {}
    dynamic = {s.name: {i: dims.setdefault(n, torch.export.Dim(n)) for i, n in s.dynamic}
               for s in shapes}
    spec = dynamic if any(dynamic.values()) else None
    with portable_forms(module):
        with torch.no_grad():  # one eager call first: ops that build constants lazily (a
            module.fx(*inputs)  # random wiring's mask) must not trace their generators
        try:
            return torch.export.export(module.fx, tuple(inputs), dynamic_shapes=spec,
                                       strict=False)
        except Exception as err:  # torch.export reports constraint violations this way
            raise BackendError(f"torch.export could not trace model {module.graph.name}: "
                               f"{_first_lines(str(err))}") from err


def to_mlir(module, dialect: str, sizes: dict[str, int] | None = None,
            dynamic: Sequence[str] = (), inputs: list | None = None) -> str:
    """MLIR text of a lowered module in one of `DIALECTS`, with a header naming the shapes."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown MLIR dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    shapes = input_shapes(module.graph, sizes, dynamic)
    program = export_program(module, shapes, inputs)
    text = import_program(program, dialect)
    header = [f"// nexus: model {module.graph.name}, {dialect}",
              *(f"// input {s}" for s in shapes)]
    return "\n".join(header) + "\n" + text


def import_program(program, dialect: str) -> str:
    """torch-mlir's fx importer on an exported program. MLIR's diagnostics are collected
    (not printed to stderr) and the failing ops named in the error."""
    fx_importer, diagnostics = _importer()
    program = _buffers_as_constants(program)
    try:
        with warnings.catch_warnings():  # torch-mlir 20261001 uses a deprecated pytree API
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            mlir = _torch_mlir_fx().export_and_import(program, output_type=DIALECTS[dialect],
                                                      func_name="main", fx_importer=fx_importer)
    except Exception as err:
        raise BackendError(f"torch-mlir could not lower to {dialect}: "
                           f"{_mlir_errors(diagnostics, str(err))}") from err
    return str(mlir)


def _buffers_as_constants(program):
    """torch-mlir's import looks every buffer up in the state_dict, where a non-persistent
    one (a pretrained module's position ids or rotary frequencies) never is: such buffers go
    over as the constants they are (the program holds their values among its constants)."""
    import torch
    from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec

    sig = program.graph_signature
    loose = [s.kind == InputKind.BUFFER and not s.persistent for s in sig.input_specs]
    if not any(loose):
        return program
    specs = [InputSpec(InputKind.CONSTANT_TENSOR, s.arg, s.target, None) if lost else s
             for s, lost in zip(sig.input_specs, loose)]
    return torch.export.ExportedProgram(
        program.graph_module, program.graph, ExportGraphSignature(specs, sig.output_specs),
        program.state_dict, program.range_constraints, program.module_call_graph,
        program.example_inputs, program.constants, verifiers=program.verifiers)


def _importer():
    """An FxImporter whose MLIR context keeps its diagnostics in a list."""
    _torch_mlir_fx()
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    from torch_mlir.extras.fx_importer import FxImporter

    context, diagnostics = ir.Context(), []
    torch_d.register_dialect(context)

    def keep(diagnostic) -> bool:
        diagnostics.append(str(diagnostic.message))
        return True  # handled: nothing is printed

    context.attach_diagnostic_handler(keep)
    return FxImporter(context=context), diagnostics


def _torch_mlir_fx():
    try:
        from torch_mlir import fx
    except ImportError as err:
        raise BackendError("MLIR output needs torch-mlir: pip install 'nexusdsl[mlir]' "
                           "(torch-mlir, iree-base-compiler, iree-base-runtime)") from err
    return fx


def on_cpu(module):
    """The module itself when its weights and buffers are on the CPU, else a CPU copy of it.
    Exporting on a GPU would fail on CPU inputs (a device mismatch) and record CUDA-only
    kernels (flash and memory-efficient attention) that torch-mlir cannot lower; the MLIR
    holds the weights as constants, not where they lived."""
    import copy

    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return module
    return copy.deepcopy(module).to("cpu")


def _first_lines(message: str, count: int = 6) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:count])


def _mlir_errors(diagnostics: list[str], message: str) -> str:
    """The ops MLIR failed on (`torch.aten.sort.stable`), else its first diagnostics."""
    ops = [m.group(1) for d in diagnostics
           for m in [re.search(r"name = \"(torch\.aten\.[\w.]+)\"", d)
                     or re.search(r"operation '([\w.]+)'", d)] if m]
    if ops:
        listing = ", ".join(dict.fromkeys(ops))
        return f"no lowering for {listing} (from an op's torch implementation)"
    lines = [line[:300] for line in diagnostics[:3]]
    return "\n".join(lines) if lines else _first_lines(message)
