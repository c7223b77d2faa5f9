"""Experts in the elaborator (docs/decisions.md, "Experts, adapters and routers").

An op that receives a set of experts (`moe(x, ffn, ...)`) gets one nested graph (region) per
expert, built here on a fresh input of x's type. Each region is the MNN adapter around its
expert, made of `adapter` nodes:

    x -> linear_1 -> expert -> linear_2 -> (+ linear_3(x)) -> out

`linear_1` / `linear_2` are left out when the expert's width equals x's and `adapter = false`;
`linear_3` is there only with `skip = true`. Square adapters start as the identity and
`linear_3` at zero, so a wrapped expert starts as itself. A `pretrained(...)` expert is a
region around one `pretrained_module` node whose frozen parameters come from the model (the
node `pretrained_calls.py` makes wherever else `pretrained(...)` is applied).

A shared expert (`moe(x, ffn, shared = swiglu(hidden = 64))`) sees every token, so it is no
region: its block is applied to x here, as ordinary nodes named under the moe node
(`moe.shared.swiglu.linear`, so its parameters read `moe.shared.…` in the state_dict and
passes, pruning and the summary treat it as any block), and its output becomes the moe
node's `shared` input, which the moe adds to the routed sum.
"""

from __future__ import annotations

from dataclasses import replace

from nexusdsl.elaborate.core import Core
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.pretrained_calls import is_pretrained, module_attrs, reads_a_file
from nexusdsl.elaborate.values import Arg, ExpertSet, OptionCall, Partial, Tensor, describe
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.types import TensorType
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note, Span
from nexusdsl.ops import REGISTRY


