"""Per-layer variation (docs/language.md, "Per-layer variation"): `repeat N as i`, list items,
comparisons and `and`/`or`/`not`, and `if` statements decided while elaborating. Each construct
is checked against an independent reference: the same model written out by hand (as `.nx` and
as PyTorch), Python's own operators, and formulas for shapes and counts; every mistake is a
located error."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.tools.analysis import analyze, definition, hover
from nexusdsl.tools.completion import completions
from nexusdsl.tools.fmt import format_text

MLP = """\
block mlp(x: [*, d], mult = 2) -> [*, d] {
  return linear(linear(x, d * mult) |> gelu, d)
}
"""

VARIED = MLP + """
model Varied(depth = 4) {
  input x: float[B, 16]
  repeat depth as i {
    if i % 2 == 0 {
      x = linear(x, 16)
    } else {
      x = x + mlp(x)
    }
  }
  output y = x
}
"""

# The same four layers written out: each in its own `repeat 1`, so that layer k is named
# `blocks_k.0` where the loop names it `blocks.k` (the only difference, renamed below).
UNROLLED = MLP + """
model Unrolled {
  input x: float[B, 16]
  repeat 1 { x = linear(x, 16) }
  repeat 1 { x = x + mlp(x) }
  repeat 1 { x = linear(x, 16) }
  repeat 1 { x = x + mlp(x) }
  output y = x
}
"""


def compiled(text: str, model: str | None = None, **hyper):
    torch.manual_seed(0)
    return nexusdsl.compile(nexusdsl.loads(text, "t.nx"), model, **hyper)


def loop_name(name: str) -> str:
    """`blocks_2.0.linear` (the unrolled file's layer 2) -> `blocks.2.linear`."""
    return re.sub(r"^blocks(?:_(\d+))?\.0\.", lambda m: f"blocks.{m.group(1) or 0}.", name)


def error_of(text: str) -> nexusdsl.NexusError:
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "t.nx")
    return info.value


def located(text: str) -> list[tuple[int, int, str]]:
    return [(d.span.line, d.span.col, d.message) for d in error_of(text).diagnostics]


