"""docs/ops.md, generated from the registry: every public op with its usage (the first
paragraph of its docstring), its call with defaults, its attributes and its parameters (the
formulas of `Op.parameters`), then a list of the internal ops the compiler makes.
`python -m nexusdsl.ops -o docs/ops.md` writes it; tests/ops/test_reference.py fails when the
page is stale.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from nexusdsl.ops.base import REGISTRY, Op

# Families in the order docs/language.md's table lists them; a new family goes last.
FAMILY_ORDER = ("core", "activations", "mixers", "axis", "mnn", "modality", "routing")

HEADER = """\
# Op reference

<!-- generated from the op registry by `python -m nexusdsl.ops -o docs/ops.md`: edit the ops'
docstrings and declarations, not this page (tests/ops/test_reference.py fails when it is stale) -->

Every op a `.nx` file can call, by family. For each: how it is written, its call with the
defaults of its attributes (attributes after the tensor inputs may be given by position, in
this order), and the parameters it owns, as state_dict names (under the node's name, e.g.
`blocks.0.attention.qkv.weight`) with their shapes: `d` is the width (last axis) of the
op's input, other names are its attributes. The arithmetic operators `+ - *` and a tensor
times or plus a number are written as operators ([language.md](language.md)); the ops the
compiler makes for them and for its own rewrites are listed at the end.
"""


# ---------------------------------------------------------------------------- one op


def paragraphs(op: Op) -> list[str]:
    doc = inspect.cleandoc(type(op).__doc__ or "")
    return [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]


def shows_a_call(paragraph: str, name: str) -> bool:
    """Whether a paragraph writes the op in code: `linear(x, 4)`, `x |> relu`."""
    return any(re.search(rf"\b{re.escape(name)}\b", code)
               for code in re.findall(r"`([^`]+)`", paragraph))


def usage(op: Op) -> str:
    """The first paragraph of the op's docstring, and the first that writes the op in code
    if that one does not (what tests/ops/test_registry.py requires of every public op)."""
    found = paragraphs(op)
    if not found:
        return ""
    with_call = next((p for p in found if shows_a_call(p, op.name)), None)
    if with_call is None or with_call == found[0]:
        return found[0]
    return f"{found[0]} {with_call}"


def user_fields(op: Op) -> dict[str, FieldInfo]:
    """The attributes a user writes, in positional order (not those the compiler sets)."""
    return {name: f for name, f in op.Attrs.model_fields.items()
            if not (f.json_schema_extra or {}).get("set_by_compiler")}


def default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def show_value(value: Any) -> str:
    """A default as a .nx file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return show_number(value)
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict) and "fn" in value:  # a call value: topk(k = 1)
        settings = ", ".join(f"{k} = {show_value(v)}" for k, v in value.get("kwargs", {}).items())
        return f"{value['fn']}({settings})"
    return str(value)


def signature(op: Op) -> str:
    """`linear(x, out, bias = true)`: tensor inputs, then attributes (required ones bare,
    optional ones with their default; an optional one without a default bare too)."""
    parts = [f"{n}, ..." if op.variadic else n for n in op.inputs]
    for name, field in user_fields(op).items():
        default = PydanticUndefined if field.is_required() else default_of(field)
        bare = default is PydanticUndefined or default is None
        parts.append(name if bare else f"{name} = {show_value(default)}")
    extra = op.Attrs.model_config.get("extra") == "allow"
    return f"{op.name}({', '.join(parts)}{', ...' if extra else ''})"


def show_number(value: float) -> str:
    """1e-05 as 1e-5, 0.0 as 0.0: as short as Python writes it, with a plain exponent."""
    mantissa, e, exponent = repr(value).partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


def field_type(field: FieldInfo) -> str:
    """What a field takes, in words: its description where the op gives one (options whose
    type says little, like `wiring`), else from its type."""
    return field.description or describe(field.annotation, field.metadata)


