"""Only public ops are names of the language (docs/language.md, "Builtin ops"). Internal ops
(`Op.public = False`: what `+` and `*` become, the fused forms passes make, `recur`, adapters,
route's take and merge) are unknown names in a `.nx` file, in suggestions, in completion and in
hover; the elaborator still makes them itself."""

import re
import subprocess
import sys

import pytest

import nexusdsl
from nexusdsl.elaborate.modules import OPTION_FUNCTIONS
from nexusdsl.ops import REGISTRY
from nexusdsl.tools.analysis import analyze, hover
from nexusdsl.tools.completion import completions
from tests.conftest import ROOT

INTERNAL = sorted(name for name, op in REGISTRY.items() if not op.public)
PUBLIC = sorted(name for name, op in REGISTRY.items() if op.public)
# the ones a review found callable: `fused_rmsnorm(x)` even passed `nexus check`
REPORTED = ["fused_rmsnorm", "topk_mask", "params", "pruned_attention"]


def model_calling(call: str) -> str:
    return ("model M(dim = 8) {\n"
            "  input x: float[B, T, 8]\n"
            f"  y = {call}\n"
            "  output o = x\n"
            "}\n")


def diagnostics_of(text: str):
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "t.nx")
    return info.value.diagnostics


def test_the_reported_ops_are_internal():
    assert set(REPORTED) <= set(INTERNAL)
    assert {"add", "recur", "adapter", "modal_take"} <= set(INTERNAL)


@pytest.mark.parametrize("name", INTERNAL)
def test_calling_an_internal_op_is_an_unknown_function(name):
    (d,) = diagnostics_of(model_calling(f"{name}(x)"))
    (reference,) = diagnostics_of(model_calling("zzqqx(x)"))  # a name defined nowhere
    assert d.message.split(";")[0] == f"unknown function `{name}`"
    assert reference.message == "unknown function `zzqqx`"
    assert (d.span.line, d.span.col) == (reference.span.line, reference.span.col) == (3, 7)


@pytest.mark.parametrize("name", INTERNAL)
def test_an_internal_op_name_as_a_value_names_nothing(name):
    text = model_calling("x |> act").replace("  y =", f"  act = {name}\n  y =")
    (d,) = diagnostics_of(text)
    assert d.message.split(";")[0] == f"unknown function `{name}`"
    assert (d.span.line, d.span.col) == (4, 7)


@pytest.mark.parametrize("name", INTERNAL)
def test_suggestions_offer_public_names_only(name):
    (d,) = diagnostics_of(model_calling(f"{name}_(x)"))  # one character away from the op
    suggested = d.message.partition("did you mean `")[2].rstrip("`?")
    assert suggested not in INTERNAL
    local = {"x", "dim", "M"}  # the file's own names may be suggested too
    assert suggested == "" or suggested in {*PUBLIC, *OPTION_FUNCTIONS, *local}


def test_parameter_does_not_suggest_params():
    (d,) = diagnostics_of(model_calling("parameter(dim)"))
    assert d.message == "unknown function `parameter`; did you mean `param`?"  # the public op


def test_an_uncalled_block_calling_an_internal_op_is_reported():
    text = "block norm(x: [*, d]) { return fused_rmsnorm(x) }\n" + model_calling("rmsnorm(x)")
    (d,) = diagnostics_of(text)
    assert d.message.split(";")[0] == "unknown function `fused_rmsnorm`"
    assert (d.span.line, d.span.col) == (1, 32)


def test_nexus_run_reports_an_internal_op_located_and_without_traceback(tmp_path):
    path = tmp_path / "fused.nx"
    path.write_text(model_calling("fused_rmsnorm(x)"))
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "run", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith(f"{path}:3:7: error: unknown function `fused_rmsnorm`")


def test_the_elaborator_still_makes_internal_ops():
    graph = nexusdsl.loads("""\
modality text = bytes(code = 0)

model M(dim = 8) {
  input t: text[B, T]
  x = tag(embed(t, dim))
  x = x + linear(x, dim)
  x = x - x * x
  x = 0.5 * x - 1
  repeat 2 shared reversible {
    x = leaky_relu(linear(x, dim))
  }
  x = moe(x, 2 of linear(dim), router = topk(k = 1), adapter = true)
  output y = route(x) { text -> linear(dim) }
}
""", "t.nx").elaborate()

    def ops(g):
        for node in g.nodes():
            yield node.op
            for region in node.regions:
                yield from ops(region)

    made = set(ops(graph))
    assert {"add", "sub", "mul", "scale", "shift", "recur", "adapter", "modal_take",
            "modal_merge"} <= made


def test_completion_offers_public_ops_only():
    text = model_calling("lin")
    labels = {c.label for c in completions(analyze(text, "t.nx"), text, 3, 10) if c.kind == "op"}
    assert labels == set(PUBLIC)


def test_completion_offers_no_keywords_of_an_internal_op():
    text = model_calling("fused_rmsnorm(x, ")
    found = completions(analyze(text, "t.nx"), text, 3, len("  y = fused_rmsnorm(x, ") + 1)
    assert [c for c in found if c.kind == "keyword-argument"] == []
    text = model_calling("rmsnorm(x, ")
    found = completions(analyze(text, "t.nx"), text, 3, len("  y = rmsnorm(x, ") + 1)
    assert [c.label for c in found if c.kind == "keyword-argument"] == \
        list(REGISTRY["rmsnorm"].Attrs.model_fields)


def test_hover_shows_no_signature_for_an_internal_op():
    text = model_calling("fused_rmsnorm(x)") + model_calling("rmsnorm(x)").replace("model M", "model N")
    result = analyze(text, "t.nx")
    assert hover(result, 3, 8) is None
    signature = hover(result, 8, 8)
    assert signature is not None and "rmsnorm(x, eps = 1e-06, offset = 0.0)" in signature


def test_the_builtin_ops_table_of_the_language_lists_exactly_the_public_ops():
    text = (ROOT / "docs/language.md").read_text()
    table = text.split("## Builtin ops")[1].split("\n\n")[1]
    rows = [line.replace("\\|", "/").split("|")[2] for line in table.splitlines()[2:]]
    written = {re.match(r"\w+", code).group() for row in rows for code in re.findall(r"`([^`]+)`", row)}
    # `route(x) { }` and `repeat` are grammar; `recur` is named as what `repeat ... reversible` makes
    assert written - {"route", "repeat", "recur"} == set(PUBLIC)
