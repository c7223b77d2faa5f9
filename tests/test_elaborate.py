"""Elaboration semantics: names, imports, hyperparameters, blocks, repeat, partial application."""

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params

HEADER = "modality text = bytes(code = 0)\n"


def graph_of(text, **hyper):
    return nexusdsl.loads(text, "t.nx").elaborate(**hyper)


def error_of(text):
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "t.nx")
    return info.value


def test_let_arithmetic_and_use_before_definition():
    g = graph_of("model M { input x: float[B, 4]\n output y = linear(x, width) }\n"
                 "let width = base * 3 // 2 + 2 ** 2\nlet base = 8")
    assert g.type_of(g.outputs["y"]).axes[-1].size == 16


def test_let_cycle_is_an_error():
    err = error_of("let a = b + 1\nlet b = a\nmodel M { input x: float[B, 4]\n output y = linear(x, a) }")
    assert "defined in terms of itself" in err.render()


def test_block_axis_names_bind_and_are_usable_as_integers():
    g = graph_of("block widen(x: [*, d], by = 2) -> [*, w] { return linear(x, d * by) }\n"
                 "model M { input x: float[B, 5]\n output y = widen(x, by = 3) }")
    assert g.type_of(g.outputs["y"]).sizes == (None, 15)


def test_declared_return_shape_is_checked():
    err = error_of("block f(x: [*, d]) -> [*, d] { return linear(x, d + 1) }\n"
                   "model M { input x: float[B, 5]\n output y = f(x) }")
    assert "the returned tensor does not match `-> [*, d]`: axis d is 5 here but the tensor has 6" \
        in err.render()


def test_new_axes_are_named_after_plain_hyperparameters():
    g = graph_of(HEADER + "model M(dim = 8) { input t: text[B, T]\n x = embed(t, dim)\n"
                 " output y = linear(x, dim * 2) }")
    embed = g.by_name("embed")
    assert [a.name for a in embed.type.axes] == ["B", "T", "dim"]
    assert g.type_of(g.outputs["y"]).axes[-1].name is None


def test_input_axes_named_like_hyperparameters_take_their_size():
    g = graph_of("model M(D = 12) { input x: float[B, D]\n output y = linear(x, 3) }")
    assert g.inputs()[0].type.sizes == (None, 12)


def test_hyperparameter_overrides():
    g = graph_of(HEADER + "model M(dim = 8) { input t: text[B, T]\n output y = embed(t, dim) }", dim=32)
    assert g.type_of(g.outputs["y"]).axes[-1].size == 32


def test_naming_is_deterministic_and_scoped():
    g = graph_of("block f(x: [*, d]) { return linear(linear(x, d), d) }\n"
                 "model M { input x: float[B, 4]\n y = f(x)\n z = f(y) as second\n"
                 " repeat 2 { y = linear(y, 4) }\n output o = y + z }")
    names = [n.name for n in g.nodes() if n.op != "input"]
    assert names == ["f.linear", "f.linear_1", "second.linear", "second.linear_1",
                     "blocks.0.linear", "blocks.1.linear", "add"]


def test_repeat_shared_reuses_parameters():
    text = "model M(n = 3) { input x: float[B, 8]\n repeat n shared { x = linear(x, 8) |> relu }\n output y = x }"
    g = graph_of(text)
    linears = [n for n in g.nodes() if n.op == "linear"]
    assert [n.shares for n in linears] == [None, "blocks.0.linear", "blocks.0.linear"]
    assert count_params(g)["total"] == 8 * 8 + 8
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    x = torch.randn(2, 8)
    w, b = model.get_parameter("blocks.0.linear.weight"), model.get_parameter("blocks.0.linear.bias")
    expected = x
    for _ in range(3):
        expected = torch.relu(expected @ w.T + b)
    torch.testing.assert_close(model(x), expected)


def test_partial_application_and_pipes():
    text = ("model M { input x: float[B, 8]\n act = leaky_relu(alpha = 0.5)\n"
            " output y = x |> linear(4) |> act }")
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    x = torch.randn(3, 8)
    lin = model.get_submodule("linear")
    torch.testing.assert_close(model(x), torch.nn.functional.leaky_relu(x @ lin.weight.T + lin.bias, 0.5))


