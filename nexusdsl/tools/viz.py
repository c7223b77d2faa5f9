"""`nexus viz`: a picture of a model's IR graph, drawn with Graphviz.

- a node is a box `name / op` with its parameter count; its fill is the colour of the modality
  of the tensor it makes (a stream mixing several modalities, after `concat`, is striped);
- every edge carries the shape of its tensor (`[B, T, dim=128]`);
- hierarchical names become nested clusters (`blocks` > `blocks.0` > `blocks.0.mlp`), and
  `depth = N` collapses every node below name depth N into one box per group (`blocks.0.*`);
- a `moe` node is a cluster: its router drawn as a switch (a diamond), one box per expert with
  the ops of its region and its parameters, and the weighted sum of the experts' outputs;
- `route` branches (`modal_take`) are switches too; other ops with nested graphs (a
  `repeat N shared reversible` body) are clusters with the body drawn inside.

Rendering needs Graphviz's `dot` program; without it `render` writes the `.dot` source and
says how to render it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import graphviz

from nexusdsl.compiler.summary import held_params
from nexusdsl.ir.graph import Graph, Node
from nexusdsl.ir.types import TensorType

PALETTE = ("#c6dbff", "#c9efcf", "#ffd9b3", "#e3cdf7", "#fff0a6", "#f9c9d1", "#bff0ee")
PLAIN = "#eeeeee"
SWITCH = "#fff7d6"
FORMATS = ("svg", "png", "pdf", "dot")
_ROUTER_OPS = frozenset({"modal_take"})


def human(n: int) -> str:
    """66048 -> 66.0k"""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def own_params(node: Node) -> int:
    """Parameters a node owns itself and in its regions; shared and tied ones count zero."""
    return held_params(node)


def shape_label(t: TensorType) -> str:
    return "[" + ", ".join(str(a) for a in t.axes) + "]"


def modalities_of(t: TensorType) -> list[str]:
    if t.codes:
        return list(dict.fromkeys(seg.modality for seg in t.codes))
    return [t.modality] if t.modality else []


class _Drawing:
    """One picture: the graph, the collapse depth, and the modality colours."""

    def __init__(self, graph: Graph, depth: int | None):
        self.graph = graph
        self.depth = depth
        self.colours: dict[str, str] = {}
        self._collect_modalities(graph)
        self.dot = graphviz.Digraph(graph.name, graph_attr={
            "rankdir": "TB", "fontname": "Helvetica", "fontsize": "11", "labelloc": "t",
            "label": f"model {graph.name}", "nodesep": "0.25", "ranksep": "0.35",
        }, node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                      "fontsize": "10", "fillcolor": PLAIN, "color": "#555555"},
            edge_attr={"fontname": "Helvetica", "fontsize": "8", "fontcolor": "#444444",
                       "color": "#666666", "arrowsize": "0.6"})

    def _collect_modalities(self, graph: Graph) -> None:
        """Colours in modal-code order, so a modality keeps its colour from model to model."""
        types = [t for node in graph.nodes() for t in node.outputs]
        codes = {seg.modality: seg.code for t in types for seg in t.codes or ()}
        for t in types:
            if t.modality:
                codes.setdefault(t.modality, 1000 + len(codes))
        for i, name in enumerate(sorted(codes, key=lambda m: (codes[m], m))):
            self.colours[name] = PALETTE[i % len(PALETTE)]

    def fill(self, t: TensorType, box: bool = True) -> dict[str, str]:
        colours = [self.colours[m] for m in modalities_of(t) if m in self.colours]
        if len(colours) > 1 and box:  # a stream of several modalities: one stripe each
            return {"fillcolor": ":".join(colours), "style": "striped"}
        return {"fillcolor": colours[0] if colours else PLAIN}

    # ------------------------------------------------------------------ groups
    def group_of(self, node: Node) -> str | None:
        """The collapsed group a node belongs to, or None when it is drawn itself."""
        parts = node.name.split(".")
        if node.op == "input" or self.depth is None or len(parts) <= self.depth:
            return None
        return ".".join(parts[: self.depth])

    def endpoint(self, node: Node) -> str:
        group = self.group_of(node)
        return f"g_{group}" if group is not None else f"n{node.id}"

    # ------------------------------------------------------------------ drawing
    def draw(self) -> graphviz.Digraph:
        tree = _ClusterTree()
        groups: dict[str, list[Node]] = defaultdict(list)
        for node in self.graph.nodes():
            group = self.group_of(node)
            if group is not None:
                groups[group].append(node)
                if len(groups[group]) == 1:
                    tree.add(group, ("group", group))
            else:
                tree.add(node.name if node.op != "input" else "", ("node", node))
        self._emit(tree, self.dot, groups)
        self._edges()
        self._outputs()
        self._legend()
        return self.dot

    def _emit(self, tree: _ClusterTree, into: graphviz.Digraph, groups) -> None:
        for kind, item in tree.items:
            if kind == "group":
                self._group_node(into, item, groups[item])
            else:
                self._node(into, item)
        for prefix, child in tree.children.items():
            if child.size() < 2:  # a lone node needs no frame around it
                self._emit(child, into, groups)
                continue
            with into.subgraph(name=f"cluster_{prefix}") as sub:
                sub.attr(label=prefix, style="rounded,dashed", color="#999999", fontsize="10")
                self._emit(child, sub, groups)

    def _node(self, into: graphviz.Digraph, node: Node) -> None:
        if node.op == "input":
            label = f"{node.name}\n{node.attrs.get('modality') or node.type.modality or 'input'}"
            into.node(f"n{node.id}", label, shape="invhouse", **self.fill(node.type, box=False))
        elif node.op == "moe":
            self._moe(into, node)
        elif node.regions:
            self._region_op(into, node)
        elif node.op in _ROUTER_OPS:
            into.node(f"n{node.id}", f"{node.name}\nroute: {node.type.modality or 'tokens'}",
                      shape="diamond", style="filled", fillcolor=SWITCH)
        else:
            into.node(f"n{node.id}", _node_label(node), tooltip=node.name, **self.fill(node.type))

    def _group_node(self, into: graphviz.Digraph, group: str, nodes: list[Node]) -> None:
        params = sum(own_params(n) for n in nodes)
        ops = _op_summary(nodes)
        last = nodes[-1]
        into.node(f"g_{group}", _label(group, f"{len(nodes)} nodes: {ops}", params),
                  shape="box3d", tooltip=group, **self.fill(last.type))

    def _moe(self, into: graphviz.Digraph, node: Node) -> None:
        router = node.attrs.get("router") or {}
        rname = router.get("fn", "router") if isinstance(router, dict) else str(router)
        kwargs = router.get("kwargs", {}) if isinstance(router, dict) else {}
        setting = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k in ("k", "coords"))
        with into.subgraph(name=f"cluster_moe_{node.id}") as sub:
            sub.attr(label=f"{node.name}: {len(node.regions)} experts", style="rounded,filled",
                     fillcolor="#fafafa", color="#777777", fontsize="10")
            sub.node(f"n{node.id}_router", f"router\n{rname}({setting})", shape="diamond",
                     style="filled", fillcolor=SWITCH)
            for i, region in enumerate(node.regions):
                nodes = [n for n in region.nodes() if n.op != "input"]
                params = sum(own_params(n) for n in nodes)
                sub.node(f"n{node.id}_e{i}", _label(region.name, _op_summary(nodes), params),
                         **self.fill(node.type))
                sub.edge(f"n{node.id}_router", f"n{node.id}_e{i}", style="dashed")
                sub.edge(f"n{node.id}_e{i}", f"n{node.id}")
            sub.node(f"n{node.id}", "Σ", shape="circle", width="0.3", fixedsize="true",
                     **self.fill(node.type, box=False))

    def _region_op(self, into: graphviz.Digraph, node: Node) -> None:
        with into.subgraph(name=f"cluster_op_{node.id}") as sub:
            sub.attr(label=f"{node.name}: {node.op}" + _count(node), style="rounded",
                     color="#777777", fontsize="10")
            sub.node(f"n{node.id}", _label(node.name.rsplit(".", 1)[-1], node.op, 0),
                     **self.fill(node.type))
            for i, region in enumerate(node.regions):
                prefix = f"r{node.id}_{i}_"
                with sub.subgraph(name=f"cluster_{prefix}") as body:
                    body.attr(label=region.name, style="rounded,dashed", color="#999999")
                    for inner in region.nodes():
                        body.node(f"{prefix}n{inner.id}", _label(inner.name, inner.op,
                                                                  own_params(inner)),
                                  **self.fill(inner.type))
                _region_edges(self.dot, region, prefix, f"n{node.id}")

    def _edges(self) -> None:
        seen: set[tuple[str, str]] = set()
        for node in self.graph.nodes():
            head = self.endpoint(node)
            if node.op == "moe" and self.group_of(node) is None:
                head = f"n{node.id}_router"
            for ref in node.inputs:
                tail = self.endpoint(self.graph.node(ref.node))
                if tail == head or (tail, head) in seen:
                    continue  # inside one collapsed group, or drawn already
                seen.add((tail, head))
                self.dot.edge(tail, head, label=shape_label(self.graph.type_of(ref)))

    def _outputs(self) -> None:
        for name, ref in self.graph.outputs.items():
            t = self.graph.type_of(ref)
            self.dot.node(f"out_{name}", f"{name}\noutput", shape="house",
                          **self.fill(t, box=False))
            self.dot.edge(self.endpoint(self.graph.node(ref.node)), f"out_{name}",
                          label=shape_label(t))

    def _legend(self) -> None:
        if not self.colours:
            return
        with self.dot.subgraph(name="cluster_legend") as legend:
            legend.attr(label="modalities", style="rounded", color="#bbbbbb", fontsize="9")
            for name, colour in self.colours.items():
                legend.node(f"legend_{name}", name, fillcolor=colour, fontsize="9")


class _ClusterTree:
    """Items (nodes, collapsed groups) filed under the prefixes of their dotted names."""

    def __init__(self):
        self.items: list[tuple[str, object]] = []
        self.children: dict[str, _ClusterTree] = {}

    def add(self, name: str, item: tuple[str, object]) -> None:
        parts = name.split(".")[:-1] if name else []
        tree = self
        for i in range(len(parts)):
            tree = tree.children.setdefault(".".join(parts[: i + 1]), _ClusterTree())
        tree.items.append(item)

    def size(self) -> int:
        return len(self.items) + sum(c.size() for c in self.children.values())


def _label(name: str, what: str, params: int) -> str:
    head = name if name == what else f"{name}\n{what}"
    return head + (f"\n{human(params)} params" if params else "")


def _node_label(node: Node) -> str:
    label = _label(node.name.rsplit(".", 1)[-1], node.op, own_params(node))
    tied = sorted({s.tied_to.split(".")[0] for s in node.params.values() if s.tied_to})
    if node.shares:
        label += f"\nshares {node.shares}"
    return label + (f"\ntied to {', '.join(tied)}" if tied else "")


def _count(node: Node) -> str:
    count = node.attrs.get("count")
    return f" ×{count}" if count is not None else ""


def _op_summary(nodes: list[Node]) -> str:
    """`linear → gelu → linear`, or the distinct ops when the chain is long."""
    ops = [n.op for n in nodes]
    if len(ops) <= 4:
        return " → ".join(ops)
    distinct = list(dict.fromkeys(ops))
    return ", ".join(distinct[:5]) + (", ..." if len(distinct) > 5 else "")


def _region_edges(dot: graphviz.Digraph, region: Graph, prefix: str, owner: str) -> None:
    for inner in region.nodes():
        if inner.op == "input":
            dot.edge(owner, f"{prefix}n{inner.id}", style="dashed")
        for ref in inner.inputs:
            dot.edge(f"{prefix}n{ref.node}", f"{prefix}n{inner.id}",
                     label=shape_label(region.type_of(ref)))
    for ref in region.outputs.values():
        dot.edge(f"{prefix}n{ref.node}", owner, style="dashed", constraint="false")


def to_dot(graph: Graph, depth: int | None = None) -> graphviz.Digraph:
    """The picture of `graph` as a Graphviz digraph (`.source` is the DOT text)."""
    if depth is not None and depth < 1:
        raise ValueError("depth must be at least 1")
    return _Drawing(graph, depth).draw()


def output_format(path: Path) -> str:
    fmt = path.suffix.lstrip(".").lower()
    return "dot" if fmt == "gv" else fmt


def render(graph: Graph, path: Path, depth: int | None = None) -> tuple[Path, str | None]:
    """Write the picture to `path` (its suffix picks svg, png, pdf or dot). Returns the file
    written and, when Graphviz's `dot` is missing, a note: the `.dot` file written instead and
    the command that renders it."""
    from nexusdsl.fsutil import atomic_write_bytes, atomic_write_text

    dot = to_dot(graph, depth)
    fmt = output_format(path)
    if fmt == "dot":
        atomic_write_text(path, dot.source)
        return path, None
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        fallback = path.with_suffix(".dot")
        atomic_write_text(fallback, dot.source)
        return fallback, (f"Graphviz's `dot` program is not installed, so {fallback} holds the "
                          f"graph; render it with `dot -T{fmt} {fallback} -o {path}` after "
                          "installing Graphviz (Debian/Ubuntu: apt-get install graphviz)")
    atomic_write_bytes(path, data)
    return path, None
