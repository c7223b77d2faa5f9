"""`mix`: parameter counts (the paper's numbers) and numerical equivalence of every wiring with
an independent reference: explicit Kronecker-sum matrices, successive mode-n products written
with tensordot, torch's conv2d/conv3d and unfold, and dense matrices times their masks."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nexusdsl.ops.axis_torch import random_mask
from tests.axis.helpers import compiled, param_count, params_of

# ---------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("share,count", [("none", 2000), ("axis", 200), ("all", 100)])
def test_paper_counts_for_a_10_by_10_grid(share, count):
    body = f"  y = mix(x, axes = [i, j], share = {share}, bias = false)"
    assert param_count(body, "x: float[B, i=10, j=10]") == count


@pytest.mark.parametrize("share,count", [("none", 168_960_000), ("axis", 24_096)])
def test_paper_counts_for_a_100_100_64_grid(share, count):
    body = f"  y = mix(x, axes = [i, j, k], share = {share})"
    assert param_count(body, "x: float[i=100, j=100, k=64]") == count


def test_separate_is_share_none_and_bias_follows_the_matrices():
    inputs = "x: float[B, i=10, j=10]"
    assert param_count("  y = mix(x, axes = [i, j], separate = true)", inputs) == 2000
    # one bias vector per matrix: 20 rows of 10 for none, 2 vectors of 10 for axis
    assert param_count("  y = mix(x, axes = [i, j], share = none, bias = true)", inputs) == 2200
    assert param_count("  y = mix(x, axes = [i, j], bias = true)", inputs) == 220
    assert param_count("  y = mix(x, axes = [i, j], share = [none, axis])", inputs) == 1100


def test_counts_of_the_other_wirings():
    inputs = "x: float[B, i=4, j=6, d=3]"
    assert param_count("  y = mix(x, axes = [i, j], wiring = full)", inputs) == 24 * 24
    assert param_count("  y = mix(x, axes = [i, j], wiring = local(3))", inputs) == 9
    assert param_count("  y = mix(x, axes = [i, j], wiring = local(3), share = none)",
                       inputs) == 24 * 9
    assert param_count("  y = mix(x, axis = i, to = 7)", inputs) == 28


# ---------------------------------------------------------------------------- references


def kron_sum(weights: list[torch.Tensor]) -> torch.Tensor:
    """sum_a I (x) ... (x) W_a (x) ... (x) I: the parallel axial mix as one matrix over the
    row-major flattened grid."""
    sizes = [w.shape[0] for w in weights]
    total = 0
    for a, w in enumerate(weights):
        factors = [torch.eye(s, dtype=w.dtype) for s in sizes]
        factors[a] = w
        term = factors[0]
        for f in factors[1:]:
            term = torch.kron(term, f)
        total = total + term
    return total


def separate_matrix(weights: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """The explicit matrix of a share = none axial mix, built entry by entry: node c hears node
    c' (differing only along axis a) through the matrix of c's row along a."""
    cells = list(itertools.product(*map(range, sizes)))
    index = {c: n for n, c in enumerate(cells)}
    K = torch.zeros(len(cells), len(cells), dtype=weights[0].dtype)
    for c in cells:
        for a, w in enumerate(weights):
            row = tuple(v for b, v in enumerate(c) if b != a)
            for v in range(sizes[a]):
                source = c[:a] + (v,) + c[a + 1:]
                K[index[c], index[source]] += w[row][c[a], v]
    return K


def flat(t: torch.Tensor) -> torch.Tensor:
    """[B, i, j, d] -> [B * d, i * j]: one row per (batch, channel), the grid flattened."""
    return t.movedim(-1, 1).flatten(2).flatten(0, 1)


# ---------------------------------------------------------------------------- axial


def test_axial_equals_the_kronecker_sum_matrix():
    model = compiled("  y = mix(x, axes = [i, j], wiring = axial)")
    w = params_of(model)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    K = kron_sum([w["i.weight"], w["j.weight"]])
    torch.testing.assert_close(flat(model(x)), flat(x) @ K.T)


def test_axial_over_three_axes_with_a_channel_axis_shared_over():
    model = compiled("  y = mix(x, axes = [i, j, k])", "x: float[B, i=2, j=3, k=4, d=2]")
    w = params_of(model)
    x = torch.randn(2, 2, 3, 4, 2, dtype=torch.float64)
    K = kron_sum([w["i.weight"], w["j.weight"], w["k.weight"]])
    torch.testing.assert_close(flat(model(x)), flat(x) @ K.T)


def test_share_none_equals_the_entrywise_matrix():
    model = compiled("  y = mix(x, axes = [i, j], share = none)")
    w = params_of(model)
    assert w["i.weight"].shape == (4, 3, 3) and w["j.weight"].shape == (3, 4, 4)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    K = separate_matrix([w["i.weight"], w["j.weight"]], [3, 4])
    torch.testing.assert_close(flat(model(x)), flat(x) @ K.T)


def test_share_all_uses_one_matrix_for_both_axes():
    model = compiled("  y = mix(x, axes = [i, j], share = all)", "x: float[B, i=4, j=4, d=2]")
    (w,) = params_of(model).values()
    x = torch.randn(2, 4, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(flat(model(x)), flat(x) @ kron_sum([w, w]).T)


def test_bias_is_added_once_per_matrix():
    model = compiled("  y = mix(x, axes = [i, j], bias = true)")
    w = params_of(model)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    want = flat(x) @ kron_sum([w["i.weight"], w["j.weight"]]).T
    want = want + (w["i.bias"][:, None] + w["j.bias"][None, :]).flatten()
    torch.testing.assert_close(flat(model(x)), want)


def mode_product(x: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.tensordot(x, w, dims=([axis], [1])).movedim(-1, axis)


def test_sequential_equals_successive_mode_products_with_resizing():
    model = compiled("  y = mix(x, axes = [i, j], order = sequential, to = [5, 2])")
    w = params_of(model)
    assert w["i.weight"].shape == (5, 3) and w["j.weight"].shape == (2, 4)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    want = mode_product(mode_product(x, w["i.weight"], 1), w["j.weight"], 2)
    y = model(x)
    assert y.shape == (2, 5, 2, 2)
    torch.testing.assert_close(y, want)
    assert model.graph.type_of(model.graph.outputs["y"]).axes[1].name == "i"


def test_sequential_share_none_rows_see_the_resized_axes():
    model = compiled("  y = mix(x, axes = [i, j], order = sequential, share = none, to = [5, 4])")
    w = params_of(model)
    assert w["i.weight"].shape == (4, 5, 3) and w["j.weight"].shape == (5, 4, 4)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    h = torch.einsum("bijd,jpi->bpjd", x, w["i.weight"])
    want = torch.einsum("bpjd,pqj->bpqd", h, w["j.weight"])
    torch.testing.assert_close(model(x), want)


def test_single_axis_resize_along_a_named_axis():
    model = compiled("  y = mix(x, axis = j, to = 7)")
    (w,) = params_of(model).values()
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x), mode_product(x, w, 2))


# ---------------------------------------------------------------------------- full / random


def test_full_is_one_dense_matrix_over_the_flattened_axes():
    model = compiled("  y = mix(x, axes = [i, j], wiring = full, bias = true)")
    w = params_of(model)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(flat(model(x)), flat(x) @ w["weight"].T + w["bias"].flatten())


def test_random_is_a_dense_layer_times_an_exact_mask():
    model = compiled("  y = mix(x, axes = [i, j], wiring = random(density = 0.25, seed = 3))",
                     "x: float[B, i=4, j=4, d=2]")
    (w,) = params_of(model).values()
    mask = random_mask(16, 0.25, 3)
    assert int(mask.sum()) == 64  # exactly 0.25 of 16 * 16
    x = torch.randn(2, 4, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(flat(model(x)), flat(x) @ (w * mask).T)
    # the output does not depend on masked-out weights
    with torch.no_grad():
        w[~mask] = 1e6
    torch.testing.assert_close(flat(model(x)), flat(x) @ (w * mask).T)


@pytest.mark.parametrize("cells,density", [(10, 0.1), (12, 0.5), (7, 1.0), (20, 0.03)])
def test_random_masks_have_exact_density_and_depend_on_the_seed(cells, density):
    mask = random_mask(cells, density, seed=0)
    assert int(mask.sum()) == round(density * cells * cells)
    assert torch.equal(mask, random_mask(cells, density, seed=0))
    if density < 1:
        assert not torch.equal(mask, random_mask(cells, density, seed=1))


# ---------------------------------------------------------------------------- local


def test_local_3_equals_conv2d():
    model = compiled("  y = mix(x, axes = [i, j], wiring = local(3), bias = true)",
                     "x: float[B, i=5, j=6, d=3]")
    w = params_of(model)
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    planes = x.permute(0, 3, 1, 2).reshape(6, 1, 5, 6)
    want = F.conv2d(planes, w["weight"][None, None], w["bias"], padding=1)
    torch.testing.assert_close(model(x), want.reshape(2, 3, 5, 6).permute(0, 2, 3, 1))


def test_local_3_equals_conv3d_over_a_16_grid_of_tokens():
    model = compiled("  y = mix(x, axes = [i, j, k], wiring = local(3))",
                     "x: float[B, i=4, j=3, k=5, d=2]")
    (w,) = params_of(model).values()
    x = torch.randn(2, 4, 3, 5, 2, dtype=torch.float64)
    vols = x.permute(0, 4, 1, 2, 3).reshape(4, 1, 4, 3, 5)
    want = F.conv3d(vols, w[None, None], padding=1)
    torch.testing.assert_close(model(x), want.reshape(2, 2, 4, 3, 5).permute(0, 2, 3, 4, 1))


def test_local_even_kernel_pads_one_more_after():
    model = compiled("  y = mix(x, axes = [i, j], wiring = local(2))", "x: float[B, i=4, j=5]")
    (w,) = params_of(model).values()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    want = F.conv2d(F.pad(x[:, None], (0, 1, 0, 1)), w[None, None])[:, 0]
    torch.testing.assert_close(model(x), want)


def test_local_share_none_is_a_locally_connected_layer():
    model = compiled("  y = mix(x, axes = [i, j], wiring = local(3), share = none)",
                     "x: float[B, i=4, j=5]")
    (w,) = params_of(model).values()
    assert w.shape == (4, 5, 3, 3)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    patches = F.unfold(x[:, None], 3, padding=1)  # (B, 9, 20)
    want = (patches * w.reshape(20, 9).T[None]).sum(1).reshape(3, 4, 5)
    torch.testing.assert_close(model(x), want)


# ---------------------------------------------------------------------------- causal


@pytest.mark.parametrize("options", [
    "wiring = axial", "wiring = axial, order = sequential", "wiring = axial, share = none",
    "wiring = full", "wiring = local(3)", "wiring = random(density = 0.5)",
])
def test_causal_mixes_never_look_ahead_in_row_major_order(options):
    model = compiled(f"  y = mix(x, axes = [i, j], {options}, causal = true)",
                     "x: float[i=3, j=4]")
    J = torch.autograd.functional.jacobian(lambda v: model(v.view(3, 4)).flatten(),
                                           torch.randn(12, dtype=torch.float64))
    assert torch.count_nonzero(J.triu(1)) == 0
    assert torch.count_nonzero(J.tril(-1)) > 0


def test_local_causal_kernel_keeps_the_past_half():
    model = compiled("  y = mix(x, axes = [i, j], wiring = local(3), causal = true)",
                     "x: float[B, i=4, j=5]")
    (w,) = params_of(model).values()
    keep = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float64)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    want = F.conv2d(x[:, None], (w * keep)[None, None], padding=1)[:, 0]
    torch.testing.assert_close(model(x), want)


# ---------------------------------------------------------------------------- FLOPs


def test_flops_of_axial_and_full():
    from nexusdsl.compiler.summary import total_flops
    from tests.axis.helpers import program

    inputs = "x: float[B, i=16, j=16, d=4]"
    axial, _ = total_flops(program("  y = mix(x, axes = [i, j])", inputs).elaborate())
    full, _ = total_flops(program("  y = mix(x, axes = [i, j], wiring = full)",
                                  inputs).elaborate())
    n = 16 * 16 * 4  # batch 1
    assert axial == 2 * n * 16 * 2 + n  # two mode products and their sum
    assert full == 2 * n * 256
    assert math.isclose(full / axial, 256 / 32.5)
