"""IR graph -> one torch.fx GraphModule, wrapped as a `NexusModule`.

Every IR node becomes a `call_module` of an `OpModule` registered under the node's IR name, so
the state_dict reads like the `.nx` file (`tok.weight`, `blocks.0.attention.qkv.weight`). Nodes
of `repeat N shared` call their owner's module; tied parameters are the same `Parameter`.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from nexusdsl.compiler.lower.decode import run_decoding
from nexusdsl.compiler.lower.footprint import oversized_tensor, too_big
from nexusdsl.ir.graph import Graph, Node, ParamSpec
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.memory import available_bytes
from nexusdsl.ops import REGISTRY

_INPUT_DTYPES = {"bool": torch.bool, "i64": torch.int64, "f32": torch.float32}
_DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}


class OpModule(nn.Module):
    """Holds one node's parameters and runs its op's lowered closure."""

    def __init__(self, op: str, fn: Callable):
        super().__init__()
        self.op = op
        self._fn = fn

    def forward(self, *xs):
        if "_decoding" in self.__dict__:  # generating token by token (decode.py)
            return run_decoding(self, self._fn, xs)
        return self._fn(self, *xs)

    def extra_repr(self) -> str:
        return self.op


class NexusModule(nn.Module):
    """A compiled `.nx` model. `forward` takes the model's inputs positionally (declaration
    order) or by name; it returns a tensor for one output, a dict keyed by name for several.
    `.graph` is the IR graph it was built from; `.fx` the torch.fx GraphModule."""

    def __init__(self, graph: Graph, gm: fx.GraphModule):
        super().__init__()
        for name, child in gm.named_children():
            self.add_module(name, child)
        self.__dict__["graph"] = graph
        self.__dict__["fx"] = gm
        self.__dict__["_forward"] = type(gm).forward
        self.input_names = [n.name for n in graph.inputs()]
        self.output_names = list(graph.outputs)
        # inputs declared with `= value`: filled with it when the caller leaves them out
        self.__dict__["_defaults"] = {n.name: n for n in graph.inputs() if "default" in n.attrs}
        self.__dict__["_absent"] = {n for n, node in self._defaults.items()
                                    if _only_optional_uses(graph, node)}

    def forward(self, *args, **kwargs):
        if kwargs or len(args) < len(self.input_names):  # by name, in declaration order
            args = self._positional(args, kwargs)
        return self._forward(self, *args)

    def generate(self, prompts, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, stop=None, seed: int = 0, compile: bool = False,
                 **options) -> list[list[int]]:
        """New ids for each prompt (a list of id lists, or ids [B, T] with `mask =`): greedy
        at temperature 0, else sampled among the top_k / top_p likeliest with `seed`; a row
        ends at a `stop` id. Decodes step by step with a cache when every op can, else
        recomputes (compiler/lower/generate.py, which also lists the `options`)."""
        from nexusdsl.compiler.lower.generate import generate

        return generate(self, prompts, max_new_tokens, temperature, top_k, top_p, stop, seed,
                        compile, **options)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        rest = self.input_names[len(args):]
        unknown = sorted(set(kwargs) - set(rest))
        if not unknown and any(n not in kwargs for n in rest):
            kwargs = {**kwargs, **self._filled(args, kwargs, rest)}
        missing = [name for name in rest if name not in kwargs]
        if unknown or missing:
            problem = (f"no input named {', '.join(unknown)}" if unknown
                       else f"input {', '.join(missing)} is missing")
            raise TypeError(f"model {self.graph.name}: {problem} (its inputs, in order: "
                            f"{', '.join(self.input_names)})")
        return (*args, *(kwargs[name] for name in rest))

    def _filled(self, args: tuple, kwargs: dict, rest: list[str]) -> dict:
        """The defaulted inputs left out, made full of their value: their symbolic axes take
        the sizes the given inputs have for axes of the same name."""
        given = dict(zip(self.input_names, args)) | kwargs
        sizes: dict[str, int] = {}
        for node in self.graph.inputs():
            tensor = given.get(node.name)
            if tensor is not None and hasattr(tensor, "shape"):
                for axis, size in zip(node.type.axes, tensor.shape):
                    if axis.name and axis.size is None:
                        sizes.setdefault(axis.name, int(size))
        filled = {}
        device = next((t.device for t in given.values() if hasattr(t, "device")), None)
        for name in rest:
            node = self._defaults.get(name)
            if name in kwargs or node is None:
                continue
            if any(a.size is None and a.name not in sizes for a in node.type.axes):
                continue  # an axis no given input sizes: reported as missing
            if name in self._absent:  # read only where it is optional: as if never given
                filled[name] = None
                continue
            shape = [a.size if a.size is not None else sizes[a.name] for a in node.type.axes]
            filled[name] = torch.full(shape, node.attrs["default"], device=device,
                                      dtype=_INPUT_DTYPES[node.type.dtype])
        return filled


def _only_optional_uses(graph: Graph, node: Node) -> bool:
    """Whether every node reading this input takes it as an optional keyword tensor
    (`attention(x, mask = m)`), so that leaving it out can mean exactly that: not given."""
    users = graph.users(node)
    for user in users:
        op = REGISTRY[user.op]
        slots = [i for i, ref in enumerate(user.inputs) if ref.node == node.id]
        if not op.optional_inputs or any(i < len(op.inputs) for i in slots):
            return False
    return bool(users)


def _check_attribute_name(node: Node) -> None:
    """A node's name becomes an attribute path of the compiled torch module. The elaborator
    keeps torch's own names out (elaborate/frame.py); a library imported later can still add
    one to nn.Module (transformers adds `smart_apply`): refuse it where it is written."""
    first, *nested = node.name.split(".")  # nested parts live on plain container modules
    taken = [part for part in [first, *nested] if hasattr(fx.GraphModule, part)]
    taken += [first] if hasattr(NexusModule, first) else []
    if taken:
        raise NexusError.at(node.span, f"`{taken[0]}` cannot name a node: torch modules have an "
                            "attribute of that name in this process; choose another")


_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def _check_code_name(node: Node) -> None:
    """Names torch.fx writes into the Python source of `forward`: an input's name is an
    argument, another node's name (or the node it shares) an attribute path. The IR's own
    validator already holds names to identifiers joined by dots; checked again here, where the
    code is made, because a name that is not one would be code (`x=__import__('os')...`).
    Python's keywords cannot be attributes in that code either (`self.lambda`)."""
    names = [node.name] if node.op == "input" else [node.name, node.shares]
    for name in filter(None, names):
        parts = name.split(".")
        if node.op == "input" and len(parts) > 1:
            parts = []  # an argument is one identifier
        if not parts or not all(_PART.fullmatch(p) for p in parts):
            shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
            raise NexusError.at(node.span, f"node name {shown} is not identifiers joined by "
                                "dots (blocks.0.mlp), so it cannot be compiled")
        word = next((p for p in parts if keyword.iskeyword(p)), None)
        if node.op != "input" and word:
            raise NexusError.at(node.span, f"`{word}` cannot name a node: it is a keyword of "
                                "Python, in which the compiled model is written; choose another")


