"""The torch implementations of the fused ops (ops/fused.py), imported only when lowering.

Every mode-n product here is a batched matmul on a *view* of the input: for the axis at
position p of x, x.view(lead, n, rest) with lead = prod(sizes before p) and rest = prod(sizes
after p), and the matrix multiplies from the left. No permute copies in either direction,
which is where einsum loses its time on CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from functools import cache

import torch
import torch.nn.functional as F

from nexusdsl.ops.axis_torch import Axial, random_mask
from nexusdsl.ops.norms import is_half

# ---------------------------------------------------------------------------- helpers


def _param(m, key: str, leaf: str) -> torch.Tensor:
    return m.get_parameter(f"{key}.{leaf}" if key else leaf)


def mode_product(x: torch.Tensor, p: int, w: torch.Tensor,
                 b: torch.Tensor | None = None) -> torch.Tensor:
    """w [to, n] applied along axis p of x (the mode-p product), plus a bias b [to]."""
    shape = x.shape
    lead, n, rest = math.prod(shape[:p]), shape[p], math.prod(shape[p + 1:])
    if p == x.dim() - 1:
        return F.linear(x, w, b)  # the last axis: one GEMM over every row
    xv = x.reshape(lead, n, rest)
    if b is not None:
        y = torch.baddbmm(b.view(1, -1, 1).expand(lead, -1, rest), w.expand(lead, *w.shape), xv)
    else:
        y = torch.bmm(w.expand(lead, *w.shape), xv)
    return y.view(*shape[:p], w.shape[0], *shape[p + 1:])


# ---------------------------------------------------------------------------- linear_act


def linear_act(attrs):
    fn = _activation(attrs.act)

    def linear_act(m, x):
        return fn(m, F.linear(x, m.weight, m.bias if attrs.bias else None))

    return linear_act


# ---------------------------------------------------------------------------- axial_mix


class AxialMix:
    """The `products` and `dense` strategies of `axial_mix` (see ops/fused.py)."""

    def __init__(self, attrs):
        from nexusdsl.ops.fused import _mix_like

        self.attrs = attrs
        self.einsum = Axial(_mix_like(attrs))  # rows of share = none keep einsum's indexing

    def weight(self, m, i: int) -> torch.Tensor:
        return self.einsum.weight(m, i)

    def bias(self, m, i: int) -> torch.Tensor | None:
        return _param(m, self.einsum.key(i), "bias") if self.attrs.bias else None

    def product(self, m, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.attrs.share[i] == "none":
            return self.einsum.product(m, x, i)
        return mode_product(x, self.attrs.axes[i], self.weight(m, i), self.bias(m, i))

    def products(self, m, x: torch.Tensor) -> torch.Tensor:
        if self.attrs.order == "sequential":
            for i in range(len(self.attrs.axes)):
                x = self.product(m, x, i)
            return x
        y = self.product(m, x, 0)
        for i in range(1, len(self.attrs.axes)):
            y = y.add_(self.product(m, x, i))  # bmm keeps its inputs, not its output
        return y

    def dense(self, m, x: torch.Tensor) -> torch.Tensor:
        grid = sorted(self.attrs.axes)
        order = [self.attrs.axes.index(p) for p in grid]
        mats = [self.weight(m, i) for i in order]
        if self.attrs.order == "sequential":
            matrix = mats[0]
            for w in mats[1:]:
                matrix = torch.kron(matrix, w)
        else:
            matrix = kron_sum(mats)
        first, last = grid[0], grid[-1]
        shape = x.shape
        lead, rest = math.prod(shape[:first]), math.prod(shape[last + 1:])
        xv = x.reshape(lead, matrix.shape[1], rest)
        y = torch.bmm(matrix.expand(lead, *matrix.shape), xv)
        sizes = [self.attrs.to[i] for i in order]
        return y.view(*shape[:first], *sizes, *shape[last + 1:])

    def __call__(self, m, x: torch.Tensor) -> torch.Tensor:
        pre, post = self.attrs.pre, self.attrs.post
        if pre is not None:
            x = x.reshape(_view_shape(x, pre))
        y = self.dense(m, x) if self.attrs.strategy == "dense" else self.products(m, x)
        if post is not None:
            y = y.reshape(_view_shape(y, post))
        return y


def _view_shape(x: torch.Tensor, view: dict) -> list[int]:
    """The shape of a folded layout: fixed sizes, `-1` for the one symbolic axis, or the
    size of input axis k written as {"axis": k}."""
    return [x.shape[s["axis"]] if isinstance(s, dict) else s for s in view["shape"]]


def kron_sum(mats: list[torch.Tensor]) -> torch.Tensor:
    """sum_a I (x) .. (x) W_a (x) .. (x) I: the matrix of a parallel axial mix over the
    flattened grid (row-major, the first grid axis the slowest)."""
    sizes = [w.shape[0] for w in mats]
    total = None
    for a, w in enumerate(mats):
        before, after = math.prod(sizes[:a]), math.prod(sizes[a + 1:])
        term = torch.kron(torch.kron(_eye(before, w), w), _eye(after, w))
        total = term if total is None else total + term
    return total


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def axial_mix(attrs):
    return AxialMix(attrs)


# ---------------------------------------------------------------------------- mix_chain


def mix_chain(attrs):
    last = len(attrs.steps) - 1

    def chain(m, x, *absorbed):
        it = iter(absorbed)
        w_total, b_total = None, None
        for k, step in enumerate(attrs.steps):
            if k < last:
                w, b = next(it), (next(it) if step["bias"] else None)
            else:
                w = _param(m, attrs.key, "weight")
                b = _param(m, attrs.key, "bias") if step["bias"] else None
            w = w.tril() if step["causal"] else w
            if w_total is not None:
                b_total = None if b_total is None else w @ b_total
                w_total = w @ w_total
            else:
                w_total = w
            if b is not None:
                b_total = b if b_total is None else b_total + b
        return mode_product(x, attrs.axis, w_total, b_total)

    return chain


# ---------------------------------------------------------------------------- sparse_mix


@cache
def sparse_structure(cells: int, density: float, seed: int, causal: bool):
    """The mask's connections in row-major order: (rows, cols, crow) as int64 tensors, and
    the permutation listing them column-major (the transposed matrix's CSR order)."""
    mask = random_mask(cells, density, seed, causal)
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(cells + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=cells).cumsum(0)
    by_col = torch.argsort(cols * cells + rows)
    ccol = torch.zeros(cells + 1, dtype=torch.int64)
    ccol[1:] = torch.bincount(cols, minlength=cells).cumsum(0)
    return rows, cols, crow, by_col, ccol


def _csr(crow, col, values, cells):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, (cells, cells), check_invariants=False)


