"""Hover answers from tools/analysis.py, whose recorder watches the elaborator through its
observer hook: the type and maker of the value under the cursor, the parameters of the nodes
that expression itself made, every instance inside `repeat`."""

from nexusdsl.tools.analysis import analyze, hover

TEXT = """\
block ffn(x: [*, d], mult = 2) {
  return linear(gelu(linear(x, d * mult)), d)
}

model M(width = 16) {
  input x: float[B, T, width]
  h = x + ffn(x)
  repeat 3 {
    h = linear(rmsnorm(h), width)
  }
  output y = h
}
"""


def at(needle: str, offset: int = 0) -> tuple[int, int]:
    """1-based (line, column) of `needle` in TEXT, plus `offset` characters."""
    index = TEXT.index(needle) + offset
    line = TEXT.count("\n", 0, index) + 1
    return line, index - (TEXT.rfind("\n", 0, index) + 1) + 1


def test_a_block_call_counts_the_parameters_of_its_body():
    d = 16
    text = hover(analyze(TEXT, "t.nx"), *at("ffn(x)"))
    assert "`ffn(x)` : **`f32[B, T, d=16]`**" in text  # the block names its result axis d
    assert "made by `ffn.linear_1`" in text
    assert f"parameters: {(d * 2 * d + 2 * d) + (2 * d * d + d):,}" in text


def test_a_sum_counts_the_parameters_of_its_operands():
    d = 16
    text = hover(analyze(TEXT, "t.nx"), *at("x + ffn(x)", 2))  # on the `+`
    assert "`x + ffn(x)`" in text and "made by `add`" in text
    assert f"parameters: {(d * 2 * d + 2 * d) + (2 * d * d + d):,}" in text


def test_a_call_inside_repeat_has_one_instance_per_iteration_and_only_its_own_parameters():
    d = 16
    text = hover(analyze(TEXT, "t.nx"), *at("linear(rmsnorm(h)"))
    assert f"parameters: {d * d + d:,} each" in text  # the linear's; rmsnorm's d are its argument's
    assert "3 instances: `blocks.0.linear` ... `blocks.2.linear`" in text


def test_a_bound_name_and_an_output_name_show_their_value():
    result = analyze(TEXT, "t.nx")
    assert "made by `add`" in hover(result, *at("h = x"))
    output = hover(result, *at("output y", 7))
    assert "`y` : **`f32[B, T, width=16]`**" in output and "made by `blocks.2.linear`" in output
