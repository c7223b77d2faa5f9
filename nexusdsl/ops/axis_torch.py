"""The torch implementation of `mix` (ops/axis.py), imported only when a model is lowered.

Every wiring is an `einsum` over the input's own axes: a mode-n product replaces one axis's
letter, a full mix replaces every grid letter. The inverse maps (for reversible recursion)
apply the inverted matrices through the same einsums.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from nexusdsl.ops.axis import LETTERS, random_mask_count, wiring_fn

# ---------------------------------------------------------------------------- helpers


def _param(m, key: str, leaf: str) -> torch.Tensor:
    return m.get_parameter(f"{key}.{leaf}" if key else leaf)


def _place(b: torch.Tensor, b_idx: str, out_idx: str) -> torch.Tensor:
    """Broadcast a bias indexed by `b_idx` against an output indexed by `out_idx`."""
    order = "".join(c for c in out_idx if c in b_idx)
    b = torch.einsum(f"{b_idx}->{order}", b)
    shape = [b.shape[order.index(c)] if c in order else 1 for c in out_idx]
    return b.reshape(shape)


def random_mask(cells: int, density: float, seed: int, causal: bool = False) -> torch.Tensor:
    """The fixed connection mask of `random(density, seed)`: a (cells, cells) bool matrix with
    exactly `random_mask_count(...)` ones, chosen by a seeded permutation (among the lower
    triangle when causal). The same on every machine and run."""
    generator = torch.Generator().manual_seed(seed)
    count = random_mask_count(cells, cells, density, causal)
    if causal:
        rows, cols = torch.tril_indices(cells, cells)
        allowed = rows * cells + cols
    else:
        allowed = torch.arange(cells * cells)
    chosen = allowed[torch.randperm(allowed.numel(), generator=generator)[:count]]
    mask = torch.zeros(cells * cells, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(cells, cells)


def local_causal_mask(k: int, n: int) -> torch.Tensor:
    """Kernel entries whose offset is at or before the centre in row-major order."""
    lo = (k - 1) // 2
    keep = [tuple(o - lo for o in offset) <= (0,) * n
            for offset in itertools.product(range(k), repeat=n)]
    return torch.tensor(keep).view((k,) * n)


# ---------------------------------------------------------------------------- axial


class Axial:
    """Mode-n products, one per listed axis, summed (parallel) or chained (sequential)."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.axes = list(attrs.axes)

    def key(self, i: int) -> str:
        return "" if self.attrs.share[i] == "all" else self.attrs.labels[i]

    def weight(self, m, i: int) -> torch.Tensor:
        w = _param(m, self.key(i), "weight")
        return w.tril() if self.attrs.causal else w  # tril acts on the last two dims

    def indices(self, rank: int, i: int) -> tuple[str, str, str]:
        """(input, weight, output) einsum indices of axis i's product."""
        p, new = self.axes[i], LETTERS[rank]
        x_idx = LETTERS[:rank]
        out_idx = x_idx[:p] + new + x_idx[p + 1:]
        rows = ""
        if self.attrs.share[i] == "none":
            rows = "".join(x_idx[q] for q in sorted(self.axes) if q != p)
        return x_idx, rows + new + x_idx[p], out_idx

    def product(self, m, x: torch.Tensor, i: int, w: torch.Tensor | None = None) -> torch.Tensor:
        x_idx, w_idx, out_idx = self.indices(x.dim(), i)
        y = torch.einsum(f"{x_idx},{w_idx}->{out_idx}", x, self.weight(m, i) if w is None else w)
        if self.attrs.bias and w is None:
            y = y + _place(_param(m, self.key(i), "bias"), w_idx[:-1], out_idx)
        return y

    def __call__(self, m, x: torch.Tensor) -> torch.Tensor:
        if self.attrs.order == "sequential":
            for i in range(len(self.axes)):
                x = self.product(m, x, i)
            return x
        return sum(self.product(m, x, i) for i in range(len(self.axes)))

    def inverse_of(self, m):
        """fn(y) -> x with y = mix(x), for square invertible maps in sequential order (or one
        axis); each axis's matrix is inverted here, once, not at every call."""
        inverses = [matrix_inverse(self.weight(m, i)) for i in range(len(self.axes))]

        def inverse(y: torch.Tensor) -> torch.Tensor:
            for i in reversed(range(len(self.axes))):
                x_idx, w_idx, out_idx = self.indices(y.dim(), i)
                if self.attrs.bias:
                    y = y - _place(_param(m, self.key(i), "bias"), w_idx[:-1], out_idx)
                y = self.product(m, y, i, inverses[i])
            return y

        return inverse


# ---------------------------------------------------------------------------- full / random