def position(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    """1-based (line, column) of `needle` in `text`, plus `offset` characters."""
    index = text.index(needle) + offset
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


# ----------------------------------------------------------------------------- repeat as i, if


def test_a_varied_repeat_has_the_parameters_and_node_names_of_the_unrolled_file():
    varied, unrolled = compiled(VARIED), compiled(UNROLLED)
    shapes = {k: tuple(v.shape) for k, v in varied.state_dict().items()}
    assert shapes == {loop_name(k): tuple(v.shape) for k, v in unrolled.state_dict().items()}
    nodes = {n.name for n in varied.graph.nodes()}
    assert nodes == {loop_name(n.name) for n in unrolled.graph.nodes()}
    assert "blocks.1.mlp.linear_1.weight" in shapes and "blocks.2.linear.weight" in shapes

    unrolled.load_state_dict({k: varied.state_dict()[loop_name(k)] for k in unrolled.state_dict()})
    x = torch.randn(3, 16)
    torch.testing.assert_close(varied(x), unrolled(x))


def test_a_varied_repeat_computes_what_the_hand_written_layers_compute():
    model = compiled(VARIED)
    w = model.state_dict()
    x = torch.randn(3, 16)
    h = x
    for i in range(4):
        p = f"blocks.{i}."
        if i % 2 == 0:
            h = F.linear(h, w[p + "linear.weight"], w[p + "linear.bias"])
        else:
            inner = F.gelu(F.linear(h, w[p + "mlp.linear.weight"], w[p + "mlp.linear.bias"]))
            h = h + F.linear(inner, w[p + "mlp.linear_1.weight"], w[p + "mlp.linear_1.bias"])
    torch.testing.assert_close(model(x), h)


def test_the_depth_can_be_changed_and_the_pattern_follows_the_index():
    model = compiled(VARIED, depth=5)
    layers = {n.name.split(".")[1]: n.name for n in model.graph.nodes() if n.params}
    assert sorted(layers) == ["0", "1", "2", "3", "4"]
    assert [layers[str(i)].endswith(".linear") for i in range(5)] == [i % 2 == 0 for i in range(5)]


def test_shared_steps_vary_by_index_with_one_set_of_parameters():
    text = """\
model S {
  input x: float[B, 8]
  repeat 3 shared as i {
    x = linear(x, 8)
    if i == 1 { x = relu(x) } else { x = x * 0.5 }
  }
  output y = x
}
"""
    model = compiled(text)
    w = model.state_dict()
    assert sorted(w) == ["blocks.0.linear.bias", "blocks.0.linear.weight"]
    x = torch.randn(2, 8)
    h = x
    for i in range(3):
        h = F.linear(h, w["blocks.0.linear.weight"], w["blocks.0.linear.bias"])
        h = torch.relu(h) if i == 1 else h * 0.5
    torch.testing.assert_close(model(x), h)


def test_names_bound_in_a_branch_are_visible_after_the_if():
    text = """\
model M(wide = true) {
  input x: float[B, 4]
  if wide { h = linear(x, 32) } else { h = linear(x, 8) }
  output y = h
}
"""
    for wide, width in [(True, 32), (False, 8)]:
        graph = nexusdsl.loads(text, "t.nx").elaborate(wide=wide)
        assert graph.type_of(graph.outputs["y"]).sizes == (None, width)
        assert [n.name for n in graph.nodes() if n.params] == ["linear"]  # no scope for a branch


def test_the_index_is_gone_after_the_loop_and_loops_may_reuse_it_and_nest():
    text = """\
model M {
  input x: float[B, 4]
  repeat 2 as i {
    repeat 3 as j { x = linear(x, 4 + i * 3 + j) }
  }
  repeat 2 as i { x = linear(x, 4) }
  output y = x
}
"""
    graph = nexusdsl.loads(text, "t.nx").elaborate()
    widths = [n.attrs["out"] for n in graph.nodes() if n.op == "linear"]
    assert widths == [4 + i * 3 + j for i in range(2) for j in range(3)] + [4, 4]
    after = error_of(text.replace("output y = x", "output y = linear(x, 4 + i)")).render()
    assert "`+` needs numbers or tensors, got the name `i`" in after  # a bare word after the loop


def test_a_block_takes_a_list_and_loops_over_it():
    text = """\
block stack(x: [*, d], widths) {
  repeat len(widths) as i { x = linear(x, widths[i]) |> relu }
  return x
}
model M {
  input x: float[B, 6]
  output y = stack(x, widths = [5, 7, 3])
}
"""
    model = compiled(text)
    w = model.state_dict()
    assert [tuple(w[f"stack.blocks.{i}.linear.weight"].shape) for i in range(3)] == [(5, 6), (7, 5), (3, 7)]
    x = torch.randn(2, 6)
    h = x
    for i in range(3):
        h = torch.relu(F.linear(h, w[f"stack.blocks.{i}.linear.weight"], w[f"stack.blocks.{i}.linear.bias"]))
    torch.testing.assert_close(model(x), h)


def test_a_return_in_a_branch_ends_the_block():
    text = """\
block act(x: [*, d], smooth = false) -> [*, d] {
  if smooth { return gelu(x) }
  return relu(x)
}
model M {
  input x: float[B, 4]
  output y = act(x, smooth = true) + act(x)
}
"""
    model = compiled(text)
    assert [n.op for n in model.graph.nodes() if not n.is_input] == ["gelu", "relu", "add"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), F.gelu(x) + torch.relu(x))


# ----------------------------------------------------------------------------- lists


LISTS = """\
let sizes = [3, 5, 7, 9]
model M(ws = [4, 8, 12]) {
  input x: float[B, 2]
  a = linear(x, ws[0])
  b = linear(x, ws[-1])
  c = linear(x, ws[-3])
  d = linear(x, sizes[len(sizes) - 2])
  e = linear(x, [[1, 2], [6, 11]][1][-1])
  output y = concat(a, b, c, d, e, axis = -1)
}
"""


def test_list_items_are_counted_from_the_start_or_from_the_end_as_in_python():
    ws, sizes, nested = [4, 8, 12], [3, 5, 7, 9], [[1, 2], [6, 11]]
    graph = nexusdsl.loads(LISTS, "t.nx").elaborate()
    widths = [n.attrs["out"] for n in graph.nodes() if n.op == "linear"]
    assert widths == [ws[0], ws[-1], ws[-3], sizes[len(sizes) - 2], nested[1][-1]]


