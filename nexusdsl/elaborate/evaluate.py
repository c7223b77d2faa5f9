"""Hyperparameter arithmetic: `+ - * / // % **` on numbers, with the guards a compiler needs
(no division by zero, no astronomically large results from a typo like `2 ** 1000000`)."""

from __future__ import annotations

import math
import operator

from nexusdsl.elaborate.values import SymbolicAxis, describe
from nexusdsl.lang.diagnostics import NexusError, Span

MAX_MAGNITUDE = 10**15  # beyond any sensible size or count; keeps typos from hanging the compiler

_OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def arithmetic(op: str, left, right, span: Span):
    """Evaluate `left op right` on numbers. `/` on integers stays an integer when it divides."""
    for side in (left, right):
        if isinstance(side, SymbolicAxis):
            raise NexusError.at(span, f"axis {side.name} has no fixed size, so it cannot be used in arithmetic")
        if not is_number(side):
            raise NexusError.at(span, f"`{op}` needs numbers or tensors, got {describe(side)}")
    if op in ("/", "//", "%") and right == 0:
        raise NexusError.at(span, "division by zero")
    if op == "**":
        return _power(left, right, span)
    if op == "/":
        exact = isinstance(left, int) and isinstance(right, int) and left % right == 0
        result = left // right if exact else left / right
    else:
        result = _OPS[op](left, right)
    return _checked(result, span)


def _power(left, right, span: Span):
    if isinstance(right, int) and isinstance(left, int) and right >= 0:
        if left not in (0, 1, -1) and right * math.log2(abs(left)) > 60:
            raise NexusError.at(span, f"{left} ** {right} is too large")
        return left**right
    try:
        result = float(left) ** float(right)
    except (OverflowError, ZeroDivisionError):
        raise NexusError.at(span, f"{left} ** {right} cannot be computed") from None
    if isinstance(result, complex):
        raise NexusError.at(span, f"{left} ** {right} is not a real number")
    return _checked(result, span)


def _checked(result, span: Span):
    if isinstance(result, float) and not math.isfinite(result):
        raise NexusError.at(span, "the result is not a finite number")
    if abs(result) > MAX_MAGNITUDE:
        raise NexusError.at(span, f"the result {result:g} is too large")
    return result


def negate(value, span: Span):
    if not is_number(value):
        raise NexusError.at(span, f"cannot negate {describe(value)}")
    return -value


def as_int(value, span: Span, what: str) -> int:
    """An integer where one is required (an axis size, a count)."""
    if isinstance(value, SymbolicAxis):
        raise NexusError.at(span, f"{what} must be a fixed integer, but axis {value.name} is symbolic")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise NexusError.at(span, f"{what} must be an integer, got {describe(value)}")
    return value
