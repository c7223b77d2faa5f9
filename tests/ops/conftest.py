"""Helpers for op tests: build an op directly (no parser), hold its parameters in a torch
module the way the fx lowering does, run it, and check the tensors against the inferred types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, ModalitySpec, TensorType
from nexusdsl.ops import REGISTRY
from nexusdsl.ops.base import InferContext, OpError

MODALITIES = {
    spec.name: spec for spec in (
        ModalitySpec(name="text", kind="bytes", code=0),
        ModalitySpec(name="image", kind="patches", code=1, options={"size": 2, "channels": 3}),
        ModalitySpec(name="audio", kind="frames", code=2, options={"window": 8, "hop": 4}),
        ModalitySpec(name="video", kind="tubelets", code=3,
                     options={"size": 2, "frames": 2, "channels": 3}),
        ModalitySpec(name="wave", kind="signal", code=4, options={"channels": 1}),
        ModalitySpec(name="stereo", kind="signal", code=6, options={"channels": 2}),
        ModalitySpec(name="words", kind="ids", code=5, options={"vocab": 50}),
    )
}


@pytest.fixture(autouse=True)
def _seeded():
    """Random test tensors are the same on every run."""
    torch.manual_seed(0)


def tt(*axes, dtype: str = "f32", modality: str | None = None, codes=None) -> TensorType:
    """`tt("B", "T", ("d", 8), 4)` is the type [B, T, d=8, 4]: a str is a symbolic axis, an int
    an anonymous fixed one, a pair a named fixed one."""
    parsed = []
    for a in axes:
        if isinstance(a, str):
            parsed.append(Axis(name=a))
        elif isinstance(a, int):
            parsed.append(Axis(size=a))
        else:
            parsed.append(Axis(name=a[0], size=a[1]))
    return TensorType(dtype=dtype, axes=tuple(parsed), modality=modality, codes=codes)


def context(hints: dict[str, str] | None = None, lookup=None) -> InferContext:
    return InferContext(hints=hints or {}, modalities=dict(MODALITIES),
                        lookup=lookup or (lambda name: None))


def holder(params: dict[str, ParamSpec], seed: int = 0) -> nn.Module:
    """A module holding one node's parameters like the lowering's OpModule (nested modules for
    dotted names), with random values so that ones/zeros inits cannot hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    module = nn.Module()
    for key, spec in params.items():
        if spec.tied_to:
            continue
        *path, leaf = key.split(".")
        owner = module
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        value = torch.randn(spec.shape, generator=generator) * 0.5
        owner.register_parameter(leaf, nn.Parameter(value))
    return module


@dataclass
class Built:
    attrs: Any
    outputs: list[TensorType]
    params: dict[str, ParamSpec]
    module: nn.Module
    fn: Any

    def __call__(self, *tensors):
        result = self.fn(self.module, *tensors)
        results = result if isinstance(result, tuple) else (result,)
        assert len(results) == len(self.outputs)
        for ttype, tensor in zip(self.outputs, results):
            check_shape(ttype, tensor)
        return result

    @property
    def type(self) -> TensorType:
        (out,) = self.outputs
        return out

    @property
    def param_count(self) -> int:
        return sum(spec.numel for spec in self.params.values() if not spec.tied_to)


def check_shape(ttype: TensorType, tensor: torch.Tensor) -> None:
    assert tensor.dim() == ttype.rank, f"{ttype} vs {tuple(tensor.shape)}"
    for axis, n in zip(ttype.axes, tensor.shape):
        assert axis.size is None or axis.size == n, f"{ttype} vs {tuple(tensor.shape)}"


def build(name: str, *inputs: TensorType, ctx: InferContext | None = None, seed: int = 0,
          **attrs) -> Built:
    """Elaborate one op as the elaborator does, then lower it as the fx lowering does (from
    the attributes as the IR stores them: a JSON round trip)."""
    op = REGISTRY[name]
    ctx = ctx or context()
    resolved = op.resolve(ctx, list(inputs), op.Attrs(**attrs))
    outputs = op.infer(ctx, list(inputs), resolved)
    params = op.params(ctx, list(inputs), resolved)
    stored = op.Attrs.model_validate(resolved.model_dump(mode="json"))
    assert stored == resolved
    return Built(stored, outputs, params, holder(params, seed), op.lower(stored))


def op_error(name: str, *inputs: TensorType, ctx: InferContext | None = None, **attrs) -> OpError:
    with pytest.raises(OpError) as info:
        build(name, *inputs, ctx=ctx, **attrs)
    return info.value


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