def describe(annotation: Any, metadata: list) -> str:
    """A field's type in words: `positive integer`, `number in [0, 1)`, `none | tanh`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *more = typing.get_args(annotation)
        return describe(inner, [*more, *metadata])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        words = list(dict.fromkeys(describe(a, metadata) for a in options))
        if words == ["integer", "name"]:  # AxisRef
            return "an axis, by name or position"
        return " or ".join(words)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {_plural(describe(item, []))}"
    if origin is dict or annotation is dict:
        return "settings"
    return _scalar(annotation, metadata)


def _scalar(annotation: Any, metadata: list) -> str:
    bounds = {type(m): m for m in metadata if isinstance(m, (Gt, Ge, Lt, Le))}
    for m in metadata:  # Field(gt = 0) inside Annotated arrives as a FieldInfo
        bounds |= {type(b): b for b in getattr(m, "metadata", []) if isinstance(b, (Gt, Ge, Lt, Le))}
    if annotation is bool:
        return "true or false"
    if annotation is int:
        if Gt in bounds and bounds[Gt].gt == 0:
            return "positive integer"
        if Ge in bounds and bounds[Ge].ge == 0:
            return "integer >= 0"
        return "integer"
    if annotation is float:
        low = f"({bounds[Gt].gt:g}" if Gt in bounds else f"[{bounds[Ge].ge:g}" if Ge in bounds else ""
        high = f"{bounds[Lt].lt:g})" if Lt in bounds else f"{bounds[Le].le:g}]" if Le in bounds else ""
        if low and high:
            return f"number in {low}, {high}"
        if low:
            return f"number > {low[1:]}" if low[0] == "(" else f"number >= {low[1:]}"
        return "number"
    if annotation is str:
        return "name"
    return "value"


def _plural(word: str) -> str:
    return {"integer": "integers", "positive integer": "positive integers",
            "number": "numbers", "name": "names",
            "an axis, by name or position": "axes, by name or position"}.get(word, word)


def attribute_table(op: Op) -> list[str]:
    fields = user_fields(op)
    if not fields:
        return []
    rows = ["| attribute | type | default |", "|---|---|---|"]
    for name, field in fields.items():
        default = "required" if field.is_required() else default_of(field)
        shown = default if default == "required" else ("none" if default is None
                                                        else f"`{show_value(default)}`")
        rows.append(f"| `{name}` | {cell(field_type(field))} | {shown} |")
    return rows


def cell(text: str) -> str:
    """Text for a table cell: `|` would end the cell."""
    return text.replace("|", "\\|")


def split_shape(text: str) -> tuple[str, str]:
    """A declared parameter (`"[out] if bias"`) as its shape formula (`[out]`) and the rest."""
    depth = 0
    for i, c in enumerate(text):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth == 0:
            return text[:i + 1], text[i + 1:].strip()
    raise ValueError(f"unbalanced shape formula: {text!r}")


def parameter_table(op: Op) -> list[str]:
    if not op.parameters:
        return ["No parameters."]
    rows = ["| parameter | shape |", "|---|---|"]
    for name, text in op.parameters.items():
        shape, rest = split_shape(text)
        rows.append(f"| `{name}` | `{shape}` {cell(rest)} |".replace("  |", " |"))
    return rows


def section(op: Op) -> str:
    lines = [f"### `{op.name}`", "", usage(op), "", f"`{signature(op)}`", ""]
    table = attribute_table(op)
    lines += [*table, ""] if table else []
    lines += [*parameter_table(op), ""]
    if op.layout:
        lines += [" ".join(op.layout.split()), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the page


def families(ops: list[Op]) -> list[str]:
    present = {op.family for op in ops}
    return [f for f in FAMILY_ORDER if f in present] + sorted(present - set(FAMILY_ORDER))


def reference() -> str:
    """docs/ops.md's text."""
    public = sorted((op for op in REGISTRY.values() if op.public), key=lambda op: op.name)
    parts = [HEADER]
    for family in families(public):
        parts.append(f"## {family}\n")
        parts += [section(op) for op in public if op.family == family]
    internal = sorted((op for op in REGISTRY.values() if not op.public), key=lambda op: op.name)
    parts.append("## Made by the compiler\n\nThese ops appear in the IR (`nexus compile --emit "
                 "ir`) but are not names of the language.\n\n| op | family | what it is |\n"
                 "|---|---|---|")
    parts.append("\n".join(f"| `{op.name}` | {op.family} | {cell(paragraphs(op)[0])} |"
                           for op in internal) + "\n")
    return "\n".join(parts)
