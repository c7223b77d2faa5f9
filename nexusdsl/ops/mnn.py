"""The Modular Neural Networks paper's training-side operators (family "mnn"):
`selective_relu`, `fast_weights` and `knn_attention`. (`partial` lives with the activations.)
"""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import Field

from nexusdsl.ops.activations import Activation
from nexusdsl.ops.attrs import (
    AxisRef,
    Bool,
    Float,
    PosInt,
    axis_label,
    fixed_width,
    new_axis,
    numel,
    require_float,
    require_rank,
    resolve_axis,
    uniform,
)
from nexusdsl.ops.base import Op, OpAttrs, OpError, same_type_as
from nexusdsl.ops.decode import Decode
from nexusdsl.ops.traits import Traits

# ---------------------------------------------------------------------------- selective_relu


@cache
def _selective_relu():
    import torch

    class SelectiveReLU(torch.autograd.Function):
        """relu forward; backward passes the gradient where the unit is active, and at zero
        outputs only where it is negative (where a descent step raises the pre-activation and
        so can revive the unit). Elsewhere the gradient is passed on unmodified."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * ((x > 0) | (grad < 0)).to(grad.dtype)

    return SelectiveReLU.apply


class SelectiveReLU(Activation):
    """`x |> selective_relu`: relu with the MNN paper's selective gradients. The forward value
    is relu's; in the backward pass, a unit whose output is zero still lets a gradient through
    when the gradient is negative (the update would switch the unit back on), so dead units
    can recover. Active units pass their gradient unmodified, as relu does."""

    name = "selective_relu"
    family = "mnn"

    def torch_fn(self, attrs):
        return _selective_relu()


# ---------------------------------------------------------------------------- fast_weights


class FastWeights(Op):
    """Slow weights plus a decaying Hebbian fast-weight matrix along the sequence (MNN, after
    Ba et al. 2016): `fast_weights(x, decay = 0.9, rate = 0.1)` on `[*, T, d]` tokens.

        y_t = W x_t + b + A_{t-1} x_t,    A_t = decay * A_{t-1} + rate * y_t x_t^T,  A_0 = 0

    The fast matrix A (per sequence, never a parameter) records the synchrony of each output
    with its input; it is causal by construction. `out` sets the output width (default: the
    input's). Computed exactly without a Python loop: y = (I - G)^{-1} z with z = W x + b and
    G[t, s] = rate * decay^(t-1-s) * (x_s . x_t) for s < t, a unit-lower-triangular solve."""

    name = "fast_weights"
    family = "mnn"
    traits = Traits(projection_weights=True)
    parameters = {"weight": "[out or d, d]", "bias": "[out or d] if bias"}

    class Attrs(OpAttrs):
        decay: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.9
        rate: Float = 0.1
        out: PosInt | None = None
        bias: Bool = True

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("fast_weights", x, 2, "[*, T, d]")
        require_float("fast_weights", x)
        width = fixed_width("fast_weights", x)
        if attrs.out is None or attrs.out == width:
            return [same_type_as(x)]
        return [same_type_as(x, (*x.axes[:-1], new_axis(ctx, "out", attrs.out)))]

    def params(self, ctx, inputs, attrs):
        width = inputs[0].axes[-1].size
        out = attrs.out or width
        specs = {"weight": uniform((out, width), width)}
        if attrs.bias:
            specs["bias"] = uniform((out,), width)
        return specs

    def flops(self, inputs, outputs, attrs):
        *lead, T, d = inputs[0]
        out = outputs[0][-1]
        n = numel(tuple(lead))
        return n * (2 * T * d * out + 2 * T * T * d + T * T * out)

    def lower(self, attrs):
        import torch
        import torch.nn.functional as F

        def fast_weights(m, x):
            z = F.linear(x, m.weight, m.bias if attrs.bias else None)  # (*, T, out)
            T = x.shape[-2]
            t = torch.arange(T, device=x.device)
            lag = (t[:, None] - 1 - t[None, :]).clamp_min(0).to(x.dtype)  # t-1-s
            decays = torch.full_like(lag, attrs.decay) ** lag
            strict = (t[None, :] < t[:, None]).to(x.dtype)
            G = attrs.rate * (x @ x.transpose(-1, -2)) * decays * strict  # (*, T, T)
            eye = torch.eye(T, dtype=x.dtype, device=x.device)
            return torch.linalg.solve_triangular(eye - G, z, upper=False, unitriangular=True)

        return fast_weights

    def lower_portable(self, attrs):
        """For MLIR (torch-mlir has no triangular solve): G is strictly lower triangular, so
        (I - G)^-1 = I + G + ... + G^(T-1) = (I + G)(I + G^2)(I + G^4)..., log2(T) matmuls."""
        import torch
        import torch.nn.functional as F

        def fast_weights(m, x):
            z = F.linear(x, m.weight, m.bias if attrs.bias else None)  # (*, T, out)
            T = x.shape[-2]
            t = torch.arange(T, device=x.device)
            lag = (t[:, None] - 1 - t[None, :]).clamp_min(0).to(x.dtype)  # t-1-s
            strict = (t[None, :] < t[:, None]).to(x.dtype)
            power = attrs.rate * (x @ x.transpose(-1, -2)) * attrs.decay ** lag * strict
            y, span = z, 1
            while span < T:  # y = (I + G + ... + G^(2 span - 1)) z
                y = y + power @ y
                power, span = power @ power, 2 * span
            return y

        return fast_weights

    def decode(self, attrs, inputs):
        return _FastWeightsDecode(attrs) if inputs[0].rank == 3 else None


class _FastWeightsDecode(Decode):
    """Incremental fast weights (ops/decode.py): the state is each row's fast matrix A
    [B, out, d]. For n new tokens after A_0 (local t = 1..n), y_t = z_t + decay^(t-1) A_0 x_t
    + rate sum_{s<t} decay^(t-1-s) (x_s . x_t) y_s: the forward's triangular solve with
    z + decay^(t-1) A_0 x_t on the right, then A_n = decay^n A_0 + rate sum_s decay^(n-s)
    y_s x_s^T. The inputs of padded positions are zeroed: they add nothing to A, which is
    zero until a left-padded row's first token, so the row computes what it does alone."""

    def __init__(self, attrs):
        self.attrs = attrs

    def init(self, m, ctx):
        import torch

        out, width = m.weight.shape
        return {"A": torch.zeros((ctx.batch, out, width), dtype=ctx.dtype, device=ctx.device)}

    def run(self, m, state, ctx, x):
        import torch
        import torch.nn.functional as F

        a = self.attrs
        x = x * ctx.mask[..., None].to(x.dtype)
        A = state["A"]
        n = x.shape[-2]
        t = torch.arange(n, device=x.device)
        carried = (a.decay ** t.to(x.dtype))[:, None] * (x @ A.transpose(1, 2))  # (B, n, out)
        z = F.linear(x, m.weight, m.bias if a.bias else None) + carried
        if n == 1:  # nothing earlier in this call: the solve is the identity
            y = z
        else:
            lag = (t[:, None] - 1 - t[None, :]).clamp_min(0).to(x.dtype)
            strict = (t[None, :] < t[:, None]).to(x.dtype)
            G = a.rate * (x @ x.transpose(-1, -2)) * a.decay ** lag * strict
            eye = torch.eye(n, dtype=x.dtype, device=x.device)
            y = torch.linalg.solve_triangular(eye - G, z, upper=False, unitriangular=True)
        ages = (a.decay ** (n - 1 - t).to(x.dtype))[None, :, None]  # decay^(n-s), s = t + 1
        A.mul_(a.decay ** n).add_(a.rate * (y * ages).transpose(1, 2) @ x)
        return y


# ---------------------------------------------------------------------------- knn_attention


class KnnAttention(Op):
    """The MNN paper's nearest-neighbour attention: `knn_attention(x, k = 8, dim_qk = 4)`.

    Every token emits a small query and key (`dim_qk`, 4 or 8 values) and a value (width d).
    Each query attends to its k nearest keys by L1 distance, weighted by inverted normalised
    distance: w_j = (1 / (d_j + eps)) / sum_i (1 / (d_i + eps)), eps = 1e-6. The result goes
    through an output projection. `causal = true` only lets a token see keys at or before it
    (fewer than k early on); `axis = i` attends along another axis, as `attention` does.
    Parameters: q, k [dim_qk, d], v, out [d, d] (biases unless `bias = false`)."""

    name = "knn_attention"
    family = "mnn"
    traits = Traits(projection_weights=True)
    parameters = {"q.weight": "[dim_qk, d]", "q.bias": "[dim_qk] if bias",
                  "k.weight": "[dim_qk, d]", "k.bias": "[dim_qk] if bias",
                  "v.weight": "[d, d]", "v.bias": "[d] if bias",
                  "out.weight": "[d, d]", "out.bias": "[d] if bias"}
    EPS = 1e-6
    CHUNK = 1024  # queries per block, bounding the (T, T) distance matrix

    class Attrs(OpAttrs):
        k: PosInt
        dim_qk: PosInt = 4
        causal: Bool = False
        axis: AxisRef | None = None
        bias: Bool = True

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        require_rank("knn_attention", x, 2, "[*, T, d]")
        if attrs.axis is None:
            return attrs
        axis = resolve_axis("knn_attention", x, attrs.axis, ctx=ctx)
        if axis == x.rank - 1:
            raise OpError(f"knn_attention: {axis_label(x.axes[-1], axis)} holds the channels; "
                          "attend along another axis")
        return attrs.model_copy(update={"axis": axis})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("knn_attention", x)
        fixed_width("knn_attention", x)
        pos = x.rank - 2 if attrs.axis is None else attrs.axis
        seq = x.axes[pos]
        if seq.size is not None and attrs.k > seq.size:
            raise OpError(f"knn_attention: k = {attrs.k} neighbours, but "
                          f"{axis_label(seq, pos)} has only {seq.size} tokens", about=(0,))
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d = inputs[0].axes[-1].size
        specs = {}
        for name, out in (("q", attrs.dim_qk), ("k", attrs.dim_qk), ("v", d), ("out", d)):
            specs[f"{name}.weight"] = uniform((out, d), d)
            if attrs.bias:
                specs[f"{name}.bias"] = uniform((out,), d)
        return specs

    def flops(self, inputs, outputs, attrs):
        sizes = inputs[0]
        T = sizes[-2 if attrs.axis is None else attrs.axis]
        d, c = sizes[-1], attrs.dim_qk
        batch = numel(sizes) // (T * d)
        projections = 2 * T * d * (2 * c + 2 * d)
        return batch * (projections + 3 * T * T * c + 2 * T * attrs.k * d)

    def lower(self, attrs):
        return _knn_attention(attrs, self.EPS, self.CHUNK)

    def lower_portable(self, attrs):
        return _knn_attention(attrs, self.EPS, self.CHUNK, portable=True)


def _knn_attention(attrs, eps: float, chunk: int, portable: bool = False):
    import torch
    import torch.nn.functional as F

    def l1(q, k):  # torch-mlir has no cdist: broadcast to (N, C, T, c) instead
        return (q[:, :, None, :] - k[:, None, :, :]).abs().sum(-1)

    def project(m, name, x):
        layer = getattr(m, name)
        return F.linear(x, layer.weight, layer.bias if attrs.bias else None)

    def neighbours(q, k, v, start):
        # q: (N, C, c) a chunk of queries starting at `start`; k: (N, T, c); v: (N, T, d)
        dist = l1(q, k) if portable else torch.cdist(q, k, p=1)  # (N, C, T)
        T = k.shape[1]
        if attrs.causal:
            rows = torch.arange(start, start + q.shape[1], device=q.device)[:, None]
            dist = dist.masked_fill(torch.arange(T, device=q.device)[None, :] > rows,
                                    float("inf"))
        near, idx = dist.topk(min(attrs.k, T), dim=-1, largest=False)  # (N, C, k)
        inv = 1.0 / (near + eps)  # inf distance -> weight 0
        w = inv / inv.sum(-1, keepdim=True)
        N = v.shape[0]
        flat = idx + torch.arange(N, device=v.device)[:, None, None] * T
        gathered = v.reshape(N * T, -1)[flat.reshape(-1)].reshape(*idx.shape, -1)
        return (w.unsqueeze(-1) * gathered).sum(-2)  # (N, C, d)

    def knn_attention(m, x):
        if attrs.axis is not None:
            x = x.movedim(attrs.axis, -2)
        lead, (T, D) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, T, D)
        q, k, v = (project(m, n, flat) for n in ("q", "k", "v"))
        y = torch.cat([neighbours(q[:, s:s + chunk], k, v, s) for s in range(0, T, chunk)], 1)
        y = project(m, "out", y).reshape(*lead, T, D)
        return y if attrs.axis is None else y.movedim(-2, attrs.axis)

    return knn_attention
