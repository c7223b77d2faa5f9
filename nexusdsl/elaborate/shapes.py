"""Shape unification over named axes: a written shape (`[*, d]`, `[B, T=1024, 16]`) against an
actual tensor type, binding axis names to sizes (or to symbolic axes) on first use."""

from __future__ import annotations

from collections.abc import Callable

from nexusdsl.elaborate.values import SymbolicAxis
from nexusdsl.ir.types import Axis, TensorType
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError, Note


def format_shape(shape: ast.Shape) -> str:
    parts = []
    for d in shape.dims:
        parts.append("*" if d.star else (d.name or "?") if d.size is None else
                     (f"{d.name}=…" if d.name else "…"))
    return "[" + ", ".join(parts) + "]"


class AxisBindings:
    """Axis names bound so far in one scope (a block call or a model)."""

    def __init__(self, known: Callable[[str], object]):
        self._known = known  # looks a name up among hyperparameters (a fixed size) or None
        self.axes: dict[str, Axis] = {}
        self.where: dict[str, object] = {}

    def bind(self, name: str, actual: Axis, dim: ast.Dim) -> None:
        bound = self.axes.get(name)
        if bound is None:
            preset = self._known(name)
            if isinstance(preset, int) and not isinstance(preset, bool):
                bound = Axis(name=name, size=preset)
        if bound is not None and not bound.same_extent(actual):
            notes = (Note(f"{name} was bound", self.where[name]),) if name in self.where else ()
            raise NexusError.at(dim.span, f"axis {name} is {bound.size or bound.name} here "
                                f"but the tensor has {actual.size or actual.name}", *notes)
        if name not in self.axes:
            self.axes[name] = actual if actual.size is None else Axis(name=name, size=actual.size)
            self.where[name] = dim.span

    def value(self, name: str):
        """What an axis name means as a hyperparameter in the body: its size, or symbolic."""
        axis = self.axes[name]
        return axis.size if axis.size is not None else SymbolicAxis(axis.name or name)


def unify(shape: ast.Shape, actual: TensorType, bindings: AxisBindings, size_of) -> None:
    """Check `actual` against a written shape, binding its names. `size_of(expr)` evaluates a
    size expression to an int (raising a located error otherwise)."""
    dims = list(shape.dims)
    star = bool(dims) and dims[0].star
    if star:
        dims = dims[1:]
    if any(d.star for d in dims):
        raise NexusError.at(shape.span, "`*` may only stand first in a shape")
    if (len(actual.axes) < len(dims)) if star else (len(actual.axes) != len(dims)):
        raise NexusError.at(shape.span, f"expected a tensor of shape {format_shape(shape)}, "
                            f"got {actual} ({actual.rank} axes)")
    for dim, axis in zip(dims, actual.axes[len(actual.axes) - len(dims):]):
        _unify_dim(dim, axis, bindings, size_of)


def _unify_dim(dim: ast.Dim, axis: Axis, bindings: AxisBindings, size_of) -> None:
    if dim.size is not None:
        size = size_of(dim.size)
        if axis.size != size:
            what = f"axis {dim.name}" if dim.name else "an axis"
            got = axis.size if axis.size is not None else f"symbolic {axis.name}"
            raise NexusError.at(dim.span, f"{what} should be {size} but the tensor has {got}")
    if dim.name:
        bindings.bind(dim.name, axis, dim)


def declared_type(texpr: ast.TensorTypeExpr, dtype: str, modality: str | None,
                  bindings: AxisBindings, size_of) -> TensorType:
    """The type of a model input written `text[B, T]` or `float[B, T=1024, 64]`."""
    axes = []
    for dim in texpr.shape.dims:
        if dim.star:
            raise NexusError.at(dim.span, "a model input needs every axis written out; `*` is for blocks")
        size = size_of(dim.size) if dim.size is not None else None
        if size is None and dim.name:
            preset = bindings.axes.get(dim.name) or _preset(bindings, dim.name)
            size = preset.size if preset is not None else None
        axis = Axis(name=dim.name, size=size)
        if dim.name:
            bindings.bind(dim.name, axis, dim)
        axes.append(axis)
    return TensorType(dtype=dtype, axes=tuple(axes), modality=modality)


def _preset(bindings: AxisBindings, name: str) -> Axis | None:
    value = bindings._known(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return Axis(name=name, size=value)
    return None
