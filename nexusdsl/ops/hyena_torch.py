"""The torch implementation of `hyena` (ops/hyena.py): implicit filters, the three long
convolutions (FFT, direct, real-DFT matmuls) and the operator's recurrence. Imported only when
lowering."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from nexusdsl.ops.decode import Decode
from nexusdsl.ops.trace_torch import tracing

FAST_DECAY, SLOW_DECAY, TARGET = 0.3, 1.5, 1e-2  # the paper's exponential modulation


def exact_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the filters are computed in for a model of `dtype`: float64 stays, anything else
    is float32. In bf16 only 769 of 4,096 positions t = i / (max - 1) would be distinct (8 bits
    of mantissa), and the filters made from them would be silently wrong."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def positional_features(T: int, features: int, max_len: int, like: torch.Tensor):
    """(z, t): z [T, features] = (t, cos(f w), -sin(f w)) with t = i / (max - 1) and
    w = 2 pi i / max, for `features // 2` frequencies f spread over [1e-4, bands - 1]; in
    float32 (float64 for a float64 `like`), whatever the model's dtype."""
    exact = exact_dtype(like.dtype)
    i = torch.arange(T, device=like.device, dtype=exact)
    t = i / max(max_len - 1, 1)
    bands = (features - 1) // 2
    step = (bands - 1 - 1e-4) / (bands - 1) if bands > 1 else 0.0
    f = 1e-4 + torch.arange(bands, device=like.device, dtype=exact) * step  # (bands,)
    angle = (2 * math.pi / max_len) * i[:, None] * f[None, :]  # (T, bands)
    return torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1), t


def decay_window(t: torch.Tensor, channels: int) -> torch.Tensor:
    """exp(-t |delta_c|), (T, channels): channel 0 reaches 1e-2 at t = 1.5, the last at 0.3.
    Every delta_c is negative (log 1e-2 over a positive time), so this is exp(t delta_c),
    written without a negation: torch-mlir's TOSA lowering of this `neg` failed once the
    window was traced before the filter MLP."""
    slow, fast = math.log(TARGET) / SLOW_DECAY, math.log(TARGET) / FAST_DECAY
    c = torch.arange(channels, device=t.device, dtype=t.dtype)
    delta = slow + (fast - slow) * c / max(channels - 1, 1)  # all < 0
    return torch.exp(t[:, None] * delta[None, :])


def implicit_filters(m, T: int, attrs, like: torch.Tensor) -> torch.Tensor:
    """The long filters for T positions, (channels, T): the sine MLP on positional features,
    times the decay window, computed in float32 (or float64) and given in `like`'s dtype."""
    raw, window = filter_mlp(m, T, attrs, like)
    return _as(raw * window, like.dtype)


