"""What running an op costs, in the three terms of a roofline of one CPU core:

    seconds = kernels * launch + flops / peak + bytes / bandwidth

An op declares its FLOPs (`Op.flops`, the number `nexus compile`'s summary reports), the bytes
of activations it moves (`Op.bytes`) and its kernel launches (`Op.kernels`); `Op.cost` puts
them together. The helpers below price the pieces an op is made of (a matrix product, an
elementwise kernel, a copy), for ops whose cost depends on how they run (`mix`) and for the
passes that compare ways of running them. The constants are round numbers measured on the
2-core CI machine with benchmarks/passes.py; decisions only compare alternatives, so they need
the ratios right, not the absolute times.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    flops: float = 2.0e10  # FLOP/s of a dense f32 GEMM on one core
    bandwidth: float = 4.0e9  # bytes/s of elementwise traffic (allocation included)
    launch: float = 1.5e-5  # seconds of Python and dispatch overhead per kernel


CPU = Machine()


@dataclass(frozen=True)
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes,
                    self.kernels + other.kernels)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.bytes * factor, self.kernels * factor)

    def seconds(self, machine: Machine = CPU) -> float:
        return (self.kernels * machine.launch + self.flops / machine.flops
                + self.bytes / machine.bandwidth)

    def __str__(self) -> str:
        return (f"{_scaled(self.flops, 'FLOP')}, {_scaled(self.bytes, 'B')}, "
                f"{self.kernels:g} kernels, ~{self.seconds() * 1e3:,.3g} ms")


def _scaled(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:,.3g} {prefix}{unit}"
    return f"{value:,.0f} {unit}"


CACHE = 1 << 20  # tensors below this many bytes stay in cache: their traffic is cheaper
CACHED = 0.25  # ... by this factor (measured on the CI machine's 1 MB L2)


def traffic(nbytes: float, largest: float | None = None) -> float:
    """Bytes moved, discounted when the largest tensor involved fits in cache."""
    return nbytes * (CACHED if (largest if largest is not None else nbytes) < CACHE else 1.0)


def gemm(m: int, k: int, n: int, batch: int = 1) -> Cost:
    """One (batched) matrix product (m x k) @ (k x n): reads both, writes the result."""
    largest = 4.0 * batch * max(m * k, k * n, m * n)
    return Cost(2.0 * batch * m * k * n, traffic(4.0 * batch * (m * k + k * n + m * n), largest),
                1)


def elementwise(count: int, operands: int = 2) -> Cost:
    """One elementwise kernel over `count` elements reading `operands - 1` tensors."""
    return Cost(float(count), traffic(4.0 * count * operands, 4.0 * count), 1)


def copy(count: int) -> Cost:
    """Moving `count` elements to a new layout (a permute made contiguous, a padded copy):
    one kernel reading and writing each element once, and no arithmetic."""
    return Cost(0.0, traffic(8.0 * count, 4.0 * count), 1)
