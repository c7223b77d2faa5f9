"""A bound model's parameters back under its checkpoint's names: the inverse of its `bind`
rules (`nexus export --hf`; docs/families.md).

Each rule's tree of reads and transforms is run backwards on the parameter's value: a
concatenation splits into its parts' sizes, `transpose`, `permute`, `reshape` and
`rotary_halves` are undone, and `split`, `slice` and `select` put their piece back in place in
the whole tensor, which the other pieces fill. A key several rules read (eight experts copied
from one dense MLP) is written once, after checking that every copy still holds the same
values: training that made them differ is an error naming them, not a silent choice. A key
whose every element no parameter gives back is an error too.

`exported_names(plan)` says where each parameter goes without computing anything (for
adapters that must name the checkpoint's tensors, as PEFT's LoRA files do); `to_checkpoint`
computes the tensors; `write_safetensors` writes them as transformers does, sharded with an
index beyond `max_shard_size` bytes. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusdsl.weights.transforms import Concat, Read, Tree, Unary


class ExportError(ValueError):
    """Parameters that cannot be written back under the checkpoint's names."""


# ---------------------------------------------------------------------------- where each parameter goes


@dataclass(frozen=True)
class Part:
    """One checkpoint tensor a parameter (or a box of it) becomes.

    `key_region` and `param_region` are (start, stop) per axis of the key and of the parameter:
    the key's box holds the parameter's box. `param_axes[j]` is the parameter axis that the
    key's axis j runs along (None for an axis of size 1 the parameter lacks, as when `select`
    took one expert of a fused tensor), so `(0, 1)` is the same layout and `(1, 0)` a transpose
    (GPT-2's Conv1D). `exact` is False when a `reshape` or `rotary_halves` stands between: the
    regions are then the whole tensors and the layout is not a box-to-box copy."""

    key: str
    key_shape: tuple[int, ...]
    key_region: tuple[tuple[int, int], ...]
    param_region: tuple[tuple[int, int], ...]
    param_axes: tuple[int | None, ...]
    exact: bool = True

    @property
    def transposed(self) -> bool:
        axes = [a for a in self.param_axes if a is not None]
        return axes != sorted(axes)


@dataclass(frozen=True)
class _Axis:
    """How one axis of a subtree's result relates to the parameter: it runs along parameter
    axis `param` (None: a size-1 axis the parameter lacks), positions `lo` to `hi` of it in
    the subtree's coordinates are used, and parameter position = position + `shift`."""

    param: int | None
    lo: int
    hi: int
    shift: int


def exported_names(plan: dict[str, Tree], params=None) -> dict[str, list[Part]]:
    """{parameter: the checkpoint tensors it becomes, and where} for the plan's parameters
    (or those named in `params`)."""
    names = plan if params is None else [p for p in params if p in plan]
    result = {}
    for name in names:
        tree = plan[name]
        axes = [_Axis(a, 0, size, 0) for a, size in enumerate(tree.shape)]
        parts: list[Part] = []
        _walk(tree, axes, tree.shape, True, parts)
        result[name] = parts
    return result


def _walk(tree: Tree, axes: list[_Axis], param_shape, exact: bool, out: list[Part]) -> None:
    if isinstance(tree, Read):
        if exact:
            region = tuple((a.lo, a.hi) for a in axes)
            box = [(0, size) for size in param_shape]
            for a in axes:
                if a.param is not None:
                    box[a.param] = (a.lo + a.shift, a.hi + a.shift)
            out.append(Part(tree.info.key, tuple(tree.shape), region, tuple(box),
                            tuple(a.param for a in axes)))
        else:
            whole = tuple((0, size) for size in tree.shape)
            out.append(Part(tree.info.key, tuple(tree.shape), whole,
                            tuple((0, size) for size in param_shape),
                            tuple(range(len(tree.shape))), exact=False))
        return
    if isinstance(tree, Concat):
        offset = 0
        for part in tree.parts:
            size = part.shape[tree.axis]
            inner = list(axes)
            a = axes[tree.axis]
            lo, hi = max(a.lo - offset, 0), min(a.hi - offset, size)
            if lo < hi:
                inner[tree.axis] = _Axis(a.param, lo, hi, a.shift + offset)
                _walk(part, inner, param_shape, exact, out)
            offset += size
        return
    assert isinstance(tree, Unary)
    inner, still_exact = _unary_axes(tree, axes, exact)
    _walk(tree.x, inner, param_shape, still_exact, out)


def _unary_axes(tree: Unary, axes: list[_Axis], exact: bool) -> tuple[list[_Axis], bool]:
    """The axes of a transform's input, from those of its result."""
    s, name = tree.settings, tree.name
    if name == "transpose":
        return [axes[1], axes[0]], exact
    if name == "permute":
        inner = [None] * len(axes)
        for j, d in enumerate(s["dims"]):
            inner[d] = axes[j]
        return inner, exact
    if name in ("split", "slice", "select"):
        a = s["axis"] % len(tree.x.shape)
        start = _piece_start(tree)
        inner = list(axes)
        if name == "select":
            inner.insert(a, _Axis(None, start, start + 1, 0))
        else:
            old = axes[a]
            inner[a] = _Axis(old.param, old.lo + start, old.hi + start, old.shift - start)
        return inner, exact
    # reshape, rotary_halves: no longer a box-to-box copy
    return [_Axis(i, 0, size, 0) for i, size in enumerate(tree.x.shape)], False


