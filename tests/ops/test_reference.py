"""docs/ops.md is generated from the registry and up to date, lists every public op, and the
parameter shapes it shows (each op's `parameters` formulas) are the shapes the ops make."""

from __future__ import annotations

import re

import pytest

import nexusdsl
from nexusdsl.ops import REGISTRY, Op
from nexusdsl.ops.base import attrs_of
from nexusdsl.ops.reference import reference, split_shape
from tests.conftest import ROOT

DOC = ROOT / "docs" / "ops.md"
HOW = "regenerate it with `python -m nexusdsl.ops -o docs/ops.md`"


def test_the_page_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == reference(), f"docs/ops.md is stale; {HOW}"


def test_every_public_op_has_a_section_and_internal_ops_none():
    sections = re.findall(r"^### `(\w+)`$", reference(), re.M)
    assert sections == sorted(sections, key=lambda n: (_family_rank(n), n))
    assert set(sections) == {name for name, op in REGISTRY.items() if op.public}


def _family_rank(name: str) -> int:
    families = list(dict.fromkeys(re.findall(r"^## (\w+)$", reference(), re.M)))
    return families.index(REGISTRY[name].family)


def test_compiler_set_attributes_are_left_out():
    text = reference()
    embed = text.split("### `embed`")[1].split("###")[0]
    assert "`embed(x, dim, vocab, tie)`" in embed and "`kind`" not in embed
    mix = text.split("### `mix`")[1].split("###")[0]
    assert "`labels`" not in mix and "| `wiring` | axial \\| full" in mix


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.public))
def test_every_public_op_that_owns_parameters_declares_their_shapes(name):
    op = REGISTRY[name]
    makes_params = type(op).params is not Op.params
    assert bool(op.parameters) == makes_params, name


# ---------------------------------------------------------------------------- the formulas


def evaluate(formula: str, names: dict) -> tuple[int, ...]:
    """`[(order + 1) * d, d]` with names bound: a list of integer expressions (+ - * //,
    `a or b`, `x[i]` indexing, `*grid` spreading a list, or giving one number), read by a
    small parser (no eval)."""
    tokens = re.findall(r"\d+|\w+|//|\S", formula)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take(expected=None):
        nonlocal pos
        token = tokens[pos]
        assert expected is None or token == expected, (formula, token, expected)
        pos += 1
        return token

    def either():
        value = total()
        while peek() == "or":
            take()
            other = total()
            value = value if value is not None else other
        return value

    def total():
        value = product()
        while peek() in ("+", "-"):
            value = value + product() if take() == "+" else value - product()
        return value

    def product():
        value = atom()
        while peek() in ("*", "//"):
            value = value * atom() if take() == "*" else value // atom()
        return value

    def atom():
        token = take()
        if token == "(":
            value = either()
            take(")")
            return value
        if token.isdigit():
            return int(token)
        value = names[token]
        if peek() == "[":
            take("[")
            value = value[either()]
            take("]")
        return value

    take("[")
    shape: list[int] = []
    while peek() != "]":
        if peek() == "*":
            take()
            spread = names[take()]
            shape.extend(spread if isinstance(spread, list) else [spread])
        else:
            shape.append(either())
        if peek() == ",":
            take()
    take("]")
    return tuple(shape)


def test_the_evaluator():
    names = {"d": 8, "order": 2, "out": None, "widths": [3, 5], "i": 1, "grid": [4, 5]}
    assert evaluate("[(order + 1) * d, d // 2]", names) == (24, 4)
    assert evaluate("[out or d, widths[i], *grid, 1]", names) == (8, 5, 4, 5, 1)
    assert evaluate("[d, *order]", names) == (8, 2)


GRID = "x: float[B, i=4, j=5, 3]"
TOKENS = "x: float[B, T, 8]"
MODALITIES = ("modality text = bytes(code = 0)\n"
              "modality image = patches(size = 2, channels = 3, code = 1)\n")