def filter_mlp(m, T: int, attrs, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The filter MLP's output and the decay window it is multiplied by, both (channels, T),
    in float32 (float64 for a float64 `like`): the weights of a bf16 or fp16 model are read
    in that dtype, and autocast is off here. `m.filter` holds linear_0..2, out, freq."""
    with _without_autocast(like):
        return _filter_mlp(m, T, attrs, like)


def _filter_mlp(m, T: int, attrs, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flt = m.filter
    channels = flt.out.weight.shape[0]
    z, window = length_constants(m, T, attrs, channels, like)
    freq = _as(flt.freq, z.dtype)
    h = z
    for i in range(3):
        layer = getattr(flt, f"linear_{i}")
        weight, bias = _as(layer.weight, z.dtype), _as(layer.bias, z.dtype)
        # sin(freq * (W h + b)) with freq folded into the small W and b: one pass fewer over
        # the (T, filter) activations each way
        h = torch.sin(F.linear(h, freq[:, None] * weight, freq * bias))
    # channels first straight from the matmul (the FFTs run along T): no transpose copy
    h = torch.mm(_as(flt.out.weight, z.dtype), h.transpose(0, 1))  # (channels, T)
    return h, window


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, with no cast traced when it is already (the exported float32 form)."""
    return t if t.dtype == dtype else t.to(dtype)


def _without_autocast(like: torch.Tensor):
    """Autocast switched off for the filters, when it is on (never entered while exporting)."""
    kind = like.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def length_constants(m, T: int, attrs, channels: int, like: torch.Tensor):
    """The positional features (T, features) and the decay window (channels, T), constants of
    the length: made once per length and kept on the module (not parameters, not saved),
    except while a compiler traces."""
    if tracing():
        return _make_length_constants(T, attrs, channels, like)
    cache = m.__dict__.setdefault("_length_constants", {})
    key = (T, channels, like.device, exact_dtype(like.dtype))
    if key not in cache:
        cache.clear()  # one length at a time: a model is trained at one length
        # made in inference mode, they could not be saved for a later backward pass
        with torch.inference_mode(False), torch.no_grad():
            cache[key] = _make_length_constants(T, attrs, channels, like)
    return cache[key]


def _make_length_constants(T: int, attrs, channels: int, like: torch.Tensor):
    z, t = positional_features(T, attrs.features, attrs.max, like)
    return z, decay_window(t, channels).transpose(0, 1).contiguous()


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
        if fused_applies(attrs, impl, m, x):
            return fused_causal_hyena(m, x, attrs)
        lead, (T, d) = x.shape[:-2], x.shape[-2:]
        bias = attrs.bias
        u = F.linear(x.reshape(-1, T, d), m.in_proj.weight, m.in_proj.bias if bias else None)
        u = F.conv1d(F.pad(u.transpose(1, 2), padding), m.short.weight, m.short.bias,
                     groups=(n + 1) * d)  # (B, (N+1)d, T)
        *gates, v = u.split(d, dim=1)  # x^1 .. x^N, v: (B, d, T) each
        h = implicit_filters(m, T, attrs, x).view(-1, d, T)  # (N or 2N, d, T)
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


# ---------------------------------------------------------------------------- the fused core


def short_causal_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The depthwise causal convolution of `F.conv1d(F.pad(u, (K - 1, 0)), weight[:, None],
    bias, groups = C)` as K multiply-adds of shifted slices (tap j reads K - 1 - j steps
    back), written into `out` when given. No padded copy of u is made."""
    K = weight.shape[-1]
    out = torch.addcmul(bias[:, None], u, weight[:, K - 1:], out=out)
    for j in range(K - 1):
        add_shifted(out, u, weight[:, j], K - 1 - j)
    return out


def add_shifted(out: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, shift: int) -> None:
    """out[..., c, t] += weight[c] * src[..., c, t - shift] where t - shift is in range."""
    T = out.shape[-1]
    if abs(shift) >= T:
        return
    w = weight[:, None]
    if shift >= 0:
        out[..., shift:].addcmul_(src[..., :T - shift], w)
    else:
        out[..., :T + shift].addcmul_(src[..., -shift:], w)


def shifted_dot(a: torch.Tensor, b: torch.Tensor, shift: int) -> torch.Tensor:
    """sum over leading axes and t of a[..., c, t] * b[..., c, t - shift], per channel c, as
    batched dot products (no product tensor)."""
    T = a.shape[-1]
    if abs(shift) >= T:
        return a.new_zeros(a.shape[-2])
    if shift >= 0:
        a, b = a[..., shift:], b[..., :T - shift]
    else:
        a, b = a[..., :T + shift], b[..., -shift:]
    C, n = a.shape[-2], a.shape[-1]
    a = a.reshape(-1, C, n).transpose(0, 1)  # (C, B, n): channel-major batches
    b = b.reshape(-1, C, n).transpose(0, 1)
    if a.shape[1] > 1:
        return torch.einsum("cbt,cbt->c", a, b)
    return torch.bmm(a, b.transpose(1, 2)).reshape(C)


class _CausalHyenaCore(torch.autograd.Function):
    """Everything between the input and the output projections of a causal `hyena` with FFT
    long convolutions, forward and backward written out: the short causal depthwise
    convolution, then the recurrence `v <- x^n * (h^n conv v + skip^n v)`.

    Autograd's graph of the same computation makes a fresh full-size tensor at every step
    (pads, transposes, zero-filled slices, complex products), and at long lengths those
    memory passes cost as much as the FFTs on this machine (benchmarks/hyena.py). Here the
    signal to transform is written straight into the first half of one zero-padded buffer
    (the FFTs of 2T points then need no padding copy), the filters of all orders are
    transformed in one batched FFT with the skip added to their tap 0, and the filters'
    gradients are accumulated as spectra and inverted once. The gradients are the
    correlations of _FFTConv's docstring.

    u: (B, (N+1)d, T) projected inputs, the gates x^1 .. x^N then v; short_w ((N+1)d, K),
    short_b ((N+1)d,); h, window: (N, d, T) the filter MLP's output and the decay window
    (a constant) it is multiplied by; skip: (N, d). Returns the last v, (B, d, T).
    """

    @staticmethod
    def forward(ctx, u, short_w, short_b, h, window, skip):
        B, _, T = u.shape
        N, d = h.shape[0], h.shape[1]
        gd = N * d
        gates = short_causal_conv(u[:, :gd], short_w[:gd], short_b[:gd]).view(B, N, d, T)
        filters = h.new_zeros(N, d, 2 * T)  # zero-padded: the FFTs need no padding copy
        torch.mul(h, window, out=filters[..., :T])
        filters[..., 0] += skip  # the skip is tap 0 of the filter
        hf = torch.fft.rfft(filters)
        padded = u.new_zeros(B, d, 2 * T)  # the signal; its second half stays zero
        short_causal_conv(u[:, gd:], short_w[gd:], short_b[gd:], out=padded[..., :T])
        product = hf.new_empty(B, d, T + 1)
        spectra, convolved = [], []
        for i in range(N):
            vf = torch.fft.rfft(padded)
            z = torch.fft.irfft(torch.mul(vf, hf[i], out=product), n=2 * T)[..., :T]
            spectra.append(vf)
            convolved.append(z)
            last = i == N - 1
            v = torch.mul(gates[:, i], z, out=None if last else padded[..., :T])
        ctx.save_for_backward(u, short_w, gates, window, hf, *spectra, *convolved)
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        u, short_w, gates, window, hf, *rest = ctx.saved_tensors
        B, N, d, T = gates.shape
        spectra, convolved = rest[:N], rest[N:]
        ds = torch.empty_like(u)  # the gradient of the short convolution's output
        dgates = ds[:, :N * d].view(B, N, d, T)
        dhf = torch.empty_like(hf)
        padded = grad.new_zeros(B, d, 2 * T)
        g = grad
        for i in reversed(range(N)):
            torch.mul(g, convolved[i], out=dgates[:, i])
            torch.mul(g, gates[:, i], out=padded[..., :T])
            gf = torch.fft.rfft(padded)
            if B > 1:
                torch.sum(gf * spectra[i].conj(), dim=0, out=dhf[i])
            else:
                torch.mul(gf[0], spectra[i][0].conj(), out=dhf[i])
            g = torch.fft.irfft(gf.mul_(hf[i].conj()), n=2 * T)[..., :T]
        ds[:, N * d:] = g
        correlation = torch.fft.irfft(dhf, n=2 * T)[..., :T]  # (N, d, T)
        dh = correlation * window if ctx.needs_input_grad[3] else None
        dskip = correlation[..., 0].contiguous() if ctx.needs_input_grad[5] else None
        K = short_w.shape[-1]
        du = dw = db = None
        if ctx.needs_input_grad[0]:  # the transposed convolution: taps read ahead
            du = ds * short_w[:, K - 1:]
            for j in range(K - 1):
                add_shifted(du, ds, short_w[:, j], -(K - 1 - j))
        if ctx.needs_input_grad[1]:
            dw = torch.stack([shifted_dot(ds, u, K - 1 - j) for j in range(K)], dim=-1)
        if ctx.needs_input_grad[2]:
            db = ds.sum(dim=(0, 2))
        return du, dw, db, dh, None, dskip


def fused_applies(attrs, impl: str, m, x: torch.Tensor) -> bool:
    """The fused core covers the default configuration: causal FFT convolutions in float32 or
    float64, without dropout between the gates (or with it switched off by eval mode)."""
    return (attrs.causal and impl == "fft" and x.dtype in (torch.float32, torch.float64)
            and not (attrs.dropout and m.training))


def fused_causal_hyena(m, x: torch.Tensor, attrs) -> torch.Tensor:
    """`hyena` with channels first from the input projection to the output projection: the
    projections are batched matmuls with transposed operands, so no transpose is copied."""
    lead, (T, d) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, T, d)
    B = xb.shape[0]
    w_in = m.in_proj.weight.expand(B, -1, -1)
    if attrs.bias:
        bias = m.in_proj.bias[None, :, None].expand(B, -1, T)
        u = torch.baddbmm(bias, w_in, xb.transpose(1, 2))  # (B, (N+1)d, T)
    else:
        u = torch.bmm(w_in, xb.transpose(1, 2))
    raw, window = filter_mlp(m, T, attrs, x)
    shape = (attrs.order, d, T)
    v = _CausalHyenaCore.apply(u, m.short.weight[:, 0, :], m.short.bias, raw.view(shape),
                               window.view(shape), m.filter.skip)
    w_out = m.out_proj.weight.transpose(0, 1).expand(B, -1, -1)
    if attrs.bias:
        y = torch.baddbmm(m.out_proj.bias.expand(B, T, -1), v.transpose(1, 2), w_out)
    else:
        y = torch.bmm(v.transpose(1, 2), w_out)
    return y.reshape(*lead, T, d)


# ---------------------------------------------------------------------------- decoding


class HyenaDecode(Decode):
    """Incremental causal Hyena (ops/decode.py). The state: the last short - 1 projected
    inputs (for the short convolution), and for each order n the history of the signal its
    long convolution reads (v, then x^n * z^n), [B, d, capacity] in absolute slots, with the
    long filters made once for `capacity` taps (a filter's tap t depends on t alone, not on
    the length). A step's output at slot t is sum_{s <= t} h[t - s] v[s] + skip v[t]: one
    dot product with the reversed filter per channel (a prefill of many tokens: one FFT
    convolution of the history). Padded positions write zeros, which is what a left-padded
    row's own run sees before its first token, so its taps, counted in slots, are its own."""

    def __init__(self, attrs):
        self.attrs = attrs

    def init(self, m, ctx):
        a, cap = self.attrs, ctx.capacity
        inner, kernel = m.short.weight.shape[0], m.short.weight.shape[-1]
        d = inner // (a.order + 1)
        like = torch.zeros((), dtype=ctx.dtype, device=ctx.device)
        with torch.no_grad():
            filters = implicit_filters(m, cap, a, like).view(a.order, d, cap)
        # reversed, then cap - 1 zeros: taps t - s of slots s = 0..cap-1 at slot t are
        # reversed[cap - 1 - t + s] (zero for s > t)
        reversed_ = torch.cat([filters.flip(-1), torch.zeros_like(filters[..., 1:])], dim=-1)
        return {"short": torch.zeros((ctx.batch, inner, kernel - 1), dtype=ctx.dtype,
                                     device=ctx.device),
                "history": torch.zeros((a.order, ctx.batch, d, cap), dtype=ctx.dtype,
                                       device=ctx.device),
                "filters": filters, "reversed": reversed_}

    def run(self, m, state, ctx, x):
        a = self.attrs
        real = ctx.mask[:, None, :].to(x.dtype)  # (B, 1, new)
        u = F.linear(x, m.in_proj.weight, m.in_proj.bias if a.bias else None)
        u = u.transpose(1, 2) * real  # (B, (N+1)d, new), zero at padded positions
        seen = torch.cat([state["short"], u], dim=-1)
        u = F.conv1d(seen, m.short.weight, m.short.bias, groups=u.shape[1])
        state["short"].copy_(seen[..., seen.shape[-1] - state["short"].shape[-1]:])
        *gates, v = u.split(u.shape[1] // (a.order + 1), dim=1)
        slots = ctx.slots(x.shape[-2])
        for i in range(a.order):
            v = v * real
            history = state["history"][i]
            history.index_copy_(-1, slots, v)
            z = self._long_conv(state, i, history, slots) + m.filter.skip[i][:, None] * v
            v = gates[i] * z
        return F.linear(v.transpose(1, 2), m.out_proj.weight, m.out_proj.bias if a.bias else None)

    @staticmethod
    def _long_conv(state, i: int, history, slots):
        """sum_{s <= t} h[t - s] history[s] at the new slots t: (B, d, new)."""
        if slots.shape[0] > 1:
            whole = causal_conv_fft(history, state["filters"][i])
            return whole.index_select(-1, slots)
        cap = history.shape[-1]
        taps = (cap - 1 - slots) + torch.arange(cap, device=slots.device)
        kernel = state["reversed"][i].index_select(-1, taps)  # (d, cap)
        return (history * kernel).sum(-1, keepdim=True)