def _piece_start(tree: Unary) -> int:
    """Where the piece `split`, `slice` or `select` takes starts along its axis."""
    s, shape = tree.settings, tree.x.shape
    a = s["axis"] % len(shape)
    if tree.name == "slice":
        return s["start"]
    if tree.name == "select":
        return s["index"] % shape[a]
    parts = s["parts"]
    sizes = [shape[a] // parts] * parts if isinstance(parts, int) else list(parts)
    return sum(sizes[:s["index"]])


# ---------------------------------------------------------------------------- the tensors


def sources_of(plan: dict[str, Tree]) -> list:
    """The checkpoints a plan reads (each once, in order)."""
    seen = {}
    for tree in plan.values():
        for source, _ in tree.reads():
            seen.setdefault(source.path, source)
    return list(seen.values())


def to_checkpoint(plan: dict[str, Tree], values: dict[str, Any]) -> dict[str, Any]:
    """{checkpoint key: tensor} that the plan's rules would read back into `values` ({parameter:
    tensor}); each tensor in its parameter's dtype, on the CPU."""
    import torch

    if len(sources_of(plan)) > 1:
        raise ExportError("the model is bound from several checkpoints; one checkpoint's "
                          "names are written back at a time")
    filled: dict[str, tuple[Any, Any, list[str]]] = {}
    with torch.no_grad():
        for name, tree in plan.items():
            value = values[name].detach().to("cpu")
            if tuple(value.shape) != tuple(tree.shape):
                raise ExportError(f"{name} is {list(value.shape)}, but its rule reads "
                                  f"{list(tree.shape)}")
            mask = torch.ones(value.shape, dtype=torch.bool)
            _invert(tree, value, mask, name, filled)
    result = {}
    for key, (tensor, mask, names) in filled.items():
        if not bool(mask.all()):
            missing = int((~mask).sum())
            raise ExportError(f"{key}: {missing} of its {mask.numel()} values come from no "
                              f"parameter (only {', '.join(names)} read parts of it), so the "
                              "checkpoint tensor cannot be written whole")
        result[key] = tensor.contiguous()
    return result


def _invert(tree: Tree, value, mask, name: str, filled: dict) -> None:
    """Put `value` (where `mask` holds) back into the keys `tree` reads."""
    if isinstance(tree, Read):
        _place(tree, value, mask, name, filled)
    elif isinstance(tree, Concat):
        offset = 0
        for part in tree.parts:
            size = part.shape[tree.axis]
            _invert(part, value.narrow(tree.axis, offset, size),
                    mask.narrow(tree.axis, offset, size), name, filled)
            offset += size
    else:
        assert isinstance(tree, Unary)
        _invert(tree.x, _undo(tree, value), _undo(tree, mask), name, filled)


def _undo(tree: Unary, x):
    """The transform's input, from its result (pieces put back into zeros of the input's
    shape)."""
    import torch

    s, shape = tree.settings, tree.x.shape
    if tree.name == "transpose":
        return x.t()
    if tree.name == "permute":
        inverse = sorted(range(len(s["dims"])), key=lambda j: s["dims"][j])
        return x.permute(*inverse)
    if tree.name == "reshape":
        return x.reshape(shape)
    if tree.name == "rotary_halves":
        heads = s["heads"]
        size = shape[0] // heads
        return x.reshape(heads, 2, size // 2, *shape[1:]).transpose(1, 2).reshape(shape)
    whole = torch.zeros(shape, dtype=x.dtype)
    a = s["axis"] % len(shape)
    start = _piece_start(tree)
    if tree.name == "select":
        whole.select(a, start).copy_(x)
    else:
        whole.narrow(a, start, x.shape[a]).copy_(x)
    return whole


def _place(tree: Read, value, mask, name: str, filled: dict) -> None:
    import torch

    key = tree.info.key
    if key not in filled:
        filled[key] = (torch.zeros(tree.shape, dtype=value.dtype), torch.zeros(tree.shape,
                                                                               dtype=torch.bool), [])
    tensor, have, names = filled[key]
    value = value.to(tensor.dtype)
    both = have & mask
    if bool(both.any()) and not torch.equal(tensor[both], value[both]):
        raise ExportError(f"{key} is read by several parameters ({', '.join([*names, name])}), "
                          "whose values differ now (training changed them): the checkpoint "
                          "holds one tensor there. Export a model that keeps them equal, or "
                          "bind them to separate tensors")
    tensor[mask] = value[mask]
    have |= mask
    if name not in names:
        names.append(name)


# ---------------------------------------------------------------------------- writing


DTYPE_NAMES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16"}


def parse_size(text: str) -> int:
    """`5GB`, `200MB`, `50KB`, `1000`: bytes (decimal units, as transformers reads them)."""
    units = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20,
             "GIB": 2 ** 30, "B": 1}
    raw = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if raw.endswith(unit):
            number, scale = raw[:-len(unit)].strip(), units[unit]
            break
    else:
        number, scale = raw, 1
    try:
        size = float(number) * scale
    except ValueError:
        raise ExportError(f"{text!r} is not a size (write 5GB, 200MB or 50KB)") from None
    if not math.isfinite(size) or size < 1:
        raise ExportError(f"{text!r} is not a size (write 5GB, 200MB or 50KB)")
    return int(size)


def shards(tensors: dict[str, Any], max_bytes: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most `max_bytes` (a larger tensor alone)."""
    groups: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    return groups


def write_safetensors(folder: Path, tensors: dict[str, Any], max_bytes: int) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` files and
    `model.safetensors.index.json` as transformers names them; returns the file names."""
    from safetensors.torch import save_file

    groups = shards(tensors, max_bytes)
    if len(groups) == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, folder / name, metadata={"format": "pt"})
        names.append(name)
        weight_map |= {k: name for k in keys}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n",
                                                           encoding="utf-8")
    return [*names, "model.safetensors.index.json"]
