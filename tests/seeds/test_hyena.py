"""`hyena`: against a reference written from the paper's definition (explicit sums, no FFT),
causality, the three long convolutions agreeing, gradients reaching the filter MLP, the
portable (MLIR) form, parameter counts and located mistakes."""

from __future__ import annotations

import math

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.ops import REGISTRY

SOURCE = """nexus 0.1
model H(dim = 6, order = 2, causal = true, impl = fft, features = 5, filter = 8, max = 16) {
  input x: float[B, T, dim]
  output y = hyena(x, order = order, filter = filter, causal = causal, impl = impl,
                   features = features, max = max)
}
"""
IMPLS = ("fft", "direct", "dft")


def build(**hyper):
    torch.manual_seed(0)
    return nexusdsl.compile(nexusdsl.loads(SOURCE, "h.nx"), dtype="f64", **hyper)


# ---------------------------------------------------------------------------- the reference


def reference(m, x, order, causal, features, max_len, short=3):
    """The Hyena operator computed from its definition, position by position (float64)."""
    p = {k: v.detach() for k, v in m.hyena.state_dict().items()}
    B, T, d = x.shape
    u = x @ p["in_proj.weight"].T + p["in_proj.bias"]  # (B, T, (N+1)d)
    s = torch.zeros_like(u)
    w, left = p["short.weight"][:, 0, :], short - 1 if causal else (short - 1) // 2
    for t in range(T):
        for j in range(short):
            src = t - left + j
            if 0 <= src < T:
                s[:, t] += w[:, j] * u[:, src]
    s = s + p["short.bias"]
    streams = [s[..., i * d:(i + 1) * d] for i in range(order + 1)]  # x^1 .. x^N, v
    h = filters(p, T, features, max_len)  # (T, channels)
    z = streams[-1]
    for n in range(order):
        conv = torch.zeros_like(z)
        for t in range(T):
            for src in range(T):
                if src <= t:
                    conv[:, t] += h[t - src, n * d:(n + 1) * d] * z[:, src]
                elif not causal:  # the second half of the channels looks the other way
                    back = h[src - t, (order + n) * d:(order + n + 1) * d]
                    conv[:, t] += back * z[:, src]
        z = streams[n] * (conv + p["filter.skip"][n] * z)
    return z @ p["out_proj.weight"].T + p["out_proj.bias"]


def filters(p, T, features, max_len):
    """The implicit filters at positions 0..T-1: sine MLP of (t, cos, -sin) features, times an
    exponential decay that takes channel c to 1e-2 at t = 1.5 .. 0.3 (first .. last)."""
    bands = (features - 1) // 2
    rows = []
    for i in range(T):
        t = i / (max_len - 1)
        f = [1e-4 + k * (bands - 1 - 1e-4) / (bands - 1) for k in range(bands)]
        angles = [2 * math.pi * fk * i / max_len for fk in f]
        rows.append([t] + [math.cos(a) for a in angles] + [-math.sin(a) for a in angles])
    h = torch.tensor(rows, dtype=torch.float64)
    for i in range(3):
        h = torch.sin(p["filter.freq"] * (h @ p[f"filter.linear_{i}.weight"].T
                                          + p[f"filter.linear_{i}.bias"]))
    h = h @ p["filter.out.weight"].T  # (T, C)
    C = h.shape[1]
    deltas = [math.log(1e-2) / 1.5 + (math.log(1e-2) / 0.3 - math.log(1e-2) / 1.5) * c / (C - 1)
              for c in range(C)]
    t = torch.arange(T, dtype=torch.float64) / (max_len - 1)
    return h * torch.exp(-t[:, None] * torch.tensor(deltas, dtype=torch.float64).abs())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("order,causal", [(1, True), (2, True), (3, True), (2, False)])
def test_matches_the_definition(impl, order, causal):
    m = build(order=order, causal=causal, impl=impl)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    want = reference(m, x, order, causal, features=5, max_len=16)
    assert torch.allclose(m(x), want, atol=1e-10, rtol=1e-9)


def test_sine_frequency_starts_at_omega():
    m = build()
    assert torch.all(m.hyena.filter.freq == 14.0)