# (op, input line, body, names the formulas use besides the attributes and d)
EXAMPLES = [
    ("linear", TOKENS, "y = linear(x, 4)", {}),
    ("linear", TOKENS, "y = linear(x, 4, bias = false)", {}),
    ("layernorm", TOKENS, "y = layernorm(x)", {}),
    ("rmsnorm", TOKENS, "y = rmsnorm(x)", {}),
    ("conv", TOKENS, "y = conv(x, 6, kernel = 3, groups = 2)", {"C": 8}),
    ("conv", "x: float[B, 4, H, W]", "y = conv(x, 6, kernel = [3, 2], axes = [H, W], groups = 2)",
     {"C": 4}),
    ("param", TOKENS, "y = param([3, 8])", {}),
    ("position", TOKENS, "y = x + position(x, max = 16)", {}),
    ("attention", TOKENS, "y = attention(x, heads = 2)", {}),
    ("attention", TOKENS, "y = attention(x, heads = 4, kv_heads = 2, head_dim = 3, bias = qkv, "
                          "qk_norm = rmsnorm)", {}),
    ("attention", "x: float[B, T, 8]\n  input z: float[B, S, 6]",
     "y = attention(x, heads = 2, kv = z)", {"e": 6}),
    ("relative_position", TOKENS, "y = relative_position(x, heads = 2, buckets = 8)", {}),
    ("hyena", TOKENS, "y = hyena(x, order = 2, filter = 8)", {"directions": 1}),
    ("hyena", TOKENS, "y = hyena(x, order = 3, filter = 4, causal = false)", {"directions": 2}),
    ("learned_tokenizer", TOKENS, "y = learned_tokenizer(x, kernels = [3, 5], widths = [3, 5], "
                                  "heads = 2)", {}),
    ("mix", GRID, "y = mix(x, axis = i, to = 2, bias = true)", {"n": 4, "to": 2}),
    ("mix", GRID, "y = mix(x, axes = [i, j], wiring = full, bias = true)",
     {"cells": 20, "grid": [4, 5]}),
    ("fast_weights", TOKENS, "y = fast_weights(x)", {}),
    ("fast_weights", TOKENS, "y = fast_weights(x, out = 4)", {}),
    ("knn_attention", TOKENS, "y = knn_attention(x, k = 2, dim_qk = 4)", {}),
    ("embed", "t: text[B, T]", "y = embed(t, 8)", {"vocab": 256}),
    ("embed", "p: image[B, 3, 4, 4]", "y = embed(p, 8)", {"values": 3 * 2 * 2}),
    ("embed", "t: int[B, T]", "y = embed(t, 8, vocab = 10)", {}),
    ("unembed", "t: text[B, T]", "y = unembed(embed(t, 8) as tok, tie = tok)", {"vocab": 256}),
    ("unembed", TOKENS, "y = unembed(x, vocab = 10, bias = true)", {}),
    ("tag", "t: text[B, T]", "y = tag(embed(t, 8))", {}),
    ("generate", TOKENS, "y = generate(x, image)", {"values": 3 * 2 * 2}),
    ("moe", TOKENS, "y = moe(x, e, router = topk(k = 1))", {}),
    ("moe", TOKENS, "y = moe(x, e, router = knn(k = 1, coords = 4))", {"coords": 4}),
    ("moe", TOKENS, "y = moe(x, e, router = topk(k = 1, score = sigmoid, bias = true))", {}),
    ("latent_attention", TOKENS, "y = latent_attention(x, heads = 2, q_rank = 6, kv_rank = 4, "
                                 "nope_dim = 3, rope_dim = 2, v_dim = 5)", {}),
    ("latent_attention", TOKENS, "y = latent_attention(x, heads = 2, q_rank = 0, kv_rank = 4, "
                                 "nope_dim = 3, rope_dim = 2, v_dim = 5)", {}),
    ("swarm", TOKENS, "y = swarm(x, 3 of mlp(), combine = router)", {}),
]


def _graph(inputs: str, body: str):
    experts = "  experts e = 2 of mlp(mult = 2)\n" if "moe(" in body else ""
    text = (f"nexus 0.1\nimport std.nn\n{MODALITIES}\nmodel M {{\n  input {inputs}\n"
            f"{experts}  {body}\n  output out = y\n}}\n")
    return nexusdsl.loads(text, "example.nx").elaborate()


def _declared(op, key: str) -> tuple[str, dict]:
    """The declared formula of a parameter, and what its `<placeholder>` stands for."""
    for pattern, text in op.parameters.items():
        parts = re.split(r"<(\w+)>", pattern)  # literal, placeholder, literal, ...
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\w+)"
                        for i, p in enumerate(parts))
        match = re.fullmatch(regex, key)
        if match:
            bound = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()}
            return split_shape(text)[0], bound
    raise AssertionError(f"{op.name}: parameter {key} is not among its declared parameters")


@pytest.mark.parametrize("name,inputs,body,extra", EXAMPLES,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(EXAMPLES)])
def test_declared_shapes_are_the_shapes_made(name, inputs, body, extra):
    graph = _graph(inputs, body)
    (node,) = [n for n in graph.nodes() if n.op == name]
    assert node.params, f"the example of {name} makes no parameters"
    width = graph.type_of(node.inputs[0]).axes[-1].size if node.inputs else None  # param: none
    op = REGISTRY[name]
    for key, spec in node.params.items():
        formula, placeholder = _declared(op, key)
        attrs = attrs_of(node)
        names = {**{k: getattr(attrs, k) for k in type(attrs).model_fields}, "d": width,
                 **extra, **placeholder}
        assert evaluate(formula, names) == spec.shape, (name, key, formula)


def test_every_op_declaring_parameters_has_an_example():
    declared = {n for n, op in REGISTRY.items() if op.public and op.parameters}
    assert declared == {e[0] for e in EXAMPLES}
