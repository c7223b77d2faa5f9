"""The IR graph: pydantic `Node`s held in a networkx MultiDiGraph behind a small API.

Passes and lowerings speak to `Graph` (`nodes`, `users`, `replace_all_uses_with`, `erase`),
in the style of torch.fx, and never touch networkx directly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from nexusdsl.ir.types import TensorType
from nexusdsl.lang.diagnostics import Span


class ValueRef(BaseModel):
    """The `index`-th output of node `node` (a node id)."""

    model_config = ConfigDict(frozen=True)

    node: int
    index: int = 0


class ParamSpec(BaseModel):
    """A parameter a node owns: its shape, how it is initialised, and whether it trains.

    `tied_to` names another node's parameter (`tok.weight`) that this one *is*: tied heads.
    `buffer` marks persistent state that is not trained by gradients (a router's correction
    bias): lowered as a registered buffer (in the state_dict), left out of parameter counts."""

    model_config = ConfigDict(frozen=True)

    shape: tuple[int, ...]
    init: str = "normal"  # normal | zeros | ones | uniform | fan_in
    std: float = 0.02
    frozen: bool = False
    tied_to: str | None = None
    buffer: bool = False

    @model_serializer(mode="wrap")
    def _without_default_buffer(self, handler):
        # left out when false, so graphs without buffers serialise and hash as before
        data = handler(self)
        if not self.buffer:
            data.pop("buffer", None)
        return data

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


# A node's name is an attribute path of the compiled torch module and appears in the Python
# source torch.fx generates, so a name read from a file (the IR a checkpoint stores) is held to
# what the elaborator makes: identifiers and iteration numbers joined by dots (blocks.0.mlp).
NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")


class Node(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: int
    op: str
    name: str
    attrs: dict[str, Any] = Field(default_factory=dict)
    inputs: list[ValueRef] = Field(default_factory=list)
    outputs: list[TensorType] = Field(default_factory=list)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    shares: str | None = None  # the node whose parameters this one reuses (`repeat N shared`)
    span: Span | None = None
    # Nested graphs an op runs (experts of a `moe`, the body of a reversible `repeat`).
    regions: list[Graph] = Field(default_factory=list)

    @field_validator("name", "shares")
    @classmethod
    def _dotted_identifier(cls, value: str | None) -> str | None:
        if value is not None and not NODE_NAME.fullmatch(value):
            shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
            raise ValueError(f"a node name is identifiers joined by dots, got {shown}")
        return value

    def ref(self, index: int = 0) -> ValueRef:
        return ValueRef(node=self.id, index=index)

    @property
    def type(self) -> TensorType:
        return self.outputs[0]

    @property
    def is_input(self) -> bool:
        """A model input: a placeholder, not an op."""
        return self.op == "input"

    def owned_params(self) -> dict[str, ParamSpec]:
        """The parameters this node holds itself: none when it shares another node's
        (`repeat N shared`), and not the tied ones (they are another node's tensors)."""
        if self.shares:
            return {}
        return {key: spec for key, spec in self.params.items() if not spec.tied_to}


class Graph:
    """A model: its nodes in insertion (topological) order, inputs, and named outputs."""

    def __init__(self, name: str = "model", hyper: dict[str, Any] | None = None):
        self.name = name
        self.hyper: dict[str, Any] = dict(hyper or {})
        self.outputs: dict[str, ValueRef] = {}
        self._g = nx.MultiDiGraph()
        self._next_id = 0
        self._by_name: dict[str, int] = {}

    # ------------------------------------------------------------------ building
    def add(self, op: str, name: str, **fields) -> Node:
        node = Node(id=self._next_id, op=op, name=name, **fields)
        self.insert(node)
        return node

    def insert(self, node: Node) -> Node:
        assert node.id not in self._g, f"duplicate node id {node.id}"
        self._next_id = max(self._next_id, node.id + 1)
        self._g.add_node(node.id, node=node)
        self._by_name[node.name] = node.id
        for position, ref in enumerate(node.inputs):
            self._g.add_edge(ref.node, node.id, key=position, index=ref.index)
        return node

    def fresh_id(self) -> int:
        return self._next_id

    # ------------------------------------------------------------------ queries
    def node(self, node_id: int) -> Node:
        return self._g.nodes[node_id]["node"]

    def by_name(self, name: str) -> Node | None:
        node_id = self._by_name.get(name)
        return self.node(node_id) if node_id is not None and node_id in self._g else None

    def type_of(self, ref: ValueRef) -> TensorType:
        return self.node(ref.node).outputs[ref.index]

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._g

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def nodes(self) -> list[Node]:
        """All nodes in a topological order (insertion order breaks ties: deterministic)."""
        order = nx.lexicographical_topological_sort(self._g)
        return [self.node(i) for i in order]

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes() if n.is_input]

    def walk(self, enter: Callable[[Node], bool] | None = None) -> Iterator[tuple[Graph, Node]]:
        """Every node with the graph that holds it, nested regions included: each node in
        topological order, followed by the nodes of its regions (depth first). Where `enter`
        is given and says False for a node, its regions are skipped."""
        for node in self.nodes():
            yield self, node
            if node.regions and (enter is None or enter(node)):
                for region in node.regions:
                    yield from region.walk(enter)

    def users(self, node: Node) -> list[Node]:
        return [self.node(i) for i in sorted(set(self._g.successors(node.id)))]

    def predecessors(self, node: Node) -> list[Node]:
        return [self.node(i) for i in sorted(set(self._g.predecessors(node.id)))]

    def has_path(self, a: Node, b: Node) -> bool:
        return nx.has_path(self._g, a.id, b.id)

    # ------------------------------------------------------------------ rewriting
    def replace_all_uses_with(self, old: ValueRef, new: ValueRef) -> None:
        for user in self.users(self.node(old.node)):
            if any(r == old for r in user.inputs):
                inputs = [new if r == old else r for r in user.inputs]
                self.replace(user, user.model_copy(update={"inputs": inputs}))
        self.outputs = {k: (new if v == old else v) for k, v in self.outputs.items()}

    def replace(self, old: Node, new: Node) -> Node:
        """Swap a node for another with the same id (new attributes, inputs or types)."""
        assert old.id == new.id
        users = [(u, k, d) for _, u, k, d in self._g.out_edges(old.id, keys=True, data=True)]
        self._g.remove_node(old.id)
        self._by_name.pop(old.name, None)
        self.insert(new)
        for u, k, d in users:
            self._g.add_edge(new.id, u, key=k, **d)
        return new

    def erase(self, node: Node) -> None:
        assert not list(self._g.successors(node.id)), f"{node.name} still has users"
        self._g.remove_node(node.id)
        if self._by_name.get(node.name) == node.id:
            del self._by_name[node.name]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hyper": self.hyper,
            "nodes": [_node_dict(n) for n in self.nodes()],
            "outputs": {k: v.model_dump() for k, v in self.outputs.items()},
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        graph = cls(data["name"], data.get("hyper"))
        for raw in data["nodes"]:
            raw = dict(raw)
            span = raw.pop("span", None)
            regions = [cls.from_dict(r) for r in raw.pop("regions", [])]
            node = Node.model_validate(raw)
            node = node.model_copy(update={"span": Span(**span) if span else None, "regions": regions})
            graph.insert(node)
        graph.outputs = {k: ValueRef(**v) for k, v in data["outputs"].items()}
        return graph

    def content_hash(self) -> str:
        """A stable hash of what the graph computes: ops, attributes, types, names, wiring.
        Source locations are left out, so reformatting a file keeps the hash."""
        blob = json.dumps(_without_spans(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


Node.model_rebuild()  # `regions` names Graph, defined after Node


def _node_dict(node: Node) -> dict[str, Any]:
    data = node.model_dump(mode="json", exclude={"regions"})
    if node.regions:
        data["regions"] = [g.to_dict() for g in node.regions]
    return data


def _without_spans(data: dict[str, Any]) -> dict[str, Any]:
    nodes = []
    for node in data["nodes"]:
        node = {k: v for k, v in node.items() if k != "span"}
        if "regions" in node:
            node["regions"] = [_without_spans(r) for r in node["regions"]]
        nodes.append(node)
    return {**data, "nodes": nodes}
