"""The torch implementation of `hyena` (ops/hyena.py): implicit filters, the three long
convolutions (FFT, direct, real-DFT matmuls) and the operator's recurrence. Imported only when
lowering."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FAST_DECAY, SLOW_DECAY, TARGET = 0.3, 1.5, 1e-2  # the paper's exponential modulation


def positional_features(T: int, features: int, max_len: int, like: torch.Tensor):
    """(z, t): z [T, features] = (t, cos(f w), -sin(f w)) with t = i / (max - 1) and
    w = 2 pi i / max, for `features // 2` frequencies f spread over [1e-4, bands - 1]."""
    i = torch.arange(T, device=like.device, dtype=like.dtype)
    t = i / max(max_len - 1, 1)
    bands = (features - 1) // 2
    step = (bands - 1 - 1e-4) / (bands - 1) if bands > 1 else 0.0
    f = 1e-4 + torch.arange(bands, device=like.device, dtype=like.dtype) * step  # (bands,)
    angle = (2 * math.pi / max_len) * i[:, None] * f[None, :]  # (T, bands)
    return torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1), t


def decay_window(t: torch.Tensor, channels: int) -> torch.Tensor:
    """exp(-t |delta_c|), (T, channels): channel 0 reaches 1e-2 at t = 1.5, the last at 0.3."""
    slow, fast = math.log(TARGET) / SLOW_DECAY, math.log(TARGET) / FAST_DECAY
    c = torch.arange(channels, device=t.device, dtype=t.dtype)
    delta = slow + (fast - slow) * c / max(channels - 1, 1)
    return torch.exp(-t[:, None] * delta.abs()[None, :])


def implicit_filters(m, T: int, attrs, like: torch.Tensor) -> torch.Tensor:
    """The long filters for T positions, (channels, T): the sine MLP on positional features,
    times the decay window. `m.filter` holds linear_0..2, out, freq."""
    flt = m.filter
    z, t = positional_features(T, attrs.features, attrs.max, like)
    h = z
    for i in range(3):
        layer = getattr(flt, f"linear_{i}")
        h = torch.sin(flt.freq * F.linear(h, layer.weight, layer.bias))  # (T, filter)
    h = F.linear(h, flt.out.weight)  # (T, channels)
    return (h * window_for(m, t, h.shape[-1])).transpose(0, 1)  # (channels, T)


def window_for(m, t: torch.Tensor, channels: int) -> torch.Tensor:
    """The decay window (T, channels), a constant of the length: made once per length and
    kept on the module (not a parameter, not saved), except while a compiler traces."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return decay_window(t, channels)
    cache = m.__dict__.setdefault("_decay_windows", {})
    key = (t.shape[0], channels, t.device, t.dtype)
    if key not in cache:
        cache.clear()  # one length at a time: a model is trained at one length
        cache[key] = decay_window(t, channels)
    return cache[key]


# ---------------------------------------------------------------------------- long convolutions


def causal_conv_fft(v: torch.Tensor, h: torch.Tensor,
                    skip: torch.Tensor | None = None) -> torch.Tensor:
    """y[..., c, t] = sum_{s <= t} h[c, t - s] v[..., c, s] (+ skip[c] v[..., c, t]), by FFT
    of 2T points (no wrap)."""
    dtype = v.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # no half FFTs
    if skip is None:
        skip = torch.zeros((), dtype=work, device=v.device)
    return _FFTConv.apply(v.to(work), h.to(work), skip.to(work)).to(dtype)


class _FFTConv(torch.autograd.Function):
    """The FFT convolution with its gradients written as the two correlations they are, each
    one more real FFT and inverse reusing the forward's spectra. Autograd's own backward of
    rfft/irfft goes through complex-to-complex transforms of the padded length and costs
    about twice as much at long lengths (benchmarks/hyena.py).

    The skip term is tap 0 of the filter, and a tap-0 impulse has a flat spectrum: it is
    added to every frequency of H, for free. With v and h zero-padded to 2T the circular
    correlations equal the linear ones for the first T lags: dv[s] = sum_t g[t] h[t - s] =
    irfft(G conj(H))[s], dh[k] = sum_t g[t] v[t - k] = irfft(G conj(V))[k] (summed over v's
    leading axes, which h is broadcast over), and d skip = dh[0]."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        T = v.shape[-1]
        vf = torch.fft.rfft(v, n=2 * T)
        hf = torch.fft.rfft(h, n=2 * T) + (skip[..., None] if skip.dim() else skip)
        ctx.save_for_backward(vf, hf)
        ctx.skip_shape = skip.shape
        return torch.fft.irfft(vf * hf, n=2 * T)[..., :T]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        vf, hf = ctx.saved_tensors
        T = grad.shape[-1]
        gf = torch.fft.rfft(grad, n=2 * T)
        dv = dh = dskip = None
        if ctx.needs_input_grad[0]:
            dv = torch.fft.irfft(gf * hf.conj(), n=2 * T)[..., :T]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            spectra = gf * vf.conj()
            lead = spectra.dim() - hf.dim()
            if lead > 0:  # h was broadcast over v's leading axes: sum before the inverse
                spectra = spectra.sum(dim=tuple(range(lead)))
            correlation = torch.fft.irfft(spectra, n=2 * T)[..., :T]
            dh = correlation if ctx.needs_input_grad[1] else None
            if ctx.needs_input_grad[2]:
                dskip = correlation[..., 0].sum_to_size(ctx.skip_shape)
        return dv, dh, dskip


def causal_conv_direct(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The same as a depthwise convolution with a kernel of T taps (cross-correlation with the
    reversed filter over T - 1 zeros of left padding)."""
    lead, (C, T) = v.shape[:-2], v.shape[-2:]
    y = F.conv1d(F.pad(v.reshape(-1, C, T), (T - 1, 0)), h.flip(-1).unsqueeze(1), groups=C)
    return y.reshape(*lead, C, T)


