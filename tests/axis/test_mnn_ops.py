"""The MNN paper's operators against brute-force references: nearest-neighbour attention,
Hebbian fast weights, selective ReLU gradients, and axis attention on a layout grid."""

import pytest
import torch
import torch.nn.functional as F

from nexusdsl.ops import REGISTRY
from tests.axis.helpers import compiled, params_of
from tests.ops.test_mixers import CausalSelfAttention, load_reference

# ---------------------------------------------------------------------------- knn_attention


def knn_reference(x, p, k, causal, eps=1e-6):
    """Token by token: L1 distances to every allowed key, the k nearest, inverse-distance
    weights normalised to one, the weighted sum of values, the output projection."""
    q, key, v = (F.linear(x, p[f"{n}.weight"], p[f"{n}.bias"]) for n in ("q", "k", "v"))
    out = torch.zeros_like(v)
    B, T, _ = x.shape
    for b in range(B):
        for t in range(T):
            allowed = range(t + 1) if causal else range(T)
            dists = sorted(((q[b, t] - key[b, s]).abs().sum().item(), s) for s in allowed)[:k]
            inv = torch.tensor([1.0 / (d + eps) for d, _ in dists], dtype=x.dtype)
            w = inv / inv.sum()
            out[b, t] = sum(wi * v[b, s] for wi, (_, s) in zip(w, dists))
    return F.linear(out, p["out.weight"], p["out.bias"])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1024, 4])
def test_knn_attention_equals_brute_force(causal, chunk, monkeypatch):
    monkeypatch.setattr(REGISTRY["knn_attention"], "CHUNK", chunk)  # queries in blocks of 4
    model = compiled(f"  y = knn_attention(x, k = 3, dim_qk = 4, causal = {str(causal).lower()})",
                     "x: float[B, T, d=6]")
    p = params_of(model, "knn_attention")
    assert p["q.weight"].shape == (4, 6) and p["v.weight"].shape == (6, 6)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x), knn_reference(x, p, 3, causal))


def test_knn_attention_trains_its_query_and_key_projections():
    model = compiled("  y = knn_attention(x, k = 2)", "x: float[B, T, d=6]")
    model(torch.randn(2, 7, 6, dtype=torch.float64)).square().sum().backward()
    p = params_of(model, "knn_attention")
    assert p["q.weight"].grad.abs().sum() > 0 and p["k.weight"].grad.abs().sum() > 0


def test_knn_attention_along_a_grid_axis_equals_it_on_the_transposed_tensor():
    model = compiled("  y = knn_attention(x, axis = i, k = 2)")
    p = params_of(model, "knn_attention")
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    seqs = x.transpose(1, 2).reshape(8, 3, 2)
    want = knn_reference(seqs, p, 2, False).reshape(2, 4, 3, 2).transpose(1, 2)
    torch.testing.assert_close(model(x), want)


# ---------------------------------------------------------------------------- axis attention


def test_attention_along_a_layout_axis_equals_attention_on_the_transposed_tensor():
    body = ('  g = layout(x, "b (i j) d -> b i j d", i = 4)\n'
            '  y = attention(g, axis = i, heads = 2)')
    model = compiled(body, "x: float[B, T=20, d=8]", dtype="f32")
    ref = CausalSelfAttention(8, 2, causal=False, bias=True)
    load_reference(ref, model.get_submodule("attention"))
    x = torch.randn(3, 20, 8)
    grid = x.reshape(3, 4, 5, 8)
    want = ref(grid.transpose(1, 2).reshape(15, 4, 8)).reshape(3, 5, 4, 8).transpose(1, 2)
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- fast_weights


def fast_weights_reference(x, W, b, decay, rate):
    """The recurrence written out: y_t = W x_t + b + A x_t, then A = decay A + rate y_t x_t^T."""
    B, T, _ = x.shape
    ys = []
    for n in range(B):
        A = torch.zeros(W.shape[0], W.shape[1], dtype=x.dtype)
        for t in range(T):
            y = W @ x[n, t] + b + A @ x[n, t]
            A = decay * A + rate * torch.outer(y, x[n, t])
            ys.append(y)
    return torch.stack(ys).reshape(B, T, -1)


@pytest.mark.parametrize("decay,rate,out", [(0.9, 0.1, 5), (0.0, 0.3, 5), (1.0, 0.05, 3)])
def test_fast_weights_equal_the_hebbian_recurrence(decay, rate, out):
    model = compiled(f"  y = fast_weights(x, decay = {decay}, rate = {rate}, out = {out})",
                     "x: float[B, T, d=5]")
    p = params_of(model, "fast_weights")
    x = torch.randn(2, 11, 5, dtype=torch.float64) * 0.5
    want = fast_weights_reference(x, p["weight"], p["bias"], decay, rate)
    torch.testing.assert_close(model(x), want)


def test_fast_weights_are_causal():
    model = compiled("  y = fast_weights(x)", "x: float[B, T, d=4]")
    x = torch.randn(1, 8, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    torch.testing.assert_close(model(x)[:, :5], model(x2)[:, :5])


# ---------------------------------------------------------------------------- selective_relu


def test_selective_relu_gradients():
    model = compiled("  y = selective_relu(x)", "x: float[B, d=6]")
    x = torch.tensor([[2.0, 1.0, -1.0, -2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.5, -0.5, 0.5, -0.5, 0.5, -0.5]], dtype=torch.float64)
    y = model(x)
    torch.testing.assert_close(y, x.relu())
    (grad,) = torch.autograd.grad(y, x, g)
    # active units pass their gradient unmodified; units at zero only pass a negative gradient
    torch.testing.assert_close(grad, torch.tensor([[0.5, -0.5, 0.0, -0.5, 0.0, -0.5]],
                                                  dtype=torch.float64))


def test_selective_relu_revives_a_dead_unit_that_relu_cannot():
    for act, revived in (("relu", False), ("selective_relu", True)):
        model = compiled(f"  y = linear(x, 1) |> {act}", "x: float[B, d=2]")
        lin = params_of(model, "linear")
        with torch.no_grad():
            lin["weight"].fill_(-1.0)
            lin["bias"].fill_(0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.ones(4, 2, dtype=torch.float64)
        for _ in range(20):
            opt.zero_grad()
            (model(x) - 1.0).square().mean().backward()
            opt.step()
        assert bool((model(x) > 0).all()) == revived, act
