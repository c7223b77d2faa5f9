"""The grammar parses every statement form of docs/language.md, and known mistakes read well."""

import pytest

from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.lang.parser import KNOWN_MISTAKES, parse

EVERY_FORM = '''
nexus 0.1
import std.nn
import "lib/agents.nx" as agents
let width = 256
modality text  = bytes(code = 0)
modality image = patches(size = 16, channels = 3, code = 1)
modality audio = frames(window = 400, hop = 160, code = 2)
modality video = tubelets(size = 16, frames = 2, channels = 3, code = 3)
modality wave  = signal(channels = 1, code = 4)
modality words = ids(vocab = 50257, code = 5)

block mlp(x: [*, d], mult = 4, act = gelu) -> [*, d] {
  h = linear(x, d * mult) |> act
  return linear(h, d)
}

model TinyLM(dim = 128, depth = 4, heads = 4) {
  input tokens: text[B, T]
  input img: image[B, 3, 224, 224]; input f: float[B, T=1024, 16]
  x = embed(tokens, dim) as tok
  repeat depth {
    x = x + attention(rmsnorm(x), heads = heads, causal = true)
  }
  repeat 4 shared { x = x |> mlp(mult = 2) }
  repeat 4 shared reversible { x = leaky_relu(x) }
  experts ffn = 16 of mlp(mult = 4)
  experts pre = [pretrained("path/to/hf_model_dir", module = "encoder.layer.3"),
                 mlp(mult = 2)]
  y = moe(x, ffn, router = topk(k = 4), balance = 0.01, capacity = 1.25)
  y = moe(x, pre, router = knn(k = 1, coords = 8))
  y = route(s) { text -> unembed(tie = tok); image -> generate(image) }
  g = layout(x, "b (i j k) d -> b i j k d", i = 16, j = 16)
  y = mix(g, axes = [i, j, k], wiring = axial, share = axis)
  y = mix(g, axes = [i, j], wiring = random(density = 0.1, seed = 0))
  y = swarm(x, agents, topology = ring(2), rounds = 3, combine = mean)
  a, b = split(x, 2)
  z = -1_000 + 3e-4 * 2 ** 3 // 2 % 5 / 7
  output logits = unembed(rmsnorm(x), tie = tok)
}

train TinyLM {
  data = text("corpus.txt")
  objective = next_token
  optimizer = adamw(lr = 3e-4, weight_decay = 0.1)
  batch = 32; context = 256; steps = 1000
  freeze = [tok]
  prefix = 16
}
'''


def test_every_statement_form_parses():
    program = parse(EVERY_FORM, "every.nx")
    kinds = [type(i).__name__ for i in program.items]
    assert program.version == "0.1"
    assert kinds == ["Import", "Import", "Let"] + ["Modality"] * 6 + ["Block", "Model", "Train"]
    model = program.items[10]
    body_kinds = {type(s).__name__ for s in model.body}
    assert body_kinds == {"Input", "Assign", "Repeat", "Experts", "Output"}
    repeats = [s for s in model.body if isinstance(s, ast.Repeat)]
    assert [(r.shared, r.reversible) for r in repeats] == [(False, False), (True, False), (True, True)]


def test_as_binds_to_the_call_before_it():
    program = parse("model M { x = a + attention(h) as attn }", "m.nx")
    value = program.items[0].body[0].value
    assert isinstance(value, ast.BinOp) and value.right.alias == "attn"


def test_pipe_prepends_the_value():
    program = parse("model M { y = x |> mlp(mult = 2) |> gelu }", "m.nx")
    value = program.items[0].body[0].value
    assert isinstance(value, ast.Pipe) and value.func.id == "gelu"
    inner = value.value
    assert isinstance(inner, ast.Call) and inner.args[0].id == "x" and inner.piped


def test_arithmetic_precedence():
    program = parse("let a = 1 + 2 * 3 ** 2", "m.nx")
    value = program.items[0].value
    assert value.op == "+" and value.right.op == "*" and value.right.right.op == "**"


def test_newlines_inside_brackets_are_ignored():
    program = parse("let a = [1,\n 2,\n 3]\nlet b = f(\n x = 1\n)", "m.nx")
    assert len(program.items) == 2


def test_number_literals():
    program = parse("let a = 1_000\nlet b = 3e-4\nlet c = 0.5", "m.nx")
    assert [i.value.value for i in program.items] == [1000, 3e-4, 0.5]


def test_spans_point_at_the_source():
    program = parse("\nmodel M {\n  x = foo(1)\n}", "m.nx")
    call = program.items[0].body[0].value
    assert (call.span.line, call.span.col) == (3, 7)


@pytest.mark.parametrize("message,examples", list(KNOWN_MISTAKES.items()))
def test_known_mistakes_have_friendly_messages(message, examples):
    for text in examples:
        with pytest.raises(NexusError) as info:
            parse(text, "bad.nx")
        assert message in info.value.render(), info.value.render()


def test_keywords_are_reserved():
    with pytest.raises(NexusError):
        parse("let model = 3", "bad.nx")


