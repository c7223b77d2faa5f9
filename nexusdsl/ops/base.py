"""The op registry. Every op is declared once, as one `Op` subclass holding:

- `Attrs`: its attributes (a pydantic model; field order is the positional order after the
  tensor inputs), validated when a call is elaborated;
- `infer`: its shape rule (raises `OpError`, which the elaborator locates at the call);
- `params`: the parameters it owns (`ParamSpec`s, named like a torch state_dict suffix), and
  `parameters`, the same as formulas for docs/ops.md;
- `flops`, `bytes`, `kernels`: what one run costs at concrete sizes (`cost` sums them up);
- `traits` and a few attribute-dependent answers (`no_op`, `compose`, `fuse`, `axis_map`):
  what passes may assume about it (ops/traits.py), so that they never name ops;
- `public`: whether a .nx file may call it by name;
- `lower`: its torch implementation, a closure `fn(module, *tensors)` built once. Torch is
  imported inside `lower` only, so checking a file never imports torch.

A class that sets `name` registers itself when its module is imported, and importing
`nexusdsl.ops` imports every module of the package (ops/__init__.py): an op is one file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from nexusdsl.ir.graph import Node
from nexusdsl.ir.types import Axis, ModalitySpec, TensorType
from nexusdsl.ops.cost import Cost
from nexusdsl.ops.traits import AxisMap, Traits

REGISTRY: dict[str, Op] = {}

# Backends an op can be lowered to; an op lists those it supports in `backends`, and
# docs/backends.md's table is generated from them. "iree": IREE compiles and runs the op's
# torch-dialect and linalg MLIR. An op whose eager form torch-mlir cannot import may add
# `lower_portable(attrs)`: the same function in an MLIR-friendly form (static shapes, no
# complex numbers, non-negative dims), used for the mlir-* and iree-* targets only.
ALL_BACKENDS = ("eager", "compile", "mlir-torch", "mlir-linalg", "mlir-stablehlo", "mlir-tosa",
                "iree")


class OpError(Exception):
    """A user mistake found by an op's rules. `about` lists input positions whose origin is
    worth a note ("h was made at ...")."""

    def __init__(self, message: str, about: tuple[int, ...] = ()):
        super().__init__(message)
        self.message = message
        self.about = about


class OpAttrs(BaseModel):
    """Base of every op's attribute model: unknown keywords are mistakes."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


@dataclass
class InferContext:
    """What a shape rule may look at besides its inputs and attributes."""

    hints: dict[str, str] = field(default_factory=dict)  # attr -> plain hyperparameter name
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)
    lookup: Callable[[str], Any] = lambda name: None  # IR node by name (for `tie = tok`)
    regions: list[Any] = field(default_factory=list)  # nested graphs (experts, loop bodies)

    def axis_name(self, attr: str) -> str | None:
        """The name a new axis sized by `attr` gets: the plain hyperparameter name, if any."""
        return self.hints.get(attr)