def test_blocks_are_values():
    g = graph_of("block twice(x: [*, d], f) { return f(f(x)) }\n"
                 "model M { input x: float[B, 8]\n output y = twice(x, f = relu) }")
    assert [n.op for n in g.nodes()] == ["input", "relu", "relu"]


def test_imports_resolve_qualified_and_unqualified(tmp_path):
    (tmp_path / "lib.nx").write_text("block double(x: [*, d]) { return x + x }\nlet width = 6")
    main = tmp_path / "main.nx"
    main.write_text('import "lib.nx" as lib\nimport std.nn\n'
                    "model M { input x: float[B, 6]\n y = lib.double(x)\n output z = mlp(double(y), mult = 1) }")
    g = nexusdsl.load(main).elaborate()
    assert [n.op for n in g.nodes()][:2] == ["input", "add"]


def test_ambiguous_import_is_an_error(tmp_path):
    (tmp_path / "a.nx").write_text("block f(x: [*, d]) { return x }")
    (tmp_path / "b.nx").write_text("block f(x: [*, d]) { return x }")
    main = tmp_path / "main.nx"
    main.write_text('import "a.nx"\nimport "b.nx"\nmodel M { input x: float[B, 6]\n output y = f(x) }')
    with pytest.raises(nexusdsl.NexusError, match="`f` is ambiguous: it could be `a.f` and `b.f`"):
        nexusdsl.load(main)


def test_several_outputs_give_a_dict_and_inputs_by_name():
    text = "model M { input a: float[B, 4]\n input b: float[B, 4]\n output s = a + b\n output p = a * b }"
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    out = model(b=b, a=a)
    assert set(out) == {"s", "p"}
    torch.testing.assert_close(out["s"], a + b)
    torch.testing.assert_close(out["p"], a * b)
    assert model.input_names == ["a", "b"]


def test_multiple_assignment_from_split():
    g = graph_of("model M { input x: float[B, 8]\n a, b = split(x, 2)\n output y = a * b }")
    assert g.type_of(g.outputs["y"]).sizes == (None, 4)


def test_several_outputs_from_one_call():
    text = ("model M { input x: float[B, 8]\n output lo, hi = split(x, [3, 5])\n"
            "  output both = concat(hi, lo, axis = -1) }")
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    x = torch.randn(2, 8)
    out = model(x)
    assert list(out) == ["lo", "hi", "both"]
    torch.testing.assert_close(out["lo"], x[:, :3])
    torch.testing.assert_close(out["hi"], x[:, 3:])
    torch.testing.assert_close(out["both"], torch.cat([x[:, 3:], x[:, :3]], -1))


def test_several_outputs_need_as_many_values():
    text = "model M { input x: float[B, 8]\n output a, b, c = split(x, 2) }"
    with pytest.raises(nexusdsl.NexusError) as caught:
        nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    assert "t.nx:2:2: error: 3 names on the left but the right side gives 2 values" in \
        caught.value.render()


def test_models_choose_by_name():
    program = nexusdsl.loads("model A { input x: float[B, 2]\n output y = x }\n"
                             "model B { input x: float[B, 3]\n output y = x }", "t.nx")
    assert program.models == ["A", "B"]
    assert program.elaborate("B").inputs()[0].type.sizes == (None, 3)
    with pytest.raises(nexusdsl.NexusError, match="choose one with --model"):
        program.elaborate()


def test_duplicate_alias_is_an_error():
    err = error_of("model M { input x: float[B, 2]\n a = relu(x) as r\n output y = relu(a) as r }")
    assert "the name `r` is already used" in err.render()


def test_modal_code_out_of_range():
    err = error_of("modality t = bytes(code = 300)\nmodel M { input x: t[B, T]\n output y = x }")
    assert "code = N" in err.render()


def test_modal_codes_are_unique():
    err = error_of("modality a = bytes(code = 1)\nmodality b = ids(vocab = 10, code = 1)\n"
                   "model M { input x: a[B, T]\n input y: b[B, T]\n output z = x }")
    assert "both have code 1" in err.render()


def test_a_standard_block_without_its_import_names_the_import():
    text = "model M { input x: float[B, T, 8]\n output y = x + mlp(x, mult = 2) }"
    with pytest.raises(nexusdsl.NexusError) as caught:
        nexusdsl.loads(text, "t.nx")
    assert "t.nx:2:17: error: unknown function `mlp`; `mlp` is a block of std.nn: add " \
        "`import std.nn`" in caught.value.render()