class CsrMatmul(torch.autograd.Function):
    """y = A x for a sparse A (CSR, fixed structure, trainable values) and dense x [cells, N].
    Backward: dx = A^T dy (the transpose's CSR, precomputed), dvalues = (dy x^T) sampled at
    A's connections (sampled_addmm): no dense cells x cells matrix in either direction."""

    @staticmethod
    def forward(ctx, values, x, structure, cells):
        rows, cols, crow, by_col, ccol = structure
        ctx.save_for_backward(values, x)
        ctx.structure, ctx.cells = structure, cells
        return _csr(crow, cols, values, cells) @ x

    @staticmethod
    def backward(ctx, dy):
        values, x = ctx.saved_tensors
        rows, cols, crow, by_col, ccol = ctx.structure
        cells = ctx.cells
        dx = dvalues = None
        if ctx.needs_input_grad[1]:
            dx = _csr(ccol, rows[by_col], values[by_col], cells) @ dy
        if ctx.needs_input_grad[0]:
            pattern = _csr(crow, cols, torch.zeros_like(values), cells)
            dvalues = torch.sparse.sampled_addmm(pattern, dy.contiguous(), x.t().contiguous(),
                                                 beta=0.0).values()
        return dvalues, dx, None, None


def _csr_in_float32(values, x, structure, cells):
    """CsrMatmul in float32 (float64 stays) with autocast off, cast back to x's dtype: sparse
    CSR products have no bf16 or fp16 kernel on the CPU (nor one for mixed dtypes anywhere),
    and autocast would hand them a bf16 x."""
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    kind = x.device.type
    off = (torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind)
           and torch.is_autocast_enabled(kind) else contextlib.nullcontext())
    with off:
        y = CsrMatmul.apply(_as(values, work), _as(x, work), structure, cells)
    return _as(y, x.dtype)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