@pytest.mark.parametrize("source,line,col,char", [
    ("# a comment\nmodel M { input x: float[B, 4]; output y = linear(x, 4) @ x }\n", 2, 57, "@"),
    ("# café\nlet größe = 3\n", 2, 7, "ö"),
    ("# c\nlet t = 'x'\n", 2, 9, "'"),
])
def test_an_unexpected_character_is_the_one_under_the_caret(source, line, col, char):
    with pytest.raises(NexusError) as info:
        parse(source, "t.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (line, col)
    assert d.message == f"syntax error: unexpected character `{char}`"


@pytest.mark.parametrize("source,word", [
    ("model M {\n  input x: float[B, 4]\n  shared = linear(x, 4)\n}\n", "shared"),
    ("let model = 3\n", "model"),
])
def test_a_reserved_word_used_as_a_name_says_it_is_reserved(source, word):
    with pytest.raises(NexusError) as info:
        parse(source, "t.nx")
    (d,) = info.value.diagnostics
    assert d.message.endswith(f"(`{word}` is a reserved word: it cannot name anything)")


def test_an_unclosed_string_and_an_unknown_version_say_so():
    with pytest.raises(NexusError) as info:
        parse('let name = "unterminated\nlet b = 2\n', "t.nx")
    assert info.value.diagnostics[0].message.startswith("syntax error: this string is never closed")
    with pytest.raises(NexusError) as info:
        parse("nexus 0.2\nlet a = 1\n", "t.nx")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (1, 1)
    assert d.message.startswith("this is nexus 0.1; a file written for nexus 0.2 cannot be read")
    assert parse("nexus 0.1\nlet a = 1\n", "t.nx").version == "0.1"


# ----------------------------------------------------------------------------- per-layer variation


def _value(source: str):
    return parse(source, "m.nx").items[0].value


def test_boolean_operators_and_comparisons_bind_as_in_python():
    # Python reads `a or b and not c == d + 1` as `a or (b and (not (c == (d + 1))))`
    value = _value("let v = a or b and not c == d + 1")
    assert isinstance(value, ast.BoolOp) and value.op == "or" and value.left.id == "a"
    right = value.right
    assert isinstance(right, ast.BoolOp) and right.op == "and" and right.left.id == "b"
    negated = right.right
    assert isinstance(negated, ast.UnaryOp) and negated.op == "not"
    compare = negated.operand
    assert isinstance(compare, ast.Compare) and compare.ops == ("==",)
    assert compare.operands[0].id == "c" and compare.operands[1].op == "+"


def test_comparisons_chain_and_the_pipe_stays_loosest():
    chain = _value("let v = 1 < x <= 3 != y")
    assert chain.ops == ("<", "<=", "!=") and [o.span.col for o in chain.operands] == [9, 13, 18, 23]
    assert [s.col for s in chain.op_spans] == [11, 15, 20]
    piped = _value("let v = a == b |> f")
    assert isinstance(piped, ast.Pipe) and isinstance(piped.value, ast.Compare)
    assert _value("let v = -a < b").operands[0].op == "-"


def test_indexing_binds_to_the_value_before_it():
    value = _value("let v = f(x)[0][i % 2] + ws[-1]")
    assert isinstance(value, ast.BinOp) and value.op == "+"
    outer = value.left
    assert isinstance(outer, ast.Index) and outer.index.op == "%"
    assert isinstance(outer.value, ast.Index) and isinstance(outer.value.value, ast.Call)
    assert isinstance(value.right.index, ast.UnaryOp)


def test_if_else_if_else_nests_in_orelse():
    program = parse("model M {\n  if a { x = 1 } else if b { x = 2 } else {\n    x = 3\n  }\n}\n", "m.nx")
    (stmt,) = program.items[0].body
    assert isinstance(stmt, ast.If) and stmt.cond.id == "a" and len(stmt.body) == 1
    (inner,) = stmt.orelse
    assert isinstance(inner, ast.If) and inner.cond.id == "b"
    assert [s.value.value for s in inner.orelse] == [3]
    assert parse("block f() { if a {} }", "m.nx").items[0].body[0].orelse == ()


@pytest.mark.parametrize("header,count,var,shared", [
    ("repeat depth as i", "depth", "i", False),
    ("repeat depth shared as layer", "depth", "layer", True),
    ("repeat len(xs) as i", "len", "i", False),  # `as` went to the call: taken back
    ("repeat n + len(xs) as k", "+", "k", False),
])
def test_repeat_names_its_index(header, count, var, shared):
    source = f"model M {{\n  {header} {{ x = x }}\n}}\n"
    (stmt,) = parse(source, "m.nx").items[0].body
    assert stmt.var == var and stmt.shared == shared
    kind = {ast.Call: lambda c: c.func.id, ast.Name: lambda c: c.id, ast.BinOp: lambda c: c.op}
    assert kind[type(stmt.count)](stmt.count) == count
    assert all(n.alias is None for n in ast.walk(stmt.count) if isinstance(n, ast.Call))
    column = source.index(f"as {var}") - source.index("\n") + 3
    assert (stmt.var_span.line, stmt.var_span.col, stmt.var_span.end_col) == (2, column, column + len(var))
    end = source.index(" shared" if shared else " as") - source.index("\n")
    assert stmt.count.span.end_col == end  # the count's span ends where the count does


@pytest.mark.parametrize("word", ["if", "else", "and", "or", "not"])
def test_the_words_of_conditions_are_reserved(word):
    with pytest.raises(NexusError) as info:
        parse(f"let {word} = 3\n", "t.nx")
    (d,) = info.value.diagnostics
    assert d.message.endswith(f"(`{word}` is a reserved word: it cannot name anything)")
