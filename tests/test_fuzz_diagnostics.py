"""Mutated examples (deleted, duplicated and swapped tokens and characters) either compile or
give located diagnostics: never an internal exception. Thousands of inputs per run."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nexusdsl
from tests.conftest import EXAMPLES

SOURCES = [p.read_text() for p in EXAMPLES]
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S")
LOCATED = re.compile(r"^\S+\.nx:\d+:\d+: error: .+")


def tokens(text):
    return [(m.start(), m.end()) for m in TOKEN.finditer(text)]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        text = draw(st.sampled_from([delete_token, duplicate_token, swap_tokens, swap_chars,
                                     delete_char, insert_char]))(draw, text)
    return text


def delete_token(draw, text):
    a, b = draw(st.sampled_from(tokens(text)))
    return text[:a] + text[b:]


def duplicate_token(draw, text):
    a, b = draw(st.sampled_from(tokens(text)))
    return text[:b] + " " + text[a:b] + text[b:]


def swap_tokens(draw, text):
    spans = tokens(text)
    (a1, b1), (a2, b2) = sorted([draw(st.sampled_from(spans)), draw(st.sampled_from(spans))])
    if b1 > a2:
        return text
    return text[:a1] + text[a2:b2] + text[b1:a2] + text[a1:b1] + text[b2:]


def swap_chars(draw, text):
    i = draw(st.integers(0, len(text) - 2))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def delete_char(draw, text):
    i = draw(st.integers(0, len(text) - 1))
    return text[:i] + text[i + 1:]


def insert_char(draw, text):
    i = draw(st.integers(0, len(text)))
    return text[:i] + draw(st.sampled_from(list("()[]{}=,;:*+-/|>.#\"\n 0123456789xa"))) + text[i:]


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutations_give_located_errors_or_compile(text):
    try:
        nexusdsl.loads(text, "mut.nx")
    except nexusdsl.NexusError as err:
        rendered = err.render()
        assert err.diagnostics
        for d in err.diagnostics:
            assert d.span.line >= 1 and d.span.col >= 1, rendered
            # a mistake that surfaces inside a library block names the call site in mut.nx
            assert d.span.file == "mut.nx" or any(n.span and n.span.file == "mut.nx" for n in d.notes), rendered
        assert LOCATED.match(rendered), rendered