def _argument_name(name: str) -> str:
    """An input's name as an argument of the generated `forward(self, ...)`: Python's keywords
    and `self` get a trailing underscore (the model is still called with the .nx names)."""
    return f"{name}_" if keyword.iskeyword(name) or name == "self" else name


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


def _init(spec: ParamSpec, tensor: torch.Tensor, generator: torch.Generator | None) -> None:
    if tensor.device.type == "meta":
        return
    with torch.no_grad():
        if spec.init == "zeros":
            tensor.zero_()
        elif spec.init == "ones":
            tensor.fill_(1.0)
        elif spec.init == "uniform":
            tensor.uniform_(-spec.std, spec.std, generator=generator)
        else:
            tensor.normal_(0.0, spec.std, generator=generator)


def _attach(module: nn.Module, dotted: str, value: torch.Tensor) -> None:
    """A parameter, or (a plain tensor: `ParamSpec.buffer`) a persistent buffer."""
    *path, leaf = dotted.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(value, nn.Parameter):
        module.register_parameter(leaf, value)
    else:
        module.register_buffer(leaf, value, persistent=True)


def _resolve(root: nn.Module, dotted: str) -> nn.Parameter:
    return root.get_parameter(dotted)


def build_op_module(node: Node, device, dtype, generator) -> OpModule:
    op = REGISTRY[node.op]
    attrs = op.Attrs.model_validate(node.attrs)
    module = OpModule(node.op, op.lower(attrs))
    if node.regions:
        seed = int(generator.initial_seed()) if generator is not None else None
        bodies = [_lower(g, device, _dtype_name(dtype), None if seed is None else seed + i + 1)
                  for i, g in enumerate(node.regions)]
        module.add_module(op.region_name, nn.ModuleList(bodies))
    for key, spec in node.params.items():
        if spec.tied_to:
            continue
        tensor = torch.empty(spec.shape, device=device, dtype=dtype)
        _init(spec, tensor, generator)
        _attach(module, key, tensor if spec.buffer else
                nn.Parameter(tensor, requires_grad=not spec.frozen))
    finish = getattr(op, "finish", None)  # ops that set their own weights (identity adapters,
    if finish is not None:                # weights loaded from a pretrained model)
        finish(module, attrs, node)
    return module


