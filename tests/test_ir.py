"""The IR: printer golden files, JSON round trip, stable content hash, verifier."""

import pytest

import nexusdsl
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.printer import print_graph
from nexusdsl.ir.verify import VerifyError, verify
from nexusdsl.ops import REGISTRY
from tests.conftest import EXAMPLES, ROOT, check_golden


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_printer_golden(path):
    program = nexusdsl.load(path.relative_to(ROOT))
    text = "\n\n".join(print_graph(program.elaborate(m)) for m in program.models)
    check_golden(ROOT / "tests/golden/ir" / f"{path.stem}.ir", text + "\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_json_round_trip_keeps_everything(path):
    program = nexusdsl.load(path)
    for model in program.models:
        graph = program.elaborate(model)
        again = Graph.from_json(graph.to_json())
        assert again.to_json() == graph.to_json()
        assert again.content_hash() == graph.content_hash()
        assert print_graph(again) == print_graph(graph)
        verify(again, REGISTRY)


def test_hash_is_stable_and_sensitive():
    program = nexusdsl.load("examples/tiny_lm.nx")
    a = program.elaborate().content_hash()
    b = nexusdsl.load("examples/tiny_lm.nx").elaborate().content_hash()
    c = program.elaborate(dim=64).content_hash()
    assert a == b and a != c


def test_hash_ignores_source_positions():
    text = (ROOT / "examples/tiny_lm.nx").read_text()
    moved = "\n\n# a comment\n" + text.replace("  x = embed", "  x   =   embed")
    a = nexusdsl.loads(text, "examples/tiny_lm.nx").elaborate().content_hash()
    b = nexusdsl.loads(moved, "examples/tiny_lm.nx").elaborate().content_hash()
    assert a == b


def fresh_graph():
    return Graph.from_json(nexusdsl.load("examples/tiny_lm.nx").elaborate().to_json())


def test_verifier_catches_a_missing_output_value():
    graph = fresh_graph()
    victim = next(n for n in graph.nodes() if n.op == "rmsnorm")
    graph.outputs = {"bad": victim.ref(3)}
    with pytest.raises(VerifyError, match="output bad refers to a missing value"):
        verify(graph, REGISTRY)


def test_verifier_catches_a_mistied_parameter():
    graph = fresh_graph()
    head = graph.by_name("unembed")
    params = {"weight": head.params["weight"].model_copy(update={"tied_to": "rmsnorm.weight"})}
    graph.replace(head, head.model_copy(update={"params": params}))
    with pytest.raises(VerifyError, match="tied to rmsnorm.weight"):
        verify(graph, REGISTRY)


def test_verifier_catches_a_duplicate_name():
    graph = fresh_graph()
    node = graph.by_name("rmsnorm")
    graph.replace(node, node.model_copy(update={"name": "tok"}))
    with pytest.raises(VerifyError, match="duplicate node name"):
        verify(graph, REGISTRY)


def test_verifier_catches_an_unknown_op_when_given_the_registry():
    graph = fresh_graph()
    node = graph.by_name("rmsnorm")
    graph.replace(node, node.model_copy(update={"op": "no_such_op"}))
    verify(graph)  # structure alone is fine: the IR does not know the ops
    with pytest.raises(VerifyError, match="unknown op no_such_op"):
        verify(graph, REGISTRY)


# ---------------------------------------------------------------------------- nested graphs

NESTED = """\
nexus 0.1
import std.nn

model M {
  input x: float[B, T, 8]
  experts e = 2 of mlp(mult = 2)
  h = moe(x, e, router = topk(k = 1))
  repeat 2 shared {
    h = moe(h, e, router = topk(k = 1))
  }
  output y = h
}
"""


def _by_hand(graph: Graph) -> list[tuple[Graph, str]]:
    found = []
    for node in graph.nodes():
        found.append((graph, node.name))
        for region in node.regions:
            found += _by_hand(region)
    return found


def test_walk_visits_nested_graphs_after_their_owner_with_their_graph():
    graph = nexusdsl.loads(NESTED, "n.nx").elaborate()
    walked = [(g, n.name) for g, n in graph.walk()]
    assert walked == _by_hand(graph) and len(walked) > len(graph)
    assert all(g.node(g.by_name(name).id).name == name for g, name in walked)
    top = [n.name for _, n in graph.walk(enter=lambda n: False)]
    assert top == [n.name for n in graph.nodes()]
    unshared = list(graph.walk(enter=lambda n: not n.shares))
    assert len(walked) - len(unshared) == sum(len(r) for n in graph.nodes() if n.shares
                                              for r in n.regions)


def test_regions_are_graphs_and_survive_the_json_round_trip():
    from pydantic import ValidationError

    from nexusdsl.ir.graph import Node

    graph = nexusdsl.loads(NESTED, "n.nx").elaborate()
    again = Graph.from_json(graph.to_json())
    assert again.to_json() == graph.to_json() and again.content_hash() == graph.content_hash()
    assert all(isinstance(r, Graph) for _, n in again.walk() for r in n.regions)
    with pytest.raises(ValidationError):
        Node(id=0, op="moe", name="m", regions=[{"nodes": []}])
