"""moe against a naive reference: every token through every expert, combined with its gates.

The reference is written from the formulas (softmax gate, top-k, slot-major priority for
dropping, Switch balance loss) with plain torch ops and the experts' weights read from the
state_dict, so it shares no code with the dispatch it checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nexusdsl
from nexusdsl.ops import moe_torch as dispatch

SOURCE = """
import std.nn
model M(dim = 16, n = 4, k = 2, cap = 0.0, balance = 0.01) {
  input x: float[B, T, dim]
  experts ffn = n of mlp(mult = 2)
  output y = moe(x, ffn, router = topk(k = k), balance = balance, capacity = cap)
}
"""


def build(**hyper):
    return nexusdsl.compile(nexusdsl.loads(SOURCE, "moe.nx"), seed=1, **hyper)


def expert_fn(state, e: int):
    p = f"moe.experts.{e}.mlp."

    def mlp(x):
        h = F.gelu(F.linear(x, state[p + "linear.weight"], state[p + "linear.bias"]))
        return F.linear(h, state[p + "linear_1.weight"], state[p + "linear_1.bias"])

    return mlp


def reference(model, x, k: int, capacity: float):
    state = dict(model.named_parameters())  # the live parameters: gradients flow into them
    n_exp = sum(1 for key in state if key.endswith("mlp.linear.weight"))
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    probs = torch.softmax(flat @ state["moe.router.weight"].t(), dim=-1)
    top_w, top_i = torch.topk(probs, k, dim=-1)
    gate = torch.zeros(n, n_exp)
    limit = math.ceil(capacity * n * k / n_exp) if capacity > 0 else n * k
    taken = [0] * n_exp
    for slot in range(k):  # first choices have priority, then token order
        for t in range(n):
            e = int(top_i[t, slot])
            if taken[e] < limit:
                gate[t, e] += top_w[t, slot]
                taken[e] += 1
    out = sum(gate[:, e:e + 1] * expert_fn(state, e)(flat) for e in range(n_exp))
    return out.reshape(x.shape), gate


@pytest.mark.parametrize("cap", [0.0, 0.5, 1.25])
def test_moe_equals_naive_reference(cap):
    model = build(k=2, cap=cap)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(0))
    want, gate = reference(model, x, 2, cap)
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    dropped = (gate > 0).sum().item() < 3 * 7 * 2
    assert dropped == (cap == 0.5), "capacity 0.5 must drop assignments, the others none"


@pytest.mark.parametrize("cap", [0.0, 0.5])
def test_static_layout_used_while_tracing_gives_the_same(monkeypatch, cap):
    model = build(k=2, cap=cap)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    eager = model(x)
    monkeypatch.setattr(dispatch, "_tracing", lambda: True)
    torch.testing.assert_close(model(x), eager, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(x), reference(model, x, 2, cap)[0], atol=1e-5, rtol=1e-5)


def test_torch_compile_matches_eager():
    model = build(k=2, cap=1.0)
    x = torch.randn(2, 5, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=1e-6)


def test_export_with_capacity():
    model = build(k=2, cap=1.0).eval()
    x = torch.randn(2, 5, 16)
    exported = torch.export.export(model, (x,), strict=False)
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-6, rtol=1e-6)


def test_balance_loss_hand_computed():
    model = build(dim=2, n=2, k=1, balance=0.01).train()
    with torch.no_grad():
        model.moe.router.weight.copy_(torch.eye(2))
    ln3 = math.log(3.0)
    # tokens 0-2 prefer expert 0 with p = [3/4, 1/4]; token 3 prefers expert 1, p = [1/4, 3/4]
    x = torch.tensor([[[ln3, 0.0], [ln3, 0.0], [ln3, 0.0], [0.0, ln3]]])
    model(x)
    # f = [3/4, 1/4], P = [(3 * 3/4 + 1/4) / 4, (3 * 1/4 + 3/4) / 4] = [5/8, 3/8]
    # loss = 0.01 * 2 * (3/4 * 5/8 + 1/4 * 3/8) = 0.01 * 2 * 9/16 = 0.01125
    assert model.moe.aux_loss.item() == pytest.approx(0.01125, rel=1e-6)
    model.eval()
    model(x)
    assert model.moe.aux_loss is None, "no balance loss outside training"


@pytest.mark.parametrize("cap", [0.0, 0.5])
def test_gradients_equal_the_reference(cap):
    model = build(k=2, cap=cap)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    target = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(6))

    def grads(fn):
        model.zero_grad()
        x.grad = None
        ((fn() - target) ** 2).sum().backward()
        return [x.grad.clone()] + [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                   for p in model.parameters()]

    ours, theirs = grads(lambda: model(x)), grads(lambda: reference(model, x, 2, cap)[0])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradients_reach_gates_and_experts():
    model = build(k=2).train()
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(5))
    y = model(x)
    (y.pow(2).mean() + model.moe.aux_loss).backward()
    assert model.moe.router.weight.grad.abs().sum() > 0
    for e in range(4):
        grad = model.moe.experts[e].mlp.linear.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"expert {e} got no gradient"


KNN = """
import std.nn
model K(dim = 8, m = 0) {
  input x: float[B, T, dim]
  experts e = 3 of mlp(mult = 2)
  output y = moe(x, e, router = knn(k = 2, coords = 4, min_tokens = m))
}
"""


def knn_reference(model, x, k: int, m: int):
    state = dict(model.named_parameters())
    flat = x.reshape(-1, x.shape[-1])
    q = flat @ state["moe.router.proj"].t()
    coords = state["moe.router.coords"]
    dist = torch.stack([(q - c).norm(dim=-1) for c in coords], dim=1)  # (N, E)
    weight = 1 - dist / dist.max(dim=1, keepdim=True).values
    gate = torch.zeros_like(dist)
    for t in range(flat.shape[0]):
        for e in dist[t].argsort()[:k].tolist():
            gate[t, e] = weight[t, e]
    for e in range(dist.shape[1]):  # every expert also takes its m nearest tokens
        for t in dist[:, e].argsort()[:m].tolist():
            gate[t, e] = weight[t, e]
    out = sum(gate[:, e:e + 1] * expert_fn(state, e)(flat) for e in range(dist.shape[1]))
    return out.reshape(x.shape)


@pytest.mark.parametrize("m", [0, 4])
def test_knn_router_matches_reference(m):
    model = nexusdsl.compile(nexusdsl.loads(KNN, "knn.nx"), seed=2, m=m)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), knn_reference(model, x, 2, m), atol=1e-5, rtol=1e-5)
    grads = []
    for fn in (model, lambda x: knn_reference(model, x, 2, m)):
        model.zero_grad()
        fn(x).pow(2).sum().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert model.moe.router.coords.grad.abs().sum() > 0
    assert model.moe.router.proj.grad.abs().sum() > 0


def test_hash_router_is_fixed_per_position_and_balanced():
    source = KNN.replace("knn(k = 2, coords = 4, min_tokens = m)", "hash()").replace(
        "3 of", "4 of")
    model = nexusdsl.compile(nexusdsl.loads(source, "hash.nx"), m=0)
    x = torch.randn(2, 64, 8)
    state = model.state_dict()
    y = model(x)
    chosen = []
    for t in range(64):  # the expert of a position does not depend on the batch or the data
        outs = [expert_fn(state, e)(x[:, t]) for e in range(4)]
        match = [e for e in range(4) if torch.allclose(y[:, t], outs[e], atol=1e-6)]
        assert len(match) == 1
        chosen.append(match[0])
    counts = [chosen.count(e) for e in range(4)]
    assert min(counts) >= 8, counts


@pytest.mark.parametrize("cap", [0.0, 1.25])
def test_moe_lowers_through_torch_mlir(cap):
    from nexusdsl.compiler.lower.mlir import to_mlir

    text = to_mlir(build(k=2, cap=cap), "mlir-linalg", sizes={"B": 2, "T": 5})
    assert "linalg" in text and "func.func @main" in text