class Experts:
    def __init__(self, nodes: NodeWriter, core: Core, root: FileScope):
        self.nodes = nodes
        self.core = core
        self.root = root

    def expert_args(self, op, tensors: list[Arg], rest: list[Arg], kwargs, span: Span,
                    alias: str | None = None, frame: Frame | None = None):
        """Replace a set-of-experts argument by its size and build its regions; build the
        shared expert (`shared = block`) and pass its output instead."""
        if op.name == "moe" and frame is not None:
            kwargs = self._shared_expert(op, tensors, kwargs, alias, frame)
        found = [(i, a) for i, a in enumerate(rest) if isinstance(a.value, ExpertSet)]
        found += [(k, a) for k, a in kwargs if isinstance(a.value, ExpertSet)]
        if not found:
            return rest, kwargs, None
        if op.name != "moe" or len(found) > 1:
            raise NexusError.at(found[-1][1].span, f"`{op.name}` does not take a set of experts"
                                if op.name != "moe" else "`moe` takes one set of experts")
        where, arg = found[0]
        settings = {k: a.value for k, a in kwargs}
        adapter, skip = settings.get("adapter", False), settings.get("skip", False)
        for key in ("adapter", "skip"):
            if not isinstance(settings.get(key, False), bool):
                raise NexusError.at(dict(kwargs)[key].span, f"`moe`: `{key}` should be true "
                                    f"or false, got {describe(settings[key])}")
        x = tensors[0].value
        label = arg.value.name or "experts"
        regions = [self.expert_region(m, x.type, adapter, skip, f"{label}.{i}", i, arg, span)
                   for i, m in enumerate(arg.value.members)]
        count = Arg(len(regions), None, arg.span)
        if isinstance(where, int):
            rest = [count if i == where else a for i, a in enumerate(rest)]
        else:
            kwargs = [(k, count if k == where else a) for k, a in kwargs]
        return rest, kwargs, regions

    def _shared_expert(self, op, tensors: list[Arg], kwargs, alias: str | None, frame: Frame):
        """`shared = block`: the block applied to x under `NAME.shared`, NAME being the name
        the moe node is about to take (it is made after its inputs)."""
        arg = dict(kwargs).get("shared")
        if arg is None:
            return kwargs
        member = arg.value
        if not isinstance(member, Partial) and not is_pretrained(member):
            raise NexusError.at(arg.span, f"`{op.name}`: `shared` takes a block or op that "
                                "every token goes through (`shared = swiglu(hidden = 64)`), "
                                f"got {describe(member)}")
        name = frame.qualify(alias) if alias else self.nodes.namer.peek(frame, op.name)
        scope = Frame(frame.scope, f"{name}.shared")
        x = tensors[0].value
        try:
            out = self.core.apply(member, [Arg(x, None, arg.span)], [], arg.span, None, scope)
        except NexusError as err:
            note = Note("while building the shared expert", arg.span)
            raise NexusError([replace(d, notes=d.notes + (note,)) for d in err.diagnostics],
                             err.sources) from None
        if not isinstance(out, Tensor):
            raise NexusError.at(arg.span, f"the shared expert ({member.name}) gives "
                                f"{describe(out)}; it must give one tensor")
        return [(k, Arg(out, a.expr, a.span) if k == "shared" else a) for k, a in kwargs]

    def expert_region(self, member, xtype: TensorType, adapter: bool, skip: bool, label: str,
                      index: int, arg: Arg, span: Span) -> Graph:
        with self.nodes.region(label) as graph:
            frame = Frame(self.root, "")
            x = self.nodes.region_input(xtype, 0, 1, span).value
            if isinstance(member, OptionCall):
                out = self._pretrained_expert(member, x, adapter, frame)
            else:
                out = self._block_expert(member, x, adapter, frame, index, arg, span)
            y = self._adapt(out, xtype.axes[-1].size, adapter, "linear_2", span, frame)
            if skip:
                side = self._adapter(x, xtype.axes[-1].size, "zero", "linear_3", span, frame)
                y = self.nodes.add_op(REGISTRY["add"], [y, side], REGISTRY["add"].Attrs(), {},
                                      span, None, frame)
            graph.outputs["out"] = y.ref
            return graph

    def _adapter(self, x: Tensor, out: int, start: str, name: str, span: Span, frame: Frame):
        op = REGISTRY["adapter"]
        return self.nodes.add_op(op, [x], op.Attrs(out=out, start=start), {}, span, name, frame)

    def _adapt(self, x: Tensor, width: int, adapter: bool, name: str, span: Span, frame: Frame):
        if x.type.axes[-1].size == width and not adapter:
            return x
        return self._adapter(x, width, "identity", name, span, frame)

    def _block_expert(self, member, x: Tensor, adapter: bool, frame: Frame, index: int,
                      arg: Arg, span: Span) -> Tensor:
        if not isinstance(member, Partial):
            raise NexusError.at(arg.span, f"expert {index} is {describe(member)}, not a block or op")
        width = _declared_width(member) or x.type.axes[-1].size
        h = self._adapt(x, width, adapter, "linear_1", span, frame)
        try:
            out = self.core.apply(member, [Arg(h, None, span)], [], span, None, frame)
        except NexusError as err:
            note = Note(f"while building expert {index} of {arg.value.name or 'the experts'}",
                        arg.value.span)
            raise NexusError([replace(d, notes=d.notes + (note,)) for d in err.diagnostics],
                             err.sources) from None
        return _check_adaptable(out, x, index, member.name, span)

    def _pretrained_expert(self, call: OptionCall, x: Tensor, adapter: bool, frame: Frame):
        if not is_pretrained(call):
            raise NexusError.at(call.span, f"`{call.name}(...)` is not an expert; experts are "
                                "blocks, ops or `pretrained(...)`")
        if reads_a_file(call):
            return self._file_expert(call, x, adapter, frame)
        if "mask" in call.kwargs:
            raise NexusError.at(call.span, "an expert sees only the tokens routed to it, so "
                                "`pretrained(...)` as an expert takes no `mask`")
        attrs = module_attrs(call)
        if attrs.get("ids"):
            raise NexusError.at(call.span, f"pretrained module `{attrs['module']}` takes token "
                                "ids, but an expert takes the vectors of the tokens routed to "
                                "it; apply it to the ids before the moe instead")
        attrs.pop("mask_form", None)  # it takes none: its node stays as experts' always were
        h = self._adapt(x, attrs["width"], adapter, "linear_1", call.span, frame)
        op = REGISTRY["pretrained_module"]
        return self.nodes.add_op(op, [h], op.Attrs(**attrs), {}, call.span, "pretrained", frame)

    def _file_expert(self, call: OptionCall, x: Tensor, adapter: bool, frame: Frame) -> Tensor:
        """`pretrained("w.safetensors", mlp(mult = 2), module = "prefix")`: the block (or op)
        with its parameters read from the file (frozen unless `frozen = false`)."""
        from nexusdsl.weights.pretrained import PretrainedError, file_settings, file_tensors

        try:
            path, block, prefix, frozen = file_settings(call.args, call.kwargs, call.span.file)
        except PretrainedError as err:
            raise NexusError.at(call.span, str(err)) from None
        if not isinstance(block, Partial):
            raise NexusError.at(call.span, f"pretrained(...): the expert paired with a file "
                                f"must be a block or op, got {describe(block)}")
        h = self._adapt(x, _declared_width(block) or x.type.axes[-1].size, adapter, "linear_1",
                        call.span, frame)
        graph = self.nodes.graph  # the expert's region
        before = {n.id for n in graph.nodes()}
        out = _check_adaptable(self.core.apply(block, [Arg(h, None, call.span)], [], call.span,
                                               None, frame), h, 0, block.name, call.span)
        made = [n for n in graph.nodes() if n.id not in before and n.params]
        names = {f"{n.name}.{k}": f"{n.name.partition('.')[2] or n.name}.{k}"
                 for n in made for k in n.params}
        wanted = {f"{n.name}.{k}": spec.shape for n in made for k, spec in n.params.items()}
        try:
            keys, digest = file_tensors(path, prefix, names, wanted)
        except PretrainedError as err:
            raise NexusError.at(call.span, str(err)) from None
        for n in made:
            params = {k: v.model_copy(update={"frozen": frozen}) for k, v in n.params.items()}
            graph.replace(n, n.model_copy(update={"params": params}))
        graph.hyper["pretrained"] = {"source": str(path), "module": prefix, "hash": digest,
                                     "params": keys}
        return out


def _declared_width(member: Partial) -> int | None:
    """A block's fixed input width when its first tensor parameter writes one (`[*, 64]`)."""
    block = getattr(member.target, "block", None)
    params = [p for p in block.params if p.type is not None] if block else []
    if not params or not params[0].type.shape.dims:
        return None
    size = params[0].type.shape.dims[-1].size
    return size.value if isinstance(size, ast.Int) else None


def _check_adaptable(out, x: Tensor, index: int, name: str, span: Span) -> Tensor:
    if not isinstance(out, Tensor):
        raise NexusError.at(span, f"expert {index} ({name}) gives {describe(out)}; an expert "
                            "must give one tensor")
    got, want = out.type, x.type
    same_lead = got.rank == want.rank and all(
        a.same_extent(b) for a, b in zip(got.axes[:-1], want.axes[:-1]))
    if not same_lead or got.axes[-1].size is None:
        raise NexusError.at(span, f"expert {index} ({name}) turns {want} into {got}, which "
                            f"cannot be adapted back: an adapter can only change the last axis, "
                            "to a fixed width")
    return out
