"""What an op declares about itself, so that passes, pruning and tools can handle ops they do
not know by name: a pass asks `op_of(node).traits.random`, never `node.op == "dropout"`.

Every op has a `Traits` (`Op.traits`; the default claims nothing). Properties that depend on
an op's attributes are methods of `Op` instead (`no_op`, `compose`, `fuse`, `axis_map`), and
what it costs is `Op.flops`, `Op.bytes` and `Op.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Traits:
    random: bool = False
    """It draws fresh random numbers every time it runs (dropout while training), so two such
    nodes never compute the same thing, even on the same input (unless `Op.no_op` says the
    node does nothing)."""

    pure: bool = True
    """Running it has no effect besides its results (a `moe` records its balance loss on its
    module, so it is not pure)."""

    elementwise: bool = False
    """Each output element is a function of the same input element alone: `partial` may apply
    the op to some channels, and pruning may drop units through it."""

    activation: bool = False
    """A parameter-free float function of one tensor that keeps its shape: `linear-fusion`
    fuses it into the projection before it, `--sparsity` masks it."""

    tokenwise: bool = False
    """Every position is computed from that position alone, so a `moe` may run it on the
    tokens routed to an expert only."""

    token_projection: bool = False
    """A dense map of each token's last axis: weight [out, in] and, with `bias = true`, bias
    [out], the width in attribute `out`. An activation read only by such maps may be masked
    (`--sparsity`); an MLP of two of them may lose hidden units (structured pruning)."""

    projection_weights: bool = False
    """Its matrices (parameters of two or more axes) project activations: unstructured
    magnitude pruning zeroes their smallest entries (embedding tables and norms do not)."""

    decode_state: str | None = None
    """What the op must carry from one step of incremental generation to the next (for
    example the keys and values of earlier positions); None when it needs nothing. Declared
    ahead of incremental decoding, which nothing implements yet."""


@dataclass(frozen=True)
class AxisMap:
    """A node seen as linear maps of one axis applied in turn (what `axis-fusion` chains):
    the axis, each map's {"n", "to", "bias", "causal"} in order, and the prefix of the last
    map's `weight` and `bias` among the node's parameters ("" for plain `weight`). The
    earlier maps' parameters, if any, are the node's tensor inputs after the first."""

    axis: int
    steps: tuple[dict[str, Any], ...]
    key: str = ""