def test_axis_arguments_name_fixed_size_axes_and_hyperparameter_axes():
    # T=16 binds T to 16 and `embed(t, dim)` names an axis dim: `axis = T` / `axis = dim`
    # still mean those axes, in every op that takes an axis.
    text = ("modality text = bytes(code = 0)\nmodel M(dim = 6) {\n  input x: float[B, T=5, d=4]\n"
            "  input t: text[B, S]\n  e = embed(t, dim)\n  p, q = split(x, [1, 3], axis = d)\n"
            "  output a = mean(x, axis = T)\n  output b = sum(x, axis = d)\n"
            "  output c = softmax(e, axis = dim)\n  output j = concat(x, x, axis = T)\n"
            "  output q = q\n}\n")
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    x, t = torch.randn(2, 5, 4), torch.randint(0, 256, (2, 3))
    out = model(x, t)
    torch.testing.assert_close(out["a"], x.mean(1))
    torch.testing.assert_close(out["b"], x.sum(2))
    torch.testing.assert_close(out["c"], torch.softmax(model.state_dict()["embed.weight"][t], -1))
    torch.testing.assert_close(out["j"], torch.cat([x, x], 1))
    torch.testing.assert_close(out["q"], x[..., 1:])


def test_a_hyperparameter_holding_a_position_still_works_as_a_position():
    text = ("block f(x: [B, T, d], ax = 1) {\n  return mean(x, axis = ax)\n}\n"
            "model M {\n  input x: float[B, T=5, d=4]\n  output y = f(x)\n}\n")
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(nexusdsl.compile(nexusdsl.loads(text, "t.nx"))(x), x.mean(1))


def test_tensors_broadcast_by_axis_name():
    text = ("model M {\n  input x: float[B, T=5, d=4]\n  input g: float[B, d=4]\n"
            "  output y = x + mean(x, axis = T)\n  output z = g * x\n"
            "  output w = x - mean(x, axis = d)\n  output v = x + x\n}\n")
    model = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    x, g = torch.randn(2, 5, 4), torch.randn(2, 4)
    out = model(x, g)
    torch.testing.assert_close(out["y"], x + x.mean(1, keepdim=True))
    torch.testing.assert_close(out["z"], g[:, None] * x)
    torch.testing.assert_close(out["w"], x - x.mean(2, keepdim=True))
    assert model.graph.node(model.graph.outputs["v"].node).attrs == {}  # plain adds print as before


def test_broadcast_names_that_cannot_align_are_a_shape_mismatch():
    text = "model M {\n  input x: float[B, T=5, d=4]\n  input g: float[B, e=3]\n  output y = x + g\n}\n"
    with pytest.raises(nexusdsl.NexusError) as caught:
        nexusdsl.loads(text, "t.nx")
    assert "t.nx:4:16: error: shape mismatch in `x + g`" in caught.value.render()


def test_modal_codes_are_unique_even_among_unused_modalities():
    text = ("modality text = bytes(code = 0)\nmodality img = patches(size = 4, channels = 3, "
            "code = 0)\nmodel M {\n  input t: text[B, T]\n  output y = embed(t, 8)\n}\n")
    with pytest.raises(nexusdsl.NexusError) as caught:
        nexusdsl.loads(text, "t.nx")
    assert "t.nx:2:1: error: modalities text and img both have code 0; modal codes must be " \
        "unique" in caught.value.render()


# ---------------------------------------------------------------------------- names torch uses