class Op:
    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ("x",)  # tensor inputs, in positional order
    # Tensor inputs given by keyword only, each optional (`attention(x, kv = y, mask = m)`):
    # the node lists those given after the required ones, in this order, and its attribute
    # `given` names them.
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    variadic: ClassVar[bool] = False  # takes any number (>= 1) of tensor inputs
    family: ClassVar[str] = "core"
    # Ops that run nested graphs (experts, a loop body) keep their lowered modules in a
    # ModuleList of this name, so parameters read `moe.experts.3.mlp.linear.weight`.
    region_name: ClassVar[str] = "regions"
    backends: ClassVar[tuple[str, ...]] = ALL_BACKENDS
    # Whether a .nx file may call the op by name. Internal ops are made only by the elaborator
    # (`add` for `+`, `recur` for `repeat N shared reversible`) or by passes (`fused_rmsnorm`)
    # and are not: they are no names of the language, and docs/ops.md does not list them.
    public: ClassVar[bool] = True
    traits: ClassVar[Traits] = Traits()
    # The op a fused form stands in for (same inputs and parameters); None for other ops.
    replaces: ClassVar[str | None] = None
    # The parameters `params` makes, as docs/ops.md shows them: state_dict name -> shape
    # formula in the op's attribute names and `d` (the input's last axis), with a condition
    # where a parameter is not always there. tests/ops/test_reference.py checks them.
    parameters: ClassVar[dict[str, str]] = {}
    # How the parameters are laid out, for mapping a checkpoint onto them (docs/ops.md prints
    # it under the table): the order of fused rows, how heads or patches are flattened.
    layout: ClassVar[str] = ""

    class Attrs(OpAttrs):
        pass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls()

    # -- elaboration ------------------------------------------------------------------
    def resolve(self, ctx: InferContext, inputs: list[TensorType], attrs: OpAttrs) -> OpAttrs:
        """Normalise attributes against the inputs (axis names to positions, ...)."""
        return attrs

    def infer(self, ctx: InferContext, inputs: list[TensorType], attrs) -> list[TensorType]:
        raise NotImplementedError

    def params(self, ctx: InferContext, inputs: list[TensorType], attrs) -> dict:
        return {}

    def flops(self, inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]], attrs) -> int:
        """FLOPs for concrete input/output sizes (elementwise ops: one per output element)."""
        n = 1
        for s in outputs[0] if outputs else ():
            n *= s
        return n

    def bytes(self, inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]], attrs) -> int:
        """Bytes of activations read and written for concrete sizes (f32: every input and
        output element once). The cost model adds the parameters."""
        return 4 * sum(math.prod(s) for s in (*inputs, *outputs))

    def kernels(self, inputs: list[tuple[int, ...]], attrs) -> float:
        """Kernel launches of one run (an attribute read that launches nothing: a fraction)."""
        return 1.0

    def cost(self, inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]], attrs) -> Cost:
        """One run at concrete sizes, parameters left out: `flops` (what the summary
        reports), `bytes` and `kernels` together."""
        return Cost(self.flops(inputs, outputs, attrs), float(self.bytes(inputs, outputs, attrs)),
                    float(self.kernels(inputs, attrs)))

    def region_share(self, attrs, count: int) -> float:
        """The fraction of tokens each nested graph sees (top-k of n experts: k / n)."""
        return 1.0

    # -- what passes may ask ------------------------------------------------------------
    def no_op(self, attrs) -> bool:
        """Whether a node with these attributes gives back its input unchanged (`identity`,
        `dropout(0)`, `scale(1)`): `fold-constants` removes it."""
        return False

    def compose(self, first, second) -> dict[str, Any] | None:
        """For an op that composes with itself (`scale`, `shift`): the attributes of one node
        doing what a node with `first` and then one with `second` do; else None."""
        return None

    def fuse(self, attrs, inputs: list[TensorType]) -> dict[str, Any] | None:
        """For a fused kernel: its attributes standing in for a node of `replaces` with these
        attributes and input types (same parameters, same values), or None where it cannot
        (`kernel-fusion` makes the swap)."""
        return None

    def axis_map(self, attrs, inputs: list[TensorType]) -> AxisMap | None:
        """The node as linear maps of one axis (`linear`, a one-axis `mix`), for
        `axis-fusion` to multiply out; None if it is not one."""
        return None

    # -- incremental decoding (ops/decode.py) -------------------------------------------
    def decode(self, attrs, inputs: list[TensorType]):
        """How a node with these attributes and input types decodes token by token:
        `TOKENWISE` (it sees each position alone), a `Decode` (it keeps state between steps),
        or None (it cannot)."""
        from nexusdsl.ops.decode import TOKENWISE

        return TOKENWISE if self.traits.tokenwise else None

    # -- lowering ---------------------------------------------------------------------
    def lower(self, attrs) -> Callable:
        raise NotImplementedError(f"op {self.name} has no torch lowering")


def get_op(name: str) -> Op | None:
    return REGISTRY.get(name)


def op_of(node: Node) -> Op:
    """The op a node applies."""
    return REGISTRY[node.op]


_VALIDATED: OrderedDict[tuple[str, int], tuple[dict, OpAttrs]] = OrderedDict()
_KEPT = 4096  # recently read nodes' validated attributes


def attrs_of(node: Node) -> Any:
    """A node's attributes as its op's validated model (`attrs_of(node).out`), typed where
    `node.attrs["out"]` is not. Cached per attribute dict: rewrites never change a node's
    dict in place, they make a node with a new one (the cache holds the dict, so its id
    cannot be reused while cached)."""
    key = (node.op, id(node.attrs))
    hit = _VALIDATED.get(key)
    if hit is not None and hit[0] is node.attrs:
        _VALIDATED.move_to_end(key)
        return hit[1]
    model = op_of(node).Attrs.model_validate(node.attrs)
    _VALIDATED[key] = (node.attrs, model)
    if len(_VALIDATED) > _KEPT:
        _VALIDATED.popitem(last=False)
    return model


def same_type_as(x: TensorType, axes=None, **changes) -> TensorType:
    """The output type of a token-wise op: keeps modality and modal codes."""
    return x.with_axes(x.axes if axes is None else axes, **changes)


def describe_axes(t: TensorType) -> str:
    return "[" + ", ".join(str(a) for a in t.axes) + "]"


def check_last_axis(x: TensorType, what: str) -> Axis:
    if x.rank == 0:
        raise OpError(f"{what} needs a tensor with at least one axis, got a scalar")
    last = x.axes[-1]
    if last.size is None:
        raise OpError(f"{what} needs a fixed-size last axis, but axis {last.name} is symbolic")
    return last


def state_specs(graph, prefix: str = "") -> dict:
    """{state_dict name: ParamSpec} of the module a graph lowers to: every node's parameters
    (and buffers) under its name, those of nested graphs under the node's region list
    (`moe.experts.3.linear.weight`); a node sharing another's parameters has none of its own."""
    specs = {}
    for node in graph.nodes():
        if node.shares:
            continue
        for key, spec in node.params.items():
            specs[f"{prefix}{node.name}.{key}"] = spec
        region_name = REGISTRY[node.op].region_name if node.op in REGISTRY else "regions"
        for i, region in enumerate(node.regions):
            specs |= state_specs(region, f"{prefix}{node.name}.{region_name}.{i}.")
    return specs
