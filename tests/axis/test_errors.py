"""Shape and option mistakes in layouts and wirings are located (file:line:col) and name the
axes and sizes involved."""

import pytest

from tests.axis.helpers import error_text

GRID = "x: float[B, i=4, j=6, d=2]"


@pytest.mark.parametrize("body,message", [
    ("  y = mix(x, axes = [i, q])", "3:7: error: mix: axes = q names no axis of f32[B, i=4, j=6, d=2]"),
    ("  y = mix(x, axes = [i, j], share = all)",
     "mix: share = all uses one matrix for every axis, but axis i is 4 and axis j is 6"),
    ("  y = mix(x, axis = B)", "mix: axis B has a symbolic size"),
    ("  y = mix(x, axes = [i, i])", "mix: axis i is listed twice in axes"),
    ("  y = mix(x, axes = [i, j], to = 3)", "mix: `to` resizes with one axis"),
    ("  y = mix(x, axes = [i, j], order = sequential, to = [3])", "mix: to lists 1 sizes for 2 axes"),
    ("  y = mix(x, axis = i, to = 3, causal = true)",
     "mix: causal = true needs square maps, but `to` resizes axis i from 4 to 3"),
    ("  y = mix(x, axes = [i, j], wiring = local)", "mix: local(k) needs a positive integer"),
    ("  y = mix(x, axes = [i, j], wiring = local(0))", "mix: local(k) needs a positive integer"),
    ("  y = mix(x, axes = [i, j], wiring = random(density = 1.5))",
     "mix: random(density, seed) needs a density in (0, 1], got 1.5"),
    ("  y = mix(x, axes = [i, j], wiring = random(0.1, seed = 0.5))", "needs an integer seed"),
    ("  y = mix(x, axes = [i, j], wiring = ring(2))", "mix: unknown wiring `ring`"),
    ("  y = mix(x, axes = [i, j], wiring = full, share = none)",
     "mix: share applies to the axial and local wirings, not full"),
    ("  y = mix(x, axes = [i, j], share = [none])", "mix: share lists 1 values for 2 axes"),
    ("  y = mix(x, axes = [i, j], share = some)", "mix: share = some is not one of none, axis, all"),
    ("  y = mix(x, axes = [i, j], order = diagonal)", "mix: order = diagonal is not parallel"),
    ("  y = mix(x, axes = [i, j], separate = true, share = axis)",
     "mix: separate = true contradicts share = axis"),
    ("  y = mix(x)", "mix: give the axis to mix along"),
    ("  y = attention(x, axis = q, heads = 2)", "attention: axis = q names no axis"),
    ("  y = knn_attention(x, axis = i, k = 5)", "knn_attention: k = 5 neighbours, but axis i has only 4"),
])
def test_wiring_mistakes_are_located_and_name_the_axes(body, message):
    text = error_text(body, GRID)
    assert "test.nx:3:" in text
    assert message in text


def test_layout_sizes_that_do_not_divide_name_the_axis_and_both_sizes():
    body = '  y = layout(x, "b (i j k) d -> b i j k d", i = 10, j = 25)'
    text = error_text(body, "x: float[B, T=4096, d=8]")
    assert text.startswith("test.nx:3:7: error: layout: axis T of size 4096 is not divisible "
                           "by i*j = 250")


def test_layout_pattern_mistakes_are_located():
    text = error_text('  y = layout(x, "b t d -> b t q")', "x: float[B, T=8, d=8]")
    assert "test.nx:3:7: error: layout: axis q on the right of the pattern is not on the left" in text


def test_a_mix_after_layout_uses_the_pattern_names():
    body = ('  g = layout(x, "b (i j) d -> b i j d", i = 4)\n'
            '  y = mix(g, axes = [i, k])')
    text = error_text(body, "x: float[B, T=16, d=2]")
    assert "test.nx:4:7: error: mix: axes = k names no axis of f32[B, i=4, j=4, d=2]" in text