def test_the_reserved_names_are_every_attribute_torch_gives_a_compiled_model():
    """Asked of a fresh interpreter: libraries imported by other tests add attributes to
    nn.Module at run time (lowering refuses those names with a located error)."""
    import json
    import subprocess
    import sys

    from nexusdsl.elaborate.frame import TORCH_ATTRIBUTES

    probe = ("import json, re, torch.fx as fx\nfrom torch import nn\n"
             "gm = fx.GraphModule(nn.Module(), fx.Graph())\n"
             "live = set(dir(fx.GraphModule)) | set(vars(gm)) | set(dir(nn.Module))"
             " | set(vars(nn.Module()))\n"
             "print(json.dumps(sorted(n for n in live"
             " if re.fullmatch(r'[A-Za-z][A-Za-z_0-9]*', n))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    public = set(json.loads(done.stdout))
    assert public <= TORCH_ATTRIBUTES, sorted(public - TORCH_ATTRIBUTES)


def test_blocks_named_like_torch_methods_compile_and_compute():
    src = """nexus 0.1
block apply(x: [*, d]) -> [*, d] { return linear(x, d) }
block forward(x: [*, d]) -> [*, d] { return apply(x) }
model M {
  input x: float[B, 4]
  output y = forward(apply(x))
}
"""
    m = nexusdsl.compile(nexusdsl.loads(src, "t.nx"))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["apply_1.linear.weight", "apply_1.linear.bias",
                     "forward_1.apply_1.linear.weight", "forward_1.apply_1.linear.bias"]
    p = dict(m.named_parameters())
    x = torch.randn(3, 4)
    h = x @ p["apply_1.linear.weight"].T + p["apply_1.linear.bias"]
    want = h @ p["forward_1.apply_1.linear.weight"].T + p["forward_1.apply_1.linear.bias"]
    torch.testing.assert_close(m(x), want)


def test_the_models_own_method_names_are_renamed_only_at_the_top_level():
    """`generate` is a method of the compiled model, so a top-level block call of that name
    is numbered; nested under another node it sits on a plain container and keeps its name."""
    src = """nexus 0.1
block generate(x: [*, d]) -> [*, d] { return linear(x, d) }
block outer(x: [*, d]) -> [*, d] { return generate(x) }
model M {
  input x: float[B, 4]
  output y = outer(generate(x))
}
"""
    m = nexusdsl.compile(nexusdsl.loads(src, "t.nx"))
    names = [n for n, _ in m.named_parameters() if n.endswith("weight")]
    assert names == ["generate_1.linear.weight", "outer.generate.linear.weight"]
    assert callable(m.generate) and m(torch.randn(2, 4)).shape == (2, 4)


def test_an_as_name_torch_uses_is_a_located_error():
    src = "nexus 0.1\nmodel M {\n  input x: float[B, 4]\n  output y = linear(x, 4) as to\n}\n"
    with pytest.raises(nexusdsl.NexusError, match=r"t.nx:4:14: error: `to` cannot name a node"):
        nexusdsl.loads(src, "t.nx").elaborate()


def test_inputs_named_like_python_keywords_work_by_position_and_by_name():
    src = """nexus 0.1
model M {
  input lambda: float[B, 4]
  input None: float[B, 4]
  output y = lambda - None
}
"""
    m = nexusdsl.compile(nexusdsl.loads(src, "t.nx"))
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(m(a, b), a - b)
    torch.testing.assert_close(m(**{"None": b, "lambda": a}), a - b)
    with pytest.raises(TypeError, match="no input named c"):
        m(a, c=b)


def test_a_module_named_like_a_builtin_leaves_the_builtin_callable(tmp_path):
    """docs/language.md: own definitions, builtins, then imports. `import std.hyena` names the
    module `hyena`; `hyena(...)` is still the op and `hyena.hyena_block` the module's block."""
    src = """nexus 0.1
import std.hyena
model M {
  input x: float[B, 12, 8]
  a = hyena(x, order = 1, filter = 4)
  output y = hyena.hyena_block(a, order = 1, filter = 4)
}
"""
    graph = nexusdsl.loads(src, "t.nx").elaborate()
    nodes = [(node.name, node.op) for node in graph.nodes() if node.op != "input"]
    assert nodes[0] == ("hyena", "hyena")
    assert ("hyena_block.hyena", "hyena") in nodes[1:]
    assert all(name.startswith("hyena_block.") for name, _ in nodes[1:])


@pytest.mark.parametrize("router,message", [
    ("topk", "t.nx:6:17: error: `moe`: argument `router` should be a call with its settings, "
             "e.g. `name(...)`, got `topk` without its settings (write `topk(...)`)"),
    ("top2(k = 1)", "t.nx:6:26: error: unknown function `top2`; did you mean `topk`?"),
])
def test_router_mistakes_say_what_to_write(router, message):
    src = f"""nexus 0.1
import std.nn
model M {{
  input x: float[B, T, 8]
  experts e = 2 of mlp(mult = 2)
  y = moe(x, e, router = {router})
  output z = y
}}
"""
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(src, "t.nx").elaborate()
    assert str(info.value).splitlines()[0] == message


def test_an_unknown_operand_after_an_earlier_mistake_is_still_reported():
    src = """nexus 0.1
model M {
  input x: float[B, T, 8]
  a = linear(x, 8, bais = true)
  output y = a + undefined_thing
}
"""
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(src, "t.nx").elaborate()
    found = [(d.span.line, d.message.split(";")[0]) for d in info.value.diagnostics]
    assert found[0][0] == 4 and "no argument `bais`" in found[0][1]
    assert found[1:] == [(5, "unknown name `undefined_thing`")]  # nothing about `a` itself


def test_every_misspelt_argument_of_a_call_is_reported():
    src = ("nexus 0.1\nmodel M {\n  input x: float[B, T, 8]\n"
           "  output y = attention(x, head = 2, casual = true)\n}\n")
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(src, "t.nx").elaborate()
    found = [(d.span.col, d.message.split(" (")[0]) for d in info.value.diagnostics]
    assert found == [(27, "`attention` has no argument `head`"),
                     (37, "`attention` has no argument `casual`")]


def test_a_block_no_model_calls_is_still_checked_for_names_and_keywords():
    src = """nexus 0.1
import std.nn
block unused(x: [*, d], scale = 2, act = gelu) -> [*, d] {
  h = lienar(x, d * scale)
  g = act(linear(h, d, bais = true))
  return mlp(g, mult = 2) + x
}
model M {
  input x: float[B, 4]
  output y = linear(x, 4)
}
"""
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(src, "t.nx")
    found = [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics]
    assert found == [(4, 7, "unknown function `lienar`; did you mean `linear`?"),
                     (5, 24, "`linear` has no argument `bais` (it takes x, out, bias); "
                             "did you mean `bias`?")]


def test_a_block_default_can_use_an_axis_of_its_inputs():
    """docs/language.md, "Blocks and calls": axis names bind from the argument and are
    integers in the body; a hyperparameter's default may use them too (evaluated once the
    shapes bind)."""
    src = """nexus 0.1
block widen(x: [*, d], out = d * 2) -> [*, out] { return linear(x, out) }
model M {
  input x: float[B, 4]
  output y = widen(x)
  output z = widen(x, out = 3)
}
"""
    graph = nexusdsl.loads(src, "t.nx").elaborate()
    types = [str(graph.type_of(graph.outputs[n])) for n in ("y", "z")]
    assert types == ["f32[B, out=8]", "f32[B, out=3]"]


def test_an_output_given_several_tensors_says_how_to_name_them():
    src = """nexus 0.1
modality text = bytes(code = 0)
modality image = patches(size = 4, channels = 1, code = 1)
model M {
  input t: text[B, T]
  input p: image[B, 1, 8, 8]
  s = concat(tag(embed(t, 16) as tok), tag(embed(p, 16)), axis = 1)
  y = route(s) { text -> unembed(tie = tok); image -> linear(8) }
  output logits = y
}
"""
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(src, "t.nx").elaborate()
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (9, 3)
    assert d.message.startswith("output `logits` must be one tensor, but its value holds 2 (")
    assert d.message.endswith("name each: `output logits_0, logits_1 = ...`")
    assert [n.span.line for n in d.notes] == [8, 8]
    fixed = src.replace("output logits = y", "output words, pixels = y")
    graph = nexusdsl.loads(fixed, "t.nx").elaborate()
    assert list(graph.outputs) == ["words", "pixels"]


def test_a_block_calling_itself_is_one_error_with_a_counted_note():
    err = error_of("block f(x: [*, d]) -> [*, d] { return f(x) }\n"
                   "model M { input x: float[B, 4]\n output y = f(x) }")
    (d,) = err.diagnostics
    assert d.message == "block f calls itself (or nests more than 64 deep)"
    assert [n.message for n in d.notes] == ["in block f called (63 times in a row)",
                                            "in block f called"]


@pytest.mark.parametrize("kind", ["bytes", "ids", "patches", "frames", "tubelets", "signal"])
def test_every_modality_kind_is_a_configuration_function(kind):
    from nexusdsl.elaborate.modality import KINDS

    required, _ = KINDS[kind]
    settings = ", ".join(["code = 3", *(f"{k} = 4" for k in required)])
    program = nexusdsl.loads(f"modality m = {kind}({settings})\n"
                             "model M { input x: m[B, T]\n output y = x }", "t.nx")
    assert program.elaborate().inputs()[0].type.modality == "m"