def lower(graph: Graph, device="cpu", dtype: str = "f32", seed: int | None = 0) -> NexusModule:
    """Build the torch module of an IR graph (weights initialised from `seed`). Raises
    `NexusError` when its weights cannot fit in the device's memory (before allocating)."""
    available = _available(torch.device(device))
    for error in (oversized_tensor(graph, dtype), too_big(graph, dtype, available)):
        if error is not None:
            raise error
    return _lower(graph, device, dtype, seed)


def _available(device: torch.device) -> int | None:
    """Bytes the device can still give; None where unknown or nothing is allocated (meta)."""
    if device.type == "cpu":
        return available_bytes()
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    return None


def _lower(graph: Graph, device, dtype: str, seed: int | None) -> NexusModule:
    torch_dtype = _DTYPES[dtype]
    generator = None
    if seed is not None and torch.device(device).type != "meta":
        generator = torch.Generator(device=device).manual_seed(seed)
    modules: dict[str, nn.Module] = {}
    fxg = fx.Graph()
    values: dict[int, fx.Node] = {}
    for node in graph.nodes():
        _check_code_name(node)
        if node.op == "input":
            values[node.id] = fxg.placeholder(_argument_name(node.name))
            continue
        target = node.shares or node.name
        _check_attribute_name(node)
        if target not in modules:
            modules[target] = build_op_module(node, device, torch_dtype, generator)
        args = tuple(_value(values, graph, r) for r in node.inputs)
        values[node.id] = fxg.call_module(target, args)
    outs = {k: _value(values, graph, v) for k, v in graph.outputs.items()}
    fxg.output(next(iter(outs.values())) if len(outs) == 1 else outs)
    gm = fx.GraphModule(modules, fxg, class_name=f"{graph.name}Module")
    _tie_parameters(graph, gm)
    return NexusModule(graph, gm)


def _value(values: dict[int, fx.Node], graph: Graph, ref) -> fx.Node:
    base = values[ref.node]
    if len(graph.node(ref.node).outputs) == 1:
        return base
    return base.graph.call_function(operator.getitem, (base, ref.index))


def _tie_parameters(graph: Graph, gm: fx.GraphModule) -> None:
    for node in graph.nodes():
        if node.shares:
            continue
        for key, spec in node.params.items():
            if spec.tied_to:
                _attach(gm.get_submodule(node.name), key, _resolve(gm, spec.tied_to))