class Full:
    """One matrix over the flattened grid axes (times a fixed mask for `random`)."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.grid = sorted(attrs.axes)
        self.random = wiring_fn(attrs.wiring) == "random"
        self._mask: torch.Tensor | None = None

    def mask(self, cells: int, device) -> torch.Tensor:
        if self._mask is None or self._mask.device != device:
            kw = self.attrs.wiring
            self._mask = random_mask(cells, kw["density"], kw["seed"], self.attrs.causal).to(device)
        return self._mask

    def matrix(self, m) -> torch.Tensor:
        w = m.weight
        if self.random:
            w = w * self.mask(w.shape[0], w.device)
        return w.tril() if self.attrs.causal and not self.random else w

    def indices(self, rank: int) -> tuple[str, str, str]:
        x_idx = LETTERS[:rank]
        new = {p: LETTERS[rank + j] for j, p in enumerate(self.grid)}
        out_idx = "".join(new.get(p, c) for p, c in enumerate(x_idx))
        w_idx = "".join(new[p] for p in self.grid) + "".join(x_idx[p] for p in self.grid)
        return x_idx, w_idx, out_idx

    def apply(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        sizes = [x.shape[p] for p in self.grid]
        x_idx, w_idx, out_idx = self.indices(x.dim())
        return torch.einsum(f"{x_idx},{w_idx}->{out_idx}", x, w.reshape(*sizes, *sizes))

    def __call__(self, m, x: torch.Tensor) -> torch.Tensor:
        y = self.apply(x, self.matrix(m))
        if self.attrs.bias:
            _, w_idx, out_idx = self.indices(x.dim())
            y = y + _place(m.bias, w_idx[:len(self.grid)], out_idx)
        return y

    def inverse_of(self, m):
        """fn(y) -> x with y = mix(x); the matrix is inverted here, once."""
        w_inv = matrix_inverse(self.matrix(m))

        def inverse(y: torch.Tensor) -> torch.Tensor:
            if self.attrs.bias:
                _, w_idx, out_idx = self.indices(y.dim())
                y = y - _place(m.bias, w_idx[:len(self.grid)], out_idx)
            return self.apply(y, w_inv)

        return inverse


# ---------------------------------------------------------------------------- local


class Local:
    """A single-channel n-d convolution over the grid axes with "same" padding (shared
    weights), or a locally connected layer (a kernel per grid node, share = none)."""

    def __init__(self, attrs):
        self.attrs = attrs
        self.grid = sorted(attrs.axes)
        self.k = attrs.wiring["k"]
        self.separate = "none" in attrs.share
        self._mask: torch.Tensor | None = None

    def kernel(self, m) -> torch.Tensor:
        w = m.weight
        if self.attrs.causal:
            if self._mask is None or self._mask.device != w.device:
                self._mask = local_causal_mask(self.k, len(self.grid)).to(w.device)
            w = w * self._mask
        return w

    def __call__(self, m, x: torch.Tensor) -> torch.Tensor:
        rest = [p for p in range(x.dim()) if p not in self.grid]
        perm = rest + self.grid
        xp = x.permute(perm)
        lead, sizes = xp.shape[:len(rest)], xp.shape[len(rest):]
        h = xp.reshape(-1, 1, *sizes)  # (M, 1, *grid)
        lo, hi = (self.k - 1) // 2, self.k // 2
        h = F.pad(h, (lo, hi) * len(sizes))
        y = self._correlate(m, h, sizes)
        if self.attrs.bias:
            y = y + m.bias
        y = y.reshape(*lead, *sizes)
        return y.permute([perm.index(p) for p in range(x.dim())])

    def _correlate(self, m, h: torch.Tensor, sizes) -> torch.Tensor:
        w, n = self.kernel(m), len(sizes)
        if not self.separate and n <= 3:
            conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
            return conv(h, w.reshape(1, 1, *w.shape))[:, 0]
        y = torch.zeros(h.shape[0], *sizes, dtype=h.dtype, device=h.device)
        for offset in itertools.product(range(self.k), repeat=n):
            window = h[(slice(None), 0, *(slice(o, o + s) for o, s in zip(offset, sizes)))]
            y = y + window * w[(Ellipsis, *offset)]
        return y


def lower_mix(attrs):
    kind = wiring_fn(attrs.wiring)
    impl = Axial(attrs) if kind == "axial" else Local(attrs) if kind == "local" else Full(attrs)
    return impl


def matrix_inverse(w: torch.Tensor) -> torch.Tensor:
    """w^-1 without the singularity check of torch.linalg.inv, which reads a flag back from
    the device (a sync on a GPU); the same LU solve, so the same numbers."""
    return torch.linalg.inv_ex(w).inverse


def mix_inverse(attrs):
    """prepare(m) -> fn(y) -> x with mix(x) = y, for the maps `invertible_mix` accepts."""
    impl = lower_mix(attrs)
    return impl.inverse_of