def _dft_basis(T: int, like: torch.Tensor):
    """cos / sin of 2 pi f t / 2T for t < T, f <= T, and the inverse's weights (1, 2, ..., 2, 1)."""
    t = torch.arange(T, device=like.device, dtype=like.dtype)
    f = torch.arange(T + 1, device=like.device, dtype=like.dtype)
    angle = (math.pi / T) * t[:, None] * f[None, :]  # (T, T + 1)
    ends = (f == 0) | (f == T)
    weights = torch.where(ends, torch.ones_like(f), torch.full_like(f, 2.0))
    return torch.cos(angle), torch.sin(angle), weights


def causal_conv_dft(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The same with real-DFT matmuls of 2T points: only the first T samples of the padded
    signals are non-zero, and only the first T outputs are kept."""
    T = v.shape[-1]
    cos, sin, weights = _dft_basis(T, v)
    vr, vi = v @ cos, -(v @ sin)  # (..., C, T + 1)
    hr, hi = h @ cos, -(h @ sin)  # (C, T + 1)
    pr, pi = vr * hr - vi * hi, vr * hi + vi * hr
    return ((pr * weights) @ cos.T - (pi * weights) @ sin.T) / (2 * T)


CONVS = {"fft": causal_conv_fft, "direct": causal_conv_direct, "dft": causal_conv_dft}


def long_conv(v: torch.Tensor, h: torch.Tensor, causal: bool, impl: str) -> torch.Tensor:
    """v (..., C, T) with filters h (C, T) causal, or (2C, T) two-sided: the second half is run
    on the reversed sequence with its tap 0 left out (tap 0 belongs to the first half)."""
    conv = CONVS[impl]
    if causal:
        return conv(v, h)
    C = v.shape[-2]
    ahead, back = h[:C], h[C:]
    back = torch.cat([torch.zeros_like(back[:, :1]), back[:, 1:]], dim=-1)
    return conv(v, ahead) + conv(v.flip(-1), back).flip(-1)


# ---------------------------------------------------------------------------- the operator


def hyena_forward(attrs, impl: str):
    """fn(m, x) for x (*, T, d): projections, short convolution, the order-N recurrence of
    long convolutions and gates, output projection."""
    n, causal, k = attrs.order, attrs.causal, attrs.short
    padding = (k - 1, 0) if causal else ((k - 1) // 2, k // 2)

    def hyena(m, x):
        lead, (T, d) = x.shape[:-2], x.shape[-2:]
        bias = attrs.bias
        u = F.linear(x.reshape(-1, T, d), m.in_proj.weight, m.in_proj.bias if bias else None)
        u = F.conv1d(F.pad(u.transpose(1, 2), padding), m.short.weight, m.short.bias,
                     groups=(n + 1) * d)  # (B, (N+1)d, T)
        *gates, v = u.split(d, dim=1)  # x^1 .. x^N, v: (B, d, T) each
        h = implicit_filters(m, T, attrs, x).reshape(-1, d, T)  # (N or 2N, d, T)
        for i in range(n):
            filt = h[i] if causal else torch.cat([h[i], h[n + i]], dim=0)
            if causal and impl == "fft":  # the skip rides in the filter's spectrum
                z = causal_conv_fft(v, filt, m.filter.skip[i])
            else:
                z = long_conv(v, filt, causal, impl) + m.filter.skip[i][:, None] * v
            v = gates[i] * z
            if attrs.dropout:
                v = F.dropout(v, attrs.dropout, m.training)
        y = F.linear(v.transpose(1, 2), m.out_proj.weight, m.out_proj.bias if bias else None)
        return y.reshape(*lead, T, d)

    return hyena
