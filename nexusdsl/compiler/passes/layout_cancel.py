"""layout-cancel: layout cancellation and composition. A `layout` (a reshape and permute in
einops notation) followed by another becomes one, and a pair that undoes itself, or a layout
that changes nothing, disappears: `b (i j k) d -> b i j k d` then `b i j k d -> b (i j k) d`
is no layout at all.

Composition works on elementary axes: each layout splits its input into elementary axes,
permutes them and groups them again. The first layout's output and the second's input are two
factorisations of one row-major index space; where one refines the other (sizes divide), the
common refinement gives one pattern from the first input straight to the second output.

Requires: a verified graph. Guarantees: no layout reads another layout that it could be
composed with, and no layout is the identity. Keeps: values exactly (layouts only move
elements), every parameter, and shapes; a composed layout keeps the second one's output type,
while readers of a removed identity see its input's axis names (the same extents). Layouts whose factorisations
do not align (`(a b)` of 6 as 2 x 3 against 3 x 2), or that split a symbolic axis in a way the
other does not, are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexusdsl.compiler.passes.base import PatternPass, RewritePattern, forward, is_output
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.types import TensorType
from nexusdsl.ops.base import attrs_of, op_of
from nexusdsl.ops.layout import ELLIPSIS, Layout, parse_pattern


@dataclass(frozen=True)
class Elem:
    """An elementary axis: its name in its pattern, its size, or for a symbolic one the name
    of the axis it stands for."""

    name: str
    size: int | None
    symbol: str | None = None


Groups = list[list[Elem]]
LEAD = "lead_"  # names given to the axes a `...` stands for


@dataclass
class Plan:
    left: Groups  # the input's axes as groups of elementary axes, in memory order
    right: Groups  # the output's axes

    def is_identity(self) -> bool:
        return [[e.name for e in g] for g in self.left] == [[e.name for e in g] for g in self.right]


def is_layout(node: Node) -> bool:
    return not node.is_input and isinstance(op_of(node), Layout)


def plan_of(node: Node, x: TensorType) -> Plan:
    """The elementary axes of a resolved layout node applied to x."""
    attrs = attrs_of(node)
    left, right = parse_pattern(attrs.pattern)
    bound, _, lead = Layout._bind(x, left, attrs)
    lead_names = [f"{LEAD}{k}" for k in range(len(lead))]
    elems = {n: Elem(n, a.size, a.name if a.size is None else None) for n, a in bound.items()}
    elems |= {n: Elem(n, a.size, a.name if a.size is None else None)
              for n, a in zip(lead_names, lead)}

    def groups(items) -> Groups:
        out: Groups = []
        for item in items:
            if item == ELLIPSIS:
                out.extend([elems[n]] for n in lead_names)
            else:
                out.append([elems[n] for n in ((item,) if isinstance(item, str) else item)])
        return out

    return Plan(groups(left), groups(right))


# ---------------------------------------------------------------------------- refinement


def refine(a: list[Elem], b: list[Elem]) -> tuple[dict, dict] | None:
    """The common refinement of two factorisations of one index space (both most significant
    first): for each elementary axis of `a` and of `b`, the refined axes it is made of
    (refined axes are (size, symbol) pairs numbered in order). None if they do not align."""
    parts_a: dict[str, list[int]] = {e.name: [] for e in a}
    parts_b: dict[str, list[int]] = {e.name: [] for e in b}
    sizes: list[tuple[int | None, str | None]] = []
    i = j = 0
    ra, rb = (a[0].size if a else None), (b[0].size if b else None)
    while i < len(a) and j < len(b):
        ea, eb = a[i], b[j]
        if ea.size is None or eb.size is None:
            if ea.size is not None or eb.size is not None or ea.symbol != eb.symbol:
                return None
            step = (None, ea.symbol)
            ra = rb = 1
        else:
            small, large = sorted((ra, rb))
            if large % small:
                return None
            step = (small, None)
            ra, rb = ra // small, rb // small
        parts_a[ea.name].append(len(sizes))
        parts_b[eb.name].append(len(sizes))
        sizes.append(step)
        if ra == 1:
            i += 1
            ra = a[i].size if i < len(a) else None
        if rb == 1:
            j += 1
            rb = b[j].size if j < len(b) else None
    if i != len(a) or j != len(b):
        return None
    return (parts_a, parts_b, sizes)


def compose(first: Plan, second: Plan) -> Plan | None:
    """One plan doing `first` then `second`, or None if their axes do not align."""
    mid_a = [e for g in first.right for e in g]
    mid_b = [e for g in second.left for e in g]
    refined = refine(mid_a, mid_b)
    if refined is None:
        return None
    parts_a, parts_b, sizes = refined
    names = _names(parts_a, parts_b, len(sizes))
    atoms = [Elem(names[k], size, symbol) for k, (size, symbol) in enumerate(sizes)]

    def expand(groups: Groups, parts: dict) -> Groups:
        return [[atoms[k] for e in g for k in parts[e.name]] for g in groups]

    return Plan(expand(first.left, parts_a), expand(second.right, parts_b))


def _names(parts_a: dict, parts_b: dict, count: int) -> list[str]:
    """Readable names for refined axes: the second layout's name where an axis is one of its
    elementary axes, else the first's, else a fresh one; all distinct."""
    chosen: list[str | None] = [None] * count
    for parts in (parts_b, parts_a):
        for name, ks in parts.items():
            if len(ks) == 1 and chosen[ks[0]] is None and not name.startswith(LEAD):
                chosen[ks[0]] = name
    taken: set[str] = set()
    out = []
    for k, name in enumerate(chosen):
        name = name or f"a{k}"
        while name in taken:  # einops refuses names ending in "_": number them
            name = f"{name}x{k}"
        taken.add(name)
        out.append(name)
    return out