class SparseMix:
    def __init__(self, attrs):
        self.attrs = attrs
        self.grid = sorted(attrs.axes)
        cpu = sparse_structure(attrs.cells, attrs.density, attrs.seed, attrs.causal)
        # built once, here, not while torch.compile traces; the gather kernel's padded layout
        # too, so that a forward reads nothing back from the device
        self._structures = {"cpu": (*cpu, *gather_layout(cpu, attrs.cells))}

    def structure(self, cells: int, device):
        assert cells == self.attrs.cells, f"sparse_mix built for {self.attrs.cells} nodes"
        key = str(device)
        if key not in self._structures:
            self._structures[key] = tuple(t.to(device) for t in self._structures["cpu"])
        return self._structures[key]

    def __call__(self, m, x: torch.Tensor) -> torch.Tensor:
        first, last = self.grid[0], self.grid[-1]
        shape = x.shape
        cells = math.prod(shape[first:last + 1])
        lead, rest = math.prod(shape[:first]), math.prod(shape[last + 1:])
        xc = x.reshape(lead, cells, rest).transpose(0, 1).reshape(cells, lead * rest)
        structure = self.structure(cells, x.device)
        if self.attrs.kernel == "gather":
            y = gather_matmul(m.weight, xc, structure[:5], cells, structure[5:])
        else:
            y = _csr_in_float32(m.weight, xc, structure[:5], cells)
        y = y.reshape(cells, lead, rest).transpose(0, 1)
        if self.attrs.bias:
            y = y + m.bias.reshape(1, cells, 1)
        return y.reshape(shape)


def gather_layout(structure, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gather kernel's padded layout of a structure: index (cells, width), the input node
    each slot reads (node 0 in padding), and slot (connections,), each connection's place in
    its row. The width is read from the structure, so build this where the structure lives
    (on the host), once."""
    rows, cols, crow, _, _ = structure
    width = int((crow[1:] - crow[:-1]).max())
    slot = torch.arange(rows.numel(), device=rows.device) - crow[rows]
    index = torch.zeros(cells, width, dtype=torch.int64, device=rows.device)
    index[rows, slot] = cols
    return index, slot


def gather_matmul(values, xc, structure, cells, layout=None):
    """The index-gather kernel: each output node's inputs gathered into rows padded to the
    longest row (padding reads node 0 with weight 0), then one batched dot product. `layout`
    is `gather_layout(structure, cells)`, made here when not given."""
    rows = structure[0]
    index, slot = layout or gather_layout(structure, cells)
    weights = values.new_zeros(index.shape).index_put((rows, slot), values)
    gathered = xc[index]  # (cells, width, N)
    return torch.einsum("cw,cwn->cn", weights, gathered)


def sparse_mix(attrs):
    for p, q in zip(sorted(attrs.axes), sorted(attrs.axes)[1:]):
        assert q == p + 1, "sparse_mix needs adjacent grid axes"
    return SparseMix(attrs)


def accept_dense_weight(module, attrs) -> None:
    """Let a dense `weight` [cells, cells] (an opt-0 checkpoint of the `random` mix) load into
    the compact one: its values at the mask's connections are taken."""

    def hook(state_dict, prefix, *args):
        key = prefix + "weight"
        dense = state_dict.get(key)
        if dense is None or dense.dim() != 2:
            return
        cells = dense.shape[0]
        rows, cols, *_ = sparse_structure(cells, attrs.density, attrs.seed, attrs.causal)
        state_dict[key] = dense[rows, cols]

    module._register_load_state_dict_pre_hook(hook)


# ---------------------------------------------------------------------------- topk_mask


def topk_mask(attrs):
    act = _activation(attrs.act) if attrs.act else None

    def mask(m, x):
        if act is not None:
            x = act(m, x)
        keep = x.abs().topk(attrs.keep, dim=-1).indices
        return torch.zeros_like(x).scatter(-1, keep, x.gather(-1, keep))

    return mask


def _activation(value: dict):
    """An activation given as an op value {op, attrs}: its lowered fn(m, x)."""
    from nexusdsl.ops import REGISTRY

    op = REGISTRY[value["op"]]
    return op.lower(op.Attrs.model_validate(value.get("attrs") or {}))


# ---------------------------------------------------------------------------- pruned_attention


def pruned_attention(attrs):
    """Attention with fewer heads of the original head size (`nexus prune --structured`)."""
    from nexusdsl.ops.attention_torch import attention_forward

    return attention_forward(attrs, attrs.head_dim)


# ---------------------------------------------------------------------------- fused_rmsnorm


class RMSNormFunction(torch.autograd.Function):
    """y = x_n * w' with x_n = x * r, r = 1 / sqrt(mean(x^2) + eps) over the last axis and
    w' = offset + w, in the order and precision of `norms.rms_norm` (half precision widened to
    float32). Saves x and r (not the normalised x); backward, in the wide precision:
    dx = r * (g w' - x_n mean(g w' x_n)), dw = sum g x_n."""

    @staticmethod
    def forward(ctx, x, w, eps, offset):
        wide = x.float() if is_half(x) else x
        r = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, r, w)
        ctx.offset = offset
        if offset:
            return (wide * r * (offset + w.to(wide.dtype))).to(x.dtype)
        return w * (wide * r).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, r, w = ctx.saved_tensors
        wide = r.dtype
        xn = x.to(wide) * r
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (g.to(wide) * xn).flatten(0, -2).sum(0).to(w.dtype)
        gxn = g.to(wide) * (ctx.offset + w.to(wide))
        mean = (gxn * xn).mean(-1, keepdim=True)
        dx = torch.addcmul(gxn, xn, mean, value=-1).mul_(r)
        return dx.to(x.dtype), dw, None, None