def test_a_list_from_python_and_from_the_command_line(tmp_path):
    ws = [6, 2, 10]
    model = compiled(LISTS, ws=ws)
    assert model(torch.randn(1, 2)).shape[-1] == ws[0] + ws[-1] + ws[-3] + 7 + 11
    path = tmp_path / "lists.nx"
    path.write_text(LISTS)
    result = CliRunner().invoke(app, ["compile", str(path), "--set", "ws=[6, 2,10]", "--device", "meta"])
    assert result.exit_code == 0, result.output
    params = sum((2 + 1) * n for n in (ws[0], ws[-1], ws[-3], 7, 11))  # weight and bias each
    assert f"{params:,}" in result.output
    result = CliRunner().invoke(app, ["compile", str(path), "--set", "ws=[6,,2]"])
    assert result.exit_code == 1 and "error: the list '[6,,2]' has an empty item" in result.output


def test_a_command_line_list_reaches_an_index_error_located_in_the_file(tmp_path):
    path = tmp_path / "lists.nx"
    path.write_text(LISTS)
    result = CliRunner().invoke(app, ["compile", str(path), "--set", "ws=[6, 2]"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line, col = position(LISTS, "ws[-3]", 3)
    assert f"{path}:{line}:{col}: error: index -3 is outside `ws`, a list of length 2" in result.output


# ----------------------------------------------------------------------------- decided values


DECIDE = """\
model M(a = 3, b = 5, ws = [1, 2, 3], kind = global) {
  input x: float[B, 2]
  if COND { w = 2 } else { w = 3 }
  output y = linear(x, w)
}
"""
a, b, ws, kind = 3, 5, [1, 2, 3], "global"
CONDITIONS = [  # the condition as written in .nx, and Python's value of the same expression
    ("a < b", a < b),
    ("a < b < 4", a < b < 4),
    ("b > a > 2", b > a > 2),
    ("a <= 3 <= b", a <= 3 <= b),
    ("a == 3 and b != 5", a == 3 and b != 5),
    ("not a == 3 or b >= 5", not a == 3 or b >= 5),
    ("false or a > 2 and b < 5", False or a > 2 and b < 5),
    ("not (a < b and b < a)", not (a < b and b < a)),
    ("a + 2 == b", a + 2 == b),
    ("a * 2 > b + 0", a * 2 > b + 0),
    ("ws[-1] == ws[len(ws) - 1]", ws[-1] == ws[len(ws) - 1]),
    ("ws == [1, 2, 3]", ws == [1, 2, 3]),
    ("ws != [1, 2]", ws != [1, 2]),
    ("kind == global", kind == "global"),
    ("kind != local", kind != "local"),
    ("a % 2", bool(a % 2)),
    ("a * 0", bool(a * 0)),
    ("not not true", not (not True)),
    ("a > 10 and ws[10] > 0", a > 10 and ws[10] > 0),  # never reads ws[10]
    ("a < 10 or ws[10] > 0", a < 10 or ws[10] > 0),
]


@pytest.mark.parametrize("cond,expected", CONDITIONS, ids=[c for c, _ in CONDITIONS])
def test_conditions_decide_as_python_decides(cond: str, expected: bool):
    graph = nexusdsl.loads(DECIDE.replace("COND", cond), "t.nx").elaborate()
    assert graph.type_of(graph.outputs["y"]).sizes[-1] == (2 if expected else 3)


def test_a_word_from_the_command_line_compares_equal_to_the_name_in_the_file():
    graph = nexusdsl.loads(DECIDE.replace("COND", "kind == local"), "t.nx").elaborate(kind="local")
    assert graph.type_of(graph.outputs["y"]).sizes[-1] == 2


# ----------------------------------------------------------------------------- mistakes


BASE = """\
block mlp(x: [*, d]) -> [*, d] { return linear(x, d) }
model M(a = 3, ws = [4, 8, 12]) {
  input x: float[B, 4]
  STMT
  output y = x
}
"""
MISTAKES = [  # a statement, the text the caret points at (in the statement), the message
    ("h = linear(x, ws[3])", "3]", "index 3 is outside `ws`, a list of length 3 (its indexes: "
     "0 to 2, or -3 to -1 from the end)"),
    ("h = linear(x, ws[-4])", "-4", "index -4 is outside `ws`, a list of length 3"),
    ("h = linear(x, ws[1.5])", "1.5", "a list index must be an integer, got the number 1.5"),
    ("h = linear(x, a[0])", "a[", "`a` is the number 3, not a list: `[ ]` picks an item of a list"),
    ("h = x[0]", "x[", "`[ ]` picks an item of a list while compiling; `x` is a tensor (f32[B, 4])"),
    ("if x { h = x }", "x {", "the condition of `if` is decided while compiling; `x` is a tensor"),
    ("if mean(x, axis = -1) { h = x }", "mean", "the condition of `if` is decided while "
     "compiling; `mean(x, axis = -1)` is a tensor"),
    ('if "yes" { h = x }', '"yes"', 'the condition of `if` must be true or false (or a number), '
     'got the string "yes"'),
    ("if x > 0 { h = x }", "x >", "`>` compares values known while compiling; `x` is a tensor"),
    ("if 0 == sum(x, axis = -1) { h = x }", "sum", "`==` compares values known while compiling"),
    ("if a > 1 and x { h = x }", "x {", "`and` is decided while compiling; `x` is a tensor"),
    ("if not x { h = x }", "x {", "`not` is decided while compiling; `x` is a tensor"),
    ("if a == aa { h = x }", "aa", "unknown name `aa`; did you mean `a`?"),
    ('if a == "3" { h = x }', "==", '`==` compares two values of one kind (numbers, true/false, '
     'names, lists), got the number 3 and the string "3"'),
    ("if ws < 3 { h = x }", "<", "`<` orders numbers, got a list and the number 3"),
    ("h = linear(x, len(a))", "a)", "`len` counts the items of a list, got the number 3"),
    ("h = linear(x, len(x))", "x))", "`len` counts the items of a list while compiling; this is a tensor"),
    ("repeat 2 as a { }", "a {", "`as a` would hide `a`, which already names a hyperparameter here; "
     "choose another name for the iteration index"),
    ("repeat 2 as x { }", "x {", "`as x` would hide `x`, which already names a tensor here"),
    ("repeat 2 as linear { }", "linear", "`as linear` would hide `linear`, which already names the op linear"),
    ("repeat 2 as mlp { }", "mlp", "`as mlp` would hide `mlp`, which already names the block mlp"),
    ("repeat 3 as i { repeat 2 as i { } }", "i { }", "`as i` would hide `i`, which already names a "
     "hyperparameter"),  # reported once, not once per step of the outer loop
    ("repeat 2 shared reversible as i { x = leaky_relu(x) }", "i {", "`as i` cannot vary a reversible repeat"),
    ("repeat 2 shared as i { h = linear(x, 4 + i) }", "linear", "`repeat ... shared` runs every step "
     "with the parameters of the first, but `blocks.1.linear` needs weight [5, 4], bias [5] where "
     "`blocks.0.linear` has weight [4, 4], bias [4]"),
    ("repeat 2 shared as i { if i == 1 { h = linear(x, 4) } }", "linear", "`blocks.1.linear` would use "
     "those of `blocks.0.linear`, which the first step did not make"),
    ("repeat 5 as i { h = linear(x, ws[i]) }", "i]", "index 3 is outside `ws`"),  # once, not for 4 too
    ("if a > 5 { h = x }\n  y2 = linear(h, 2)", "h, 2", "unknown name `h`"),
]


@pytest.mark.parametrize("stmt,caret,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_every_mistake_is_located(stmt: str, caret: str, message: str):
    text = BASE.replace("STMT", stmt)
    index = text.index(caret, text.index(stmt))  # the caret's text, looked for in the statement
    line, col = text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1
    found = located(text)
    assert len(found) == 1, found
    assert found[0][:2] == (line, col), (found, caret)
    assert message in found[0][2], found[0][2]


def test_a_tensor_named_in_a_condition_notes_where_it_was_made():
    (d,) = error_of(BASE.replace("STMT", "if x { h = x }")).diagnostics
    assert [(n.message, n.span.line) for n in d.notes] == [("x was made", 3)]


def test_a_condition_that_fails_poisons_what_either_branch_binds():
    text = BASE.replace("STMT", "if x { h = linear(x, 4) } else { g = x }\n  z = h + g")
    assert len(error_of(text).diagnostics) == 1  # `z = h + g` is not reported again


def test_a_mistake_in_a_branch_not_taken_is_reported_once():
    text = """\
model M(depth = 2) {
  input x: float[B, 4]
  repeat depth as i {
    if i > 5 {
      x = lienar(x, 4)
    } else if i == 0 {
      x = gelu(x, approximate = tanh)
    } else {
      x = relu(x)
    }
  }
  output y = x
}
"""
    # step 0 takes the gelu branch (reported while elaborating), step 1 does not (not again);
    # no step takes the lienar branch (read as written once the model is elaborated)
    assert located(text) == [
        (*position(text, "approximate"), "`gelu` has no argument `approximate` (it takes x, "
                                         "approx); did you mean `approx`?"),
        (*position(text, "lienar("), "unknown function `lienar`; did you mean `linear`?"),
    ]


def test_syntax_mistakes_of_if_read_well():
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads("model M {\n  if true {\n  }\n  else { }\n}\n", "t.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (4, 3)
    assert d.message == "syntax error: `else` goes on the line of the `}` that closes the `if` body: `} else {`"
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads("model M(a = 1) {\n  if a = 1 { }\n}\n", "t.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (2, 8)
    assert d.message == "syntax error: `=` binds a name; to compare two values, write `==`"


def test_no_file_uses_the_new_reserved_words_as_names():
    """`if else and or not` became reserved: every `.nx` file and doc block still parses but
    the diagnostics golden that is a syntax error on purpose."""
    from tests.tools.test_fmt import FILES, _doc_blocks, _parses

    broken = [name for name, text in FILES + _doc_blocks() if not _parses(text, name)]
    assert broken == ["tests/golden/diagnostics/syntax.nx"]


# ----------------------------------------------------------------------------- tools


def test_formatting_of_the_new_syntax_is_canonical_and_idempotent():
    messy = ("model M(depth=2,ws=[1,2]) {\n  input x: float[B,8]\n  repeat depth shared  as i{\n"
             "    if i%2==0 and not ws [i]>1 or 1<i<=3{\n      x=linear(x,8)\n"
             "    }else if i==1{x=x} else{\n      y = not-1 != ws[-1]\n    }\n  }\n  output y=x\n}\n")
    expected = ("model M(depth = 2, ws = [1, 2]) {\n  input x: float[B, 8]\n  repeat depth shared as i {\n"
                "    if i % 2 == 0 and not ws[i] > 1 or 1 < i <= 3 {\n      x = linear(x, 8)\n"
                "    } else if i == 1 { x = x } else {\n      y = not -1 != ws[-1]\n    }\n  }\n"
                "  output y = x\n}\n")
    assert format_text(messy) == expected
    assert format_text(expected) == expected
    assert nexusdsl.loads(messy, "t.nx").elaborate().content_hash() == \
        nexusdsl.loads(expected, "t.nx").elaborate().content_hash()


def test_hover_shows_the_values_per_step_and_what_the_index_counts():
    result = analyze(VARIED, "t.nx")
    assert hover(result, *position(VARIED, "i % 2")) == "`i` : **`0` | `1` | `2` | `3`**"
    assert hover(result, *position(VARIED, "== 0")) == "`i % 2 == 0` : **`true` | `false`**"
    assert hover(result, *position(VARIED, "as i", 3)) == \
        "`i`: the index of each step of this `repeat`, from `0` to `3`"
    assert (definition(result, *position(VARIED, "i % 2")).line,
            definition(result, *position(VARIED, "i % 2")).col) == position(VARIED, "as i", 3)


def test_completion_offers_the_loop_index_inside_the_loop_only():
    result = analyze(VARIED, "t.nx")
    inside = [c.label for c in completions(result, VARIED, *position(VARIED, "x + mlp(x)"))]
    assert "i" in inside and "depth" in inside and inside.index("i") < inside.index("linear")
    assert [c.kind for c in completions(result, VARIED, *position(VARIED, "x + mlp(x)"))
            if c.label == "len"] == ["function"]
    outside = [c.label for c in completions(result, VARIED, *position(VARIED, "output y = x", 11))]
    assert "i" not in outside and "depth" in outside