def pattern_of(plan: Plan) -> tuple[str, dict[str, int]]:
    """An einops pattern (no `...`) and the sizes its split groups need."""
    def side(groups: Groups) -> str:
        return " ".join(g[0].name if len(g) == 1 else "(" + " ".join(e.name for e in g) + ")"
                        for g in groups)

    sizes = {e.name: e.size for g in plan.left if len(g) > 1 for e in g if e.size is not None}
    return f"{side(plan.left)} -> {side(plan.right)}", sizes


def usable(plan: Plan) -> bool:
    """einops can split a group with at most one unknown (symbolic) part."""
    return all(sum(e.size is None for e in g) <= 1 for g in plan.left)


# ---------------------------------------------------------------------------- patterns


def same_shape(a: TensorType, b: TensorType) -> bool:
    """Same extents axis by axis (names may differ: a removed layout only renamed them)."""
    return a.rank == b.rank and all(p.same_extent(q) for p, q in zip(a.axes, b.axes))


class DropIdentityLayout(RewritePattern):
    """layout(x, "b t d -> b t d") -> x"""

    name = "drop-identity-layout"

    def apply(self, graph, node, p):
        if not is_layout(node):
            return False
        x = graph.type_of(node.inputs[0])
        if not plan_of(node, x).is_identity() or not same_shape(x, node.outputs[0]):
            return False
        forward(graph, node, node.inputs[0])
        return True


def _composed(graph: Graph, node: Node) -> tuple[Node, Plan] | None:
    """For layout(layout(x)): the inner layout and the plan doing both, if they compose."""
    if not is_layout(node):
        return None
    inner = graph.node(node.inputs[0].node)
    if not is_layout(inner):
        return None
    plan = compose(plan_of(inner, graph.type_of(inner.inputs[0])),
                   plan_of(node, inner.outputs[0]))
    return None if plan is None or not usable(plan) else (inner, plan)


class CancelLayouts(RewritePattern):
    """layout(layout(x, p), inverse of p) -> x"""

    name = "cancel-layouts"

    def apply(self, graph, node, p):
        found = _composed(graph, node)
        if found is None:
            return False
        inner, plan = found
        x_ref = inner.inputs[0]
        if not plan.is_identity() or not same_shape(graph.type_of(x_ref), node.outputs[0]):
            return False
        forward(graph, node, x_ref)
        _erase_if_unused(graph, inner)
        return True


class ComposeLayouts(RewritePattern):
    """layout(layout(x, p1), p2) -> layout(x, p1 then p2)"""

    name = "compose-layouts"

    def apply(self, graph, node, p):
        found = _composed(graph, node)
        if found is None:
            return False
        inner, plan = found
        pattern, sizes = pattern_of(plan)
        attrs = {"pattern": pattern, **sizes}
        graph.replace(node, node.model_copy(update={"inputs": [inner.inputs[0]], "attrs": attrs}))
        _erase_if_unused(graph, inner)
        return True


def _erase_if_unused(graph: Graph, node: Node) -> None:
    if not graph.users(node) and not is_output(graph, node):
        graph.erase(node)


class LayoutCancel(PatternPass):
    name = "layout-cancel"
    patterns = (DropIdentityLayout, CancelLayouts, ComposeLayouts)
