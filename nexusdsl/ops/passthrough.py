"""Ops that give their input back when the model is not training (family "core"): `dropout`
and `identity`."""

from __future__ import annotations

from nexusdsl.ops.attrs import (
    Probability,
    require_float,
)
from nexusdsl.ops.base import Op, OpAttrs, same_type_as
from nexusdsl.ops.traits import Traits


class Dropout(Op):
    """Zeroes elements with probability p while training: `x |> dropout(0.1)`."""

    name = "dropout"
    traits = Traits(random=True, elementwise=True, tokenwise=True)

    class Attrs(OpAttrs):
        p: Probability = 0.1

    def infer(self, ctx, inputs, attrs):
        require_float("dropout", inputs[0])
        return [same_type_as(inputs[0])]

    def no_op(self, attrs):
        return attrs.p == 0

    def lower(self, attrs):
        import torch.nn.functional as F

        def dropout(m, x):
            return F.dropout(x, attrs.p, m.training)

        return dropout


class Identity(Op):
    """Returns its input: `x |> identity` (a placeholder where a block expects an op)."""

    name = "identity"
    traits = Traits(elementwise=True, tokenwise=True)

    class Attrs(OpAttrs):
        pass

    def infer(self, ctx, inputs, attrs):
        return [inputs[0]]

    def flops(self, inputs, outputs, attrs):
        return 0

    def no_op(self, attrs):
        return True

    def lower(self, attrs):
        return lambda m, x: x