# ---------------------------------------------------------------------------- causality


@pytest.mark.parametrize("impl", IMPLS)
def test_outputs_never_depend_on_later_positions(impl):
    m = build(impl=impl)
    T = 12
    x = torch.randn(2, T, 6, dtype=torch.float64, requires_grad=True)
    y = m(x)
    for t in range(T):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1:].abs().max().item() < 1e-13 if t + 1 < T else True
        assert grad[:, t].abs().max().item() > 1e-6  # the present does count


@pytest.mark.parametrize("impl", IMPLS)
def test_a_prefix_gives_the_same_outputs(impl):
    m = build(impl=impl)
    x = torch.randn(1, 14, 6, dtype=torch.float64)
    full = m(x)
    for t in (1, 5, 13):
        assert torch.allclose(m(x[:, :t]), full[:, :t], atol=1e-12)


def test_non_causal_hyena_sees_the_future():
    m = build(causal=False)
    x = torch.randn(1, 10, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    assert grad[:, 1:].abs().max().item() > 1e-6


# ---------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize("causal", [True, False])
def test_fft_direct_and_dft_paths_agree(causal):
    x = torch.randn(2, 64, 6, dtype=torch.float64)
    outs = [build(impl=impl, causal=causal)(x) for impl in IMPLS]
    for out in outs[1:]:
        assert torch.allclose(out, outs[0], atol=1e-11)


def test_paths_agree_in_float32():
    program = nexusdsl.loads(SOURCE, "h.nx")
    x = torch.randn(2, 200, 6)
    outs = [nexusdsl.compile(program, impl=impl, max=256)(x) for impl in IMPLS]
    scale = outs[0].abs().max()
    for out in outs[1:]:
        assert (out - outs[0]).abs().max() <= 1e-4 * scale  # float32 rounding over 200 terms


def test_portable_form_is_the_same_function():
    m = build()
    op = REGISTRY["hyena"]
    attrs = op.Attrs.model_validate(m.graph.by_name("hyena").attrs)
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    assert torch.allclose(op.lower_portable(attrs)(m.hyena, x), m(x), atol=1e-11)


# ---------------------------------------------------------------------------- training


def test_gradients_reach_the_filter_mlp():
    m = build()
    x = torch.randn(2, 16, 6, dtype=torch.float64)
    m(x).square().mean().backward()
    for name in ("linear_0.weight", "linear_1.weight", "linear_2.bias", "out.weight", "freq",
                 "skip"):
        grad = m.get_parameter(f"hyena.filter.{name}").grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


# ---------------------------------------------------------------------------- counts, errors


@pytest.mark.parametrize("order,causal", [(1, True), (3, False)])
def test_parameter_count(order, causal):
    d, f, e, k = 6, 8, 5, 3
    m = build(order=order, causal=causal)
    inner = (order + 1) * d
    channels = order * d * (1 if causal else 2)
    want = (inner * d + inner) + (inner * k + inner) + (e * f + f) + 2 * (f * f + f) + f \
        + channels * f + order * d + (d * d + d)
    assert count_params(m.graph)["total"] == want == sum(p.numel() for p in m.parameters())


def test_max_defaults_to_a_fixed_length():
    src = SOURCE.replace(", max = max)", ")").replace("float[B, T, dim]", "float[B, 40, dim]")
    graph = nexusdsl.loads(src, "h.nx").elaborate()
    assert graph.by_name("hyena").attrs["max"] == 40
    src = SOURCE.replace(", max = max)", ")")
    assert nexusdsl.loads(src, "h.nx").elaborate().by_name("hyena").attrs["max"] == 2048


@pytest.mark.parametrize("args,message", [
    ("features = 4", "features = 4 must be odd"),
    ("impl = fast", "impl"),
    ("order = 0", "order"),
])
def test_mistakes_are_located(args, message):
    src = f"""nexus 0.1
model H {{
  input x: float[B, T, 8]
  output y = hyena(x, {args})
}}
"""
    with pytest.raises(nexusdsl.NexusError) as err:
        nexusdsl.loads(src, "bad.nx")
    text = str(err.value)
    assert text.startswith("bad.nx:4:") and message in text, text


def test_integer_tokens_are_refused():
    src = """nexus 0.1
model H {
  input x: int[B, T, 8]
  output y = hyena(x)
}
"""
    with pytest.raises(nexusdsl.NexusError, match=r"bad.nx:4:14: .*hyena needs a float"):
        nexusdsl.loads(src, "bad.nx")


def test_fft_convolution_gradients_equal_the_direct_sums():
    """The FFT convolution's hand-written backward (skip folded into the filter's spectrum)
    against autograd through the explicit sum y[t] = sum_{s<=t} h[t-s] v[s] + skip v[t]."""
    from nexusdsl.ops.hyena_torch import causal_conv_fft

    torch.manual_seed(0)
    B, C, T = 2, 3, 11
    v = torch.randn(B, C, T, dtype=torch.float64, requires_grad=True)
    h = torch.randn(C, T, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(C, dtype=torch.float64, requires_grad=True)

    def direct(v, h, skip):
        cols = [sum(h[:, t - s] * v[..., s] for s in range(t + 1)) for t in range(T)]
        return torch.stack(cols, dim=-1) + skip[:, None] * v

    g = torch.randn(B, C, T, dtype=torch.float64)
    got = torch.autograd.grad((causal_conv_fft(v, h, skip) * g).sum(), (v, h, skip))
    want = torch.autograd.grad((direct(v, h, skip) * g).sum(), (v, h, skip))
    torch.testing.assert_close(causal_conv_fft(v, h, skip), direct(v, h, skip))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(causal_conv_fft, (v, h, skip))


GRAD_SOURCE = """nexus 0.1
model H(dim = 5, order = 2, impl = fft, bias = true) {
  input x: float[B, T, dim]
  output y = hyena(x, order = order, filter = 8, features = 5, max = 32, impl = impl,
                   bias = bias)
}
"""


@pytest.mark.parametrize("order,batch,bias", [(1, 1, True), (2, 1, True), (2, 3, False),
                                              (3, 2, True)])
def test_fused_path_gradients_equal_autograd_through_the_direct_path(order, batch, bias):
    """The causal FFT path runs one hand-written forward and backward (_CausalHyenaCore:
    short convolution as shifted multiply-adds, batched filter spectra); `impl = direct` is
    plain autograd through conv1d. Same parameters, same loss: same gradients everywhere."""
    program = nexusdsl.loads(GRAD_SOURCE, "g.nx")
    grads = []
    for impl in ("fft", "direct"):
        torch.manual_seed(0)
        m = nexusdsl.compile(program, dtype="f64", order=order, impl=impl, bias=bias)
        x = torch.randn(batch, 13, 5, dtype=torch.float64, requires_grad=True)
        g = torch.randn(batch, 13, 5, dtype=torch.float64)
        (m(x) * g).sum().backward()
        grads.append({"x": x.grad} | {n: p.grad for n, p in m.named_parameters()})
    fused, direct = grads
    assert fused.keys() == direct.keys() and len(fused) >= 10
    for name in fused:
        torch.testing.assert_close(fused[name], direct[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("K", [1, 3, 5])
def test_fused_core_passes_gradcheck(K):
    from nexusdsl.ops.hyena_torch import _CausalHyenaCore

    torch.manual_seed(0)
    B, N, d, T = 2, 2, 3, 7

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    u, w, b, h, skip = leaf(B, (N + 1) * d, T), leaf((N + 1) * d, K), leaf((N + 1) * d), \
        leaf(N, d, T), leaf(N, d)
    window = torch.rand(N, d, T, dtype=torch.float64)
    core = lambda u, w, b, h, skip: _CausalHyenaCore.apply(u, w, b, h, window, skip)  # noqa: E731
    assert torch.autograd.gradcheck(core, (u, w, b, h, skip))


def test_a_model_run_in_inference_mode_still_trains():
    """The positional features and decay window are cached per length; made under
    inference_mode they could not be saved for a later backward pass."""
    m = build()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    with torch.inference_mode():
        m(x)
    x.requires_grad_()
    m(x).sum().backward()
    assert x.grad is not None and m.hyena.filter.out.weight.grad.abs().max() > 0
