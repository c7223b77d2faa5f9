"""The elaborator's observer hook (elaborate/observer.py) and its dispatch tables: what an
observer is told, that watching changes nothing, and that every AST kind has a rule."""

from __future__ import annotations

import dataclasses

import pytest

import nexusdsl
from nexusdsl.elaborate.elaborator import Elaborator
from nexusdsl.elaborate.modules import Loader
from nexusdsl.elaborate.observer import Observer
from nexusdsl.elaborate.values import Tensor
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink
from tests.conftest import EXAMPLES


class Log(Observer):
    def __init__(self):
        self.calls, self.values, self.statements = [], [], []

    def on_call(self, span, made):
        self.calls.append((span, [n.name for n in made]))

    def on_value(self, expr, value, made):
        self.values.append((expr, value, [n.name for n in made]))

    def on_statement(self, stmt, env):
        self.statements.append((stmt, dict(env)))


def watched(text: str):
    """Elaborate the file's model with a `Log` watching (the file need not compile)."""
    loader = Loader(DiagnosticSink())
    scope = loader.load_text(text, "t.nx")
    log, sink = Log(), DiagnosticSink()
    elaborator = Elaborator(scope, sink, loader.sources, observer=log)
    graph = elaborator.build_model(scope.models[0], {})
    return graph, log, sink


def source(text: str, span) -> str:
    line = text.splitlines()[span.line - 1]
    return line[span.col - 1:span.end_col - 1]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_watching_changes_no_graph(path):
    program = nexusdsl.load(path)
    for name in program.models:
        log = Log()
        elaborator = Elaborator(program.scope, DiagnosticSink(), program.sources, observer=log)
        watched_graph = elaborator.build_model(program.model_ast(name), {})
        assert watched_graph.to_json() == program.elaborate(name).to_json()
        assert log.values and log.statements


TEXT = """\
model M {
  input x: float[B, 16]
  h = linear(rmsnorm(x), 4)
  output y = h
}
"""


def test_a_call_reports_its_own_nodes_and_its_value_those_of_its_arguments_too():
    graph, log, _ = watched(TEXT)
    call = next(expr for expr, _, _ in log.values if source(TEXT, expr.span) == "linear(rmsnorm(x), 4)")
    (own,) = [made for span, made in log.calls if span == call.span]
    (value,) = [(v, made) for e, v, made in log.values if e is call]
    assert own == ["linear"]
    assert value[1] == ["rmsnorm", "linear"]
    assert isinstance(value[0], Tensor) and value[0].ref == graph.by_name("linear").ref()


def test_a_block_call_reports_every_node_of_its_body():
    text = ("block ffn(x: [*, d]) { return linear(gelu(linear(x, d * 2)), d) }\n"
            "model M { input x: float[B, 16]\n output y = x + ffn(x) }\n")
    graph, log, _ = watched(text)
    (made,) = [m for span, m in log.calls if source(text, span) == "ffn(x)"]
    assert made == [n.name for n in graph.nodes() if n.name.startswith("ffn.")]
    assert made == ["ffn.linear", "ffn.gelu", "ffn.linear_1"]
    (whole,) = [m for e, _, m in log.values if source(text, e.span) == "x + ffn(x)"]
    assert whole == [*made, "add"]


def test_statements_are_reported_once_per_run_with_their_bindings():
    text = "model M { input x: float[B, 4]\n repeat 3 {\n  x = linear(x, 4)\n }\n output y = x }\n"
    graph, log, _ = watched(text)
    assigns = [(s, env) for s, env in log.statements if isinstance(s, ast.Assign)]
    assert len(assigns) == 3
    assert [env["x"].node_name for _, env in assigns] == ["blocks.0.linear", "blocks.1.linear",
                                                         "blocks.2.linear"]
    kinds = [type(s).__name__ for s, _ in log.statements]
    assert kinds == ["Input", "Assign", "Assign", "Assign", "Repeat", "Output"]


def test_a_failing_statement_is_not_reported():
    text = ("model M { input x: float[B, 4]\n"
            " h = linear(x, 4) + linear(x, 5)\n"
            " g = linear(x, 6)\n"
            " output y = g }\n")
    _, log, sink = watched(text)
    assert len(sink.diagnostics) == 1 and "shape mismatch" in sink.diagnostics[0].message
    bound = [s.targets for s, _ in log.statements if isinstance(s, ast.Assign)]
    assert bound == [("g",)]
    assert not any(source(text, e.span) == "linear(x, 4) + linear(x, 5)" for e, _, _ in log.values)
    # the operands that did evaluate were reported before the sum failed
    assert [source(text, e.span) for e, _, _ in log.values if e.span.line == 2
            and isinstance(e, ast.Call)] == ["linear(x, 4)", "linear(x, 5)"]


def _concrete_subclasses(base: type) -> set[type]:
    return {c for c in vars(ast).values() if isinstance(c, type) and issubclass(c, base)
            and c is not base and dataclasses.is_dataclass(c)}


# statements that stand only at the top of a file, never in a body (grammar/nexus.lark `_stmt`),
# and the rules inside `bind` and `weights` sections (read by elaborate/bindings.py)
TOP_LEVEL = {ast.Import, ast.Modality, ast.Block, ast.Model, ast.Train, ast.ModelAlias,
             ast.Bind, ast.Weights, ast.BindRule, ast.BindUse, ast.BindIgnore}


def test_every_expression_and_statement_kind_has_a_rule():
    program = nexusdsl.loads(TEXT, "t.nx")
    elaborator = Elaborator(program.scope, DiagnosticSink(), program.sources)
    assert set(elaborator.expressions.rules) == _concrete_subclasses(ast.Expr)
    assert set(elaborator.statements.rules) == _concrete_subclasses(ast.Stmt) - TOP_LEVEL