def fused_rmsnorm(attrs):
    eps, offset = attrs.eps, attrs.offset

    def rmsnorm(m, x):
        return RMSNormFunction.apply(x, m.weight, eps, offset)

    return rmsnorm


# ---------------------------------------------------------------------------- depthwise_conv


class DepthwiseFunction(torch.autograd.Function):
    """y[t] = b + sum_k w[:, k] x[t + k - left] over channels-last x [N, T, C] (zeros outside
    the sequence), as kernel shifted multiply-adds into one buffer; backward the same way."""

    @staticmethod
    def forward(ctx, x, w, b, left):
        T, K = x.shape[1], w.shape[1]
        y = x * w[:, left] if b is None else torch.addcmul(b, x, w[:, left])
        for k in range(K):
            shift = k - left  # y[t] reads x[t + shift]
            if k == left or abs(shift) >= T:
                continue
            if shift < 0:
                y[:, -shift:].addcmul_(x[:, :T + shift], w[:, k])
            else:
                y[:, :T - shift].addcmul_(x[:, shift:], w[:, k])
        ctx.save_for_backward(x, w)
        ctx.left, ctx.has_bias = left, b is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        T, K, left = x.shape[1], w.shape[1], ctx.left
        dx = g * w[:, left]
        dw = torch.zeros_like(w)
        for k in range(K):
            shift = k - left
            if abs(shift) >= T:
                continue
            if shift < 0:
                gy, xs = g[:, -shift:], x[:, :T + shift]
                if k != left:
                    dx[:, :T + shift].addcmul_(gy, w[:, k])
            else:
                gy, xs = g[:, :T - shift], x[:, shift:]
                if k != left:
                    dx[:, shift:].addcmul_(gy, w[:, k])
            dw[:, k] = (gy * xs).flatten(0, 1).sum(0)
        db = g.flatten(0, 1).sum(0) if ctx.has_bias else None
        return dx, dw, db, None


def depthwise_conv(attrs):
    k = attrs.kernel
    left = k - 1 if attrs.causal else (k - 1) // 2

    def conv(m, x):
        lead, (T, C) = x.shape[:-2], x.shape[-2:]
        w = m.weight.view(C, k)
        b = m.bias if attrs.bias else None
        y = DepthwiseFunction.apply(x.reshape(-1, T, C), w, b, left)
        return y.view(*lead, T, C)

    return conv
