"""`repeat N shared reversible { body }`: the body becomes ONE nested graph inside a `recur`
node (ops/recur.py) instead of N unrolled copies.

The body's loop-carried variables are the names it assigns that existed before it; the body is
elaborated once on fresh region inputs of their types (then of any other outer tensor it
reads), and its results for them are the region's outputs. A carried variable must come back
in its own shape, and a reversible body must be a chain of invertible maps: either mistake is
reported at the offending statement or call.
"""

from __future__ import annotations

import dataclasses

from nexusdsl.elaborate.core import Core
from nexusdsl.elaborate.frame import Frame
from nexusdsl.elaborate.nodes import NodeWriter
from nexusdsl.elaborate.values import POISON, Poison, Skip, Tensor, describe
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.types import TensorType
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import InferContext
from nexusdsl.ops.recur import NodeError, check_reversible

CHECKPOINT_EVERY = 16


# ---------------------------------------------------------------------------- reading the body


def assigned_names(body) -> list[str]:
    """Names the statements assign (in order of first assignment), nested repeats and both
    branches of an `if` included."""
    names: list[str] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.Let):
            targets = (stmt.name,)
        elif isinstance(stmt, ast.Repeat):
            targets = tuple(assigned_names(stmt.body))
        elif isinstance(stmt, ast.If):
            targets = tuple(assigned_names((*stmt.body, *stmt.orelse)))
        else:
            targets = ()
        names += [t for t in targets if t not in names]
    return names


def read_names(node) -> set[str]:
    """Every identifier an AST subtree reads (`ast.Name`), found by walking its fields."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Name):
            found.add(item.id)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return found


def _carried(stmt: ast.Repeat, frame: Frame) -> list[str]:
    carried = [n for n in assigned_names(stmt.body) if n in frame.env]
    for name in carried:
        value = frame.env[name]
        if isinstance(value, Poison):
            raise Skip()
        if not isinstance(value, Tensor):
            raise NexusError.at(stmt.span, f"a reversible repeat carries tensors from step to "
                                f"step, but `{name}` is {describe(value)}")
    if not carried:
        raise NexusError.at(stmt.span, "this reversible repeat assigns no variable that exists "
                            "before it, so it has nothing to carry from step to step "
                            "(write `x = ...` for an x defined above)")
    return carried


def _free(stmt: ast.Repeat, frame: Frame, carried: list[str]) -> list[str]:
    """Outer tensors the body reads without assigning them: extra, constant region inputs."""
    reads = read_names(stmt.body)
    return sorted(n for n in reads if n not in carried and isinstance(frame.env.get(n), Tensor))


# ---------------------------------------------------------------------------- the region


def _region_frame(nodes: NodeWriter, frame: Frame, inputs: dict[str, TensorType], span) -> Frame:
    """A frame for the body over a fresh graph: outer tensors are replaced by region inputs
    (or dropped when the body does not read them); every other binding stays visible."""
    inner = Frame(frame.scope, "", env={}, axes=frame.axes, is_model=False)
    for name, value in frame.env.items():
        if not isinstance(value, Tensor):
            inner.env[name] = value
    for name, ttype in inputs.items():
        nodes.namer.claim(name)
        inner.env[name] = nodes.add_input(name, ttype, span)
    return inner


def build_body(nodes: NodeWriter, core: Core, stmt: ast.Repeat, frame: Frame, carried: list[str],
               free: list[str], label: str) -> Graph:
    """Elaborate the body once as its own graph; its outputs are the carried variables."""
    inputs = {n: frame.env[n].type for n in [*carried, *free]}
    with nodes.region(label) as graph:
        inner = _region_frame(nodes, frame, inputs, stmt.span)
        if not core.run_body(stmt.body, inner):
            raise Skip()
        for name in carried:
            _check_carried(stmt, name, frame.env[name], inner.env.get(name))
            graph.outputs[name] = inner.env[name].ref
        return graph


def _check_carried(stmt, name: str, before: Tensor, after) -> None:
    if not isinstance(after, Tensor):
        raise NexusError.at(stmt.span, f"`{name}` is carried from step to step, but the body "
                            f"makes it {describe(after)}")
    if not _same_type(before.type, after.type):
        raise NexusError.at(after.span, f"a reversible repeat needs `{name}` back in its own "
                            f"shape after each step: it is {before.type} before the step and "
                            f"{after.type} after it",
                            Note(f"{name} was made", before.span))


def _same_type(a: TensorType, b: TensorType) -> bool:
    return (a.dtype == b.dtype and a.rank == b.rank
            and all(x.same_extent(y) for x, y in zip(a.axes, b.axes)))


# ---------------------------------------------------------------------------- the recur node


def build_recurrence(nodes: NodeWriter, core: Core, stmt: ast.Repeat, frame: Frame,
                     count: int) -> None:
    """Elaborate `repeat count shared reversible { ... }` into one `recur` node."""
    if not stmt.shared:
        raise NexusError.at(stmt.span, "reversible recursion applies the same parameters at "
                            "every step: write `repeat N shared reversible { ... }`")
    if stmt.var is not None:
        raise NexusError.at(stmt.var_span, f"`as {stmt.var}` cannot vary a reversible repeat: "
                            "its body is built once, as one graph that runs every step and "
                            f"recomputes each step's input backwards; drop `as {stmt.var}`, or "
                            "`reversible` to unroll the steps")
    carried = _carried(stmt, frame)
    free = _free(stmt, frame, carried)
    if len(carried) > 1 or free:
        names = ", ".join(f"`{n}`" for n in carried + free)
        raise NexusError.at(stmt.span, f"a reversible repeat carries one tensor and reads no "
                            f"other, but its body uses {names} (drop `reversible` to repeat it "
                            "with stored activations)")
    name = nodes.namer.fresh(frame, "blocks")
    try:
        region = build_body(nodes, core, stmt, frame, carried, free, name)
        check_reversible(region)
    except NodeError as err:
        _poison(frame, carried)
        raise NexusError.at(err.node.span if err.node else stmt.span, err.message,
                            Note("in this reversible repeat", stmt.span)) from None
    except (NexusError, Skip):
        _poison(frame, carried)  # later uses of the carried names are not reported again
        raise
    attrs = {"count": count, "carried": len(carried), "reversible": True,
             "checkpoint_every": CHECKPOINT_EVERY}
    _add_recur(nodes, stmt, frame, name, region, attrs, carried)


def _poison(frame: Frame, names: list[str]) -> None:
    for n in names:
        frame.env[n] = POISON


def _add_recur(nodes: NodeWriter, stmt, frame: Frame, name: str, region: Graph, attrs: dict,
               carried: list[str]) -> None:
    op = REGISTRY["recur"]
    inputs = [frame.env[n] for n in carried]
    validated = op.Attrs(**attrs)
    outputs = op.infer(InferContext(regions=[region]), [t.type for t in inputs], validated)
    # Inside an outer `repeat N shared`, later iterations run the first one's body.
    node = nodes.graph.add("recur", name, attrs=validated.model_dump(mode="json"),
                           inputs=[t.ref for t in inputs], outputs=outputs, span=stmt.span,
                           regions=[region], shares=nodes.namer.owner_of(name))
    for i, var in enumerate(carried):
        frame.env[var] = Tensor(node.ref(i), outputs[i], stmt.span, name)
