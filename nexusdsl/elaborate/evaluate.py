"""Hyperparameter arithmetic: `+ - * / // % **` on numbers, with the guards a compiler needs
(no division by zero, no astronomically large results from a typo like `2 ** 1000000`);
comparisons, truth values and list items, decided while elaborating (docs/language.md,
"Per-layer variation")."""

from __future__ import annotations

import math
import operator

from nexusdsl.elaborate.values import Partial, Symbol, SymbolicAxis, describe
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


_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def word_of(value) -> str | None:
    """The text of a value that is a word: an option value (`global`), a string (a word given
    with --set), or an op, block or configuration function named without arguments (`gelu`,
    `local`), as settings spell them."""
    if isinstance(value, str):
        return value
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Partial) and not value.args and not value.kwargs:  # bare `gelu`
        return value.name
    if callable(value) and isinstance(getattr(value, "name", None), str):  # bare `local`
        return value.name
    return None


def _kind(value) -> str:
    """What `==` may compare a value with: numbers with numbers, words with words, booleans
    and lists with their own kind."""
    if isinstance(value, bool):
        return "bool"
    if is_number(value):
        return "number"
    if word_of(value) is not None:
        return "word"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _plain(value):
    """A value as `==` sees it: a word by its text, lists item by item."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    word = word_of(value)
    return word if word is not None else value


def compare(op: str, left, right, span: Span) -> bool:
    """`left op right` on hyperparameters: `==`/`!=` between values of one kind, the ordering
    operators between numbers. (Tensors and names that mean nothing are refused by the caller,
    which can point at them.)"""
    for side in (left, right):
        if isinstance(side, SymbolicAxis):
            raise NexusError.at(span, f"axis {side.name} has no fixed size, so `{op}` cannot compare it")
    if op in ("==", "!="):
        if _kind(left) != _kind(right) or _kind(left) not in ("bool", "number", "word", "list"):
            raise NexusError.at(span, f"`{op}` compares two values of one kind (numbers, "
                                f"true/false, names, lists), got {describe(left)} and {describe(right)}")
    elif not (is_number(left) and is_number(right)):
        raise NexusError.at(span, f"`{op}` orders numbers, got {describe(left)} and {describe(right)}")
    return _COMPARE[op](_plain(left), _plain(right))


def truth(value, span: Span, what: str) -> bool:
    """A value that decides something while elaborating (`what`: "the condition of `if`", "`and`"):
    true or false, or a number (true when it is not 0)."""
    if isinstance(value, bool):
        return value
    if is_number(value):
        return value != 0
    raise NexusError.at(span, f"{what} must be true or false (or a number), got {describe(value)}")


def item(items: list | tuple, index, name: str, span: Span):
    """`items[index]`, negative from the end as in Python; `name` is the list as written."""
    index = as_int(index, span, "a list index")
    if not -len(items) <= index < len(items):
        valid = (f"0 to {len(items) - 1}, or -{len(items)} to -1 from the end" if items
                 else "it has none")
        raise NexusError.at(span, f"index {index} is outside `{name}`, a list of length "
                            f"{len(items)} (its indexes: {valid})")
    return items[index]


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
