"""`pretrained("dir", module = "encoder.layer.0")` as a block value (docs/language.md,
"Pretrained modules").

Written without a tensor, `pretrained(...)` is a value (an `OptionCall` holding its settings)
that can be bound to a name, passed to a block, piped into, listed among experts or given to
a `route` branch. Applied to a tensor (`x |> enc`, `enc(x)`, `pretrained(x, "dir", ...)`, which
is what the parser makes of `x |> pretrained("dir", ...)`) it makes one `pretrained_module` node named `pretrained` (its parameters read
`pretrained.attention.self.query.weight`); `mask = m`, given with the settings or when it is
applied, is the node's padding mask. What the module takes, its width and its output width
come from the model's config and a run on the meta device (nexusdsl/weights/pretrained.py);
the op's shape rule checks the input against them.
"""

from __future__ import annotations

from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import suggest_local
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.values import Arg, OptionCall, Symbol, Tensor, describe
from nexusdsl.lang.diagnostics import NexusError, Note, Span
from nexusdsl.ops import REGISTRY

NAME = "pretrained"


def is_pretrained(value) -> bool:
    """Whether a value is a `pretrained(...)` waiting for its input."""
    return isinstance(value, OptionCall) and value.name == NAME


def reads_a_file(call: OptionCall) -> bool:
    """`pretrained("w.safetensors", mlp)`: a block whose weights a file holds (an expert)."""
    source = call.args[0] if call.args else call.kwargs.get("source")
    return isinstance(source, str) and source.endswith(".safetensors")


def module_attrs(call: OptionCall, applied: Span | None = None) -> dict:
    """The `pretrained_module` attributes of a call's settings (its `mask` left aside); a
    mistake in them is located at the call, with a note where it was applied."""
    from nexusdsl.weights.pretrained import PretrainedError, pretrained_attrs

    settings = {k: v for k, v in call.kwargs.items() if k != "mask"}
    try:
        return pretrained_attrs(call.args, settings, call.span.file)
    except PretrainedError as err:
        notes = [Note("applied here", applied)] if applied and applied != call.span else []
        raise NexusError.at(call.span, str(err), *notes) from None


class PretrainedCalls:
    def __init__(self, nodes: NodeWriter):
        self.nodes = nodes

    def call(self, args: list[Arg], kwargs, span: Span, alias: str | None, frame: Frame):
        """`pretrained(...)` as written: a leading tensor is its input (`pretrained(x, "dir",
        module = ...)`, what `x |> pretrained("dir", module = ...)` means); without one it
        is a value."""
        if args and isinstance(args[0].value, Symbol):  # `xx |> pretrained(...)`, xx a typo
            name = args[0].value.name
            raise NexusError.at(args[0].span, f"unknown name `{name}`" + suggest_local(name, frame))
        inputs = args[:1] if args and isinstance(args[0].value, Tensor) else []
        settings = args[len(inputs):]
        for a in [*settings, *(a for k, a in kwargs if k != "mask")]:
            if isinstance(a.value, Tensor):
                raise NexusError.at(a.span, "`pretrained(...)` takes one tensor, its input, "
                                    "first (and a padding mask as `mask = m`); the rest are "
                                    "settings: the model's directory, `module`, `frozen`")
        value = OptionCall(NAME, tuple(a.value for a in settings),
                           {k: a.value for k, a in kwargs}, span)
        return self.apply(value, inputs, [], span, alias, frame) if inputs else value

    def apply(self, call: OptionCall, args: list[Arg], kwargs, span: Span, alias: str | None,
              frame: Frame):
        """A `pretrained(...)` value applied to its input: `x |> enc`, `enc(x, mask = m)`.
        Keywords given here join (and override) the value's settings."""
        if reads_a_file(call):
            raise NexusError.at(call.span, "`pretrained(\"w.safetensors\", block)` gives the "
                                "block of an expert its weights, in a moe's experts only; a "
                                "model's directory, `pretrained(\"dir\", module = ...)`, is a "
                                "block that can be applied anywhere")
        call = OptionCall(call.name, call.args, {**call.kwargs, **{k: a.value for k, a in kwargs}},
                          call.span)
        if not args:
            return call  # more settings, still waiting for its input
        if len(args) > 1 or not isinstance(args[0].value, Tensor):
            where = args[1] if len(args) > 1 else args[0]
            got = "more than one input" if len(args) > 1 else describe(args[0].value)
            raise NexusError.at(where.span, f"`pretrained(...)` is applied to one tensor (and a "
                                f"padding mask as `mask = m`), got {got}")
        tensors = [args[0].value]
        mask = call.kwargs.get("mask")
        if "mask" in call.kwargs:
            if not isinstance(mask, Tensor):
                at = dict(kwargs)["mask"].span if "mask" in dict(kwargs) else call.span
                raise NexusError.at(at, f"`pretrained(...)`: `mask` takes a bool tensor "
                                    f"(true for real tokens), got {describe(mask)}")
            tensors.append(mask)
        attrs = module_attrs(call, span)
        op = REGISTRY["pretrained_module"]
        given = ["mask"] if mask is not None else []
        labels = [self.nodes.source_text(args[0].span), None]
        return self.nodes.add_op(op, tensors, op.Attrs(**attrs, given=given), {}, span, alias,
                                 frame, labels=labels, base=NAME)
