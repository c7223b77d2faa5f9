"""`route(x) { text -> f; image -> g }` (docs/language.md, "Builtin ops"; docs/decisions.md,
"Experts, adapters and routers").

A route elaborates inline: `modal_take` picks each branch's tokens, the branch is applied to
them, and `modal_merge` puts the results back in token order when every carried modality has a
branch and the results agree in width (else the value is a tuple of the branch results, in
branch order).
"""

from __future__ import annotations

from nexusdsl.elaborate.core import Core
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.names import Names
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.values import Arg, Modality, Symbol, Tensor, describe
from nexusdsl.ir.types import CodeSegment
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import OpError
from nexusdsl.ops.routing import check_segments, segments_json


class Routes:
    def __init__(self, nodes: NodeWriter, names: Names, core: Core):
        self.nodes = nodes
        self.names = names
        self.core = core

    def route(self, e: ast.Route, frame: Frame):
        if e.kwargs or len(e.args) != 1:
            raise NexusError.at(e.span, "`route` takes one tensor: `route(x) { text -> f; ... }`")
        x = self.core.eval(e.args[0], frame)
        if not isinstance(x, Tensor):
            raise NexusError.at(e.args[0].span, f"`route` needs a tensor, got {describe(x)}")
        codes = self._carried_codes(x, e)
        segments = segments_json(codes)
        try:
            check_segments(segments)
        except OpError as err:
            raise NexusError.at(e.span, err.message) from None
        parts, order = [], []
        for branch in e.branches:
            code = self._branch_code(branch, x, codes, order, frame)
            take = REGISTRY["modal_take"]
            taken = self.nodes.add_op(take, [x], take.Attrs(code=code, segments=segments), {},
                                      branch.span, None, frame)
            func = self.core.eval(branch.body, frame)
            parts.append(self.core.apply(func, [Arg(taken, None, branch.span)], [],
                                         branch.body.span, None, frame))
            order.append(code)
        result = self._merged(parts, order, x, codes, segments, e, frame)
        if e.alias:
            frame.env[e.alias] = result
        return result

    def _carried_codes(self, x: Tensor, e: ast.Route) -> tuple[CodeSegment, ...]:
        if x.type.codes:
            return x.type.codes
        spec = self.nodes.modalities.get(x.type.modality) if x.type.modality else None
        if spec is None or x.type.rank < 2:
            raise NexusError.at(e.span, f"`route` needs tokens that carry modal codes, got "
                                f"{x.type}: embed the input, or `tag` the parts before `concat`",
                                Note("the input was made", x.span))
        return (CodeSegment(code=spec.code, modality=spec.name, length=x.type.axes[-2]),)

    def _branch_code(self, branch, x: Tensor, codes, seen: list[int], frame: Frame) -> int:
        value = self.names.lookup(branch.modality, branch.span, frame)
        if isinstance(value, Symbol):
            carried = ", ".join(sorted({s.modality for s in codes})) or "none"
            raise NexusError.at(branch.span, f"unknown modality `{branch.modality}` in a route "
                                f"branch (the input carries: {carried})")
        if not isinstance(value, Modality):
            raise NexusError.at(branch.span, f"a route branch names a modality; "
                                f"`{branch.modality}` is {describe(value)}")
        code = value.spec.code
        carried = sorted({s.modality for s in codes})
        if code not in {s.code for s in codes}:
            raise NexusError.at(branch.span, f"route: the input {x.type} carries no "
                                f"{value.name} tokens (it carries {', '.join(carried)})",
                                Note("the input was made", x.span))
        if code in seen:
            raise NexusError.at(branch.span, f"route: a second branch for {value.name}")
        self.nodes.modalities.setdefault(value.name, value.spec)
        return code

    def _merged(self, parts, order, x: Tensor, codes, segments, e: ast.Route, frame: Frame):
        covered = {s.code for s in codes} <= set(order)
        same = all(isinstance(p, Tensor) for p in parts) and len(
            {(p.type.rank, p.type.axes[-1].size, p.type.dtype) for p in parts}) == 1
        if not (covered and same) or x.type.rank < 2:
            return tuple(parts)
        merge = REGISTRY["modal_merge"]
        length = x.type.axes[-2]
        attrs = merge.Attrs(order=order, segments=segments, length=length.model_dump(),
                            codes=[c.model_dump(mode="json") for c in codes])
        return self.nodes.add_op(merge, parts, attrs, {}, e.span, None, frame)
