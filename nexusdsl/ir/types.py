"""Tensor types of the IR: named axes, dtype and (for token streams) modality and modal codes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Axis(BaseModel):
    """One axis. `size` is None for a symbolic axis (a batch or sequence length bound at run
    time); symbolic axes are identified by their name."""

    model_config = ConfigDict(frozen=True)

    name: str | None = None
    size: int | None = None

    def __str__(self) -> str:
        if self.size is None:
            return self.name or "?"
        if self.name is None:
            return str(self.size)
        return f"{self.name}={self.size}"

    def same_extent(self, other: Axis) -> bool:
        if self.size is None or other.size is None:
            return self.size is None and other.size is None and self.name == other.name
        return self.size == other.size


class CodeSegment(BaseModel):
    """A run of tokens along the sequence axis that all carry one modal code."""

    model_config = ConfigDict(frozen=True)

    code: int
    modality: str
    length: Axis


class TensorType(BaseModel):
    model_config = ConfigDict(frozen=True)

    dtype: str = "f32"  # f32 | i64 | bool
    axes: tuple[Axis, ...] = ()
    modality: str | None = None
    codes: tuple[CodeSegment, ...] | None = None

    @property
    def rank(self) -> int:
        return len(self.axes)

    @property
    def sizes(self) -> tuple[int | None, ...]:
        return tuple(a.size for a in self.axes)

    def with_axes(self, axes, **changes) -> TensorType:
        return self.model_copy(update={"axes": tuple(axes), **changes})

    def axis_index(self, ref: int | str) -> int | None:
        """Position of an axis given by name or (possibly negative) position, or None."""
        if isinstance(ref, bool):
            return None
        if isinstance(ref, int):
            i = ref + self.rank if ref < 0 else ref
            return i if 0 <= i < self.rank else None
        matches = [i for i, a in enumerate(self.axes) if a.name == ref]
        return matches[-1] if matches else None

    def __str__(self) -> str:
        kind = self.modality or self.dtype
        return f"{kind}[{', '.join(str(a) for a in self.axes)}]"


def numel(axes, bindings: dict[str, int] | None = None, default: int = 1) -> int:
    """Number of elements, with symbolic axes taken from `bindings` (or `default`)."""
    n = 1
    for a in axes:
        n *= a.size if a.size is not None else (bindings or {}).get(a.name or "", default)
    return n


class ModalitySpec(BaseModel):
    """`modality text = bytes(code = 0)`: how raw data becomes tokens, and its modal code."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: str  # bytes | ids | patches | frames | tubelets | signal
    code: int
    options: dict[str, int | float | str | bool] = {}

    @property
    def discrete(self) -> bool:
        return self.kind in ("bytes", "ids")

    @property
    def vocab(self) -> int | None:
        if self.kind == "bytes":
            return 256
        if self.kind == "ids":
            return int(self.options["vocab"])
        return None
