"""Recursion with the same parameters (family "mnn"): the `recur` op that a
`repeat N shared reversible { body }` elaborates to.

The body is one nested graph (region 0) whose inputs are the loop-carried variables (then any
outer tensors the body reads) and whose outputs are the carried variables' new values. The op
runs it `count` times. With `reversible = true` the backward pass does not keep every step's
activations: it recomputes each step's input from its output by inverting the body (inverse
activations and inverse weights, the MNN paper's proposal), keeping an exact checkpoint every
`checkpoint_every` steps so that rounding errors cannot grow over more steps than that.

Invertible bodies are chains of: square `linear`, square `mix` (one axis, `order = sequential`
or `full`), `leaky_relu` (alpha > 0), `partial` of it, `identity`, `scale`, `shift`. Saturating
activations (elu, tanh, sigmoid) are invertible on paper but not in floating point: far below
zero elu(x) rounds to -alpha and the input is lost, so they are refused.
`check_reversible` says which node breaks that, at elaboration.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from nexusdsl.ops.attrs import Bool, Int, PosInt
from nexusdsl.ops.base import REGISTRY, Op, OpAttrs, OpError, attrs_of

ALLOWED = ("square linear and mix maps, leaky_relu (alpha > 0), partial of it, "
           "identity, scale and shift")


class Recur(Op):
    """`repeat N shared reversible { x = mix(x, axis = i) |> leaky_relu }`: see the module
    docstring. Inputs: the carried tensors, then the outer tensors the body reads; outputs:
    the carried tensors after `count` steps. Parameters live in the body (`blocks.body.0...`)."""

    name = "recur"
    family = "mnn"
    public = False  # written `repeat N shared reversible { ... }`
    inputs = ("xs",)
    variadic = True
    region_name = "body"

    class Attrs(OpAttrs):
        count: Annotated[Int, Field(ge=0)]
        carried: PosInt = 1
        reversible: Bool = False
        checkpoint_every: PosInt = 16

    def infer(self, ctx, inputs, attrs):
        if len(inputs) < attrs.carried:
            raise OpError(f"recur: {attrs.carried} carried tensors, but {len(inputs)} inputs")
        if attrs.reversible and len(inputs) != 1:
            raise OpError("recur: a reversible recursion carries exactly one tensor and reads "
                          "no other")
        return list(inputs[:attrs.carried])

    def flops(self, inputs, outputs, attrs):
        return 0  # the body's FLOPs are counted through region_share

    def region_share(self, attrs, count):
        return float(attrs.count)  # the body runs `count` times on every token

    def lower(self, attrs):
        return _lower_recur(attrs)


# ---------------------------------------------------------------------------- invertibility


def why_not_invertible(op: str, attrs, x, y) -> str | None:
    """Why the node `op(x) -> y` (resolved attrs, input and output types) cannot be inverted
    in closed form, or None."""
    if op in ("identity", "shift"):
        return None
    if op == "scale":
        return "scale by 0 loses its input" if attrs.factor == 0 else None
    if op == "linear":
        d_in, d_out = x.axes[-1].size, y.axes[-1].size
        return None if d_in == d_out else f"it maps width {d_in} to {d_out} (not square)"
    if op == "mix":
        from nexusdsl.ops.axis import invertible_mix

        return invertible_mix(x, attrs)
    if op == "leaky_relu":
        return None if attrs.alpha > 0 else f"alpha = {attrs.alpha} is not positive"
    if op in ("elu", "tanh", "sigmoid", "hardtanh"):
        return "it saturates, so its inverse loses the input in floating point; use leaky_relu"
    if op == "partial":
        act = attrs.act["op"]
        inner = REGISTRY[act].Attrs.model_validate(attrs.act["attrs"])
        if act not in ("leaky_relu", "identity"):
            return f"its activation {act} is not invertible"
        return why_not_invertible(act, inner, x, y)
    return "it is not invertible"


def chain(region) -> list:
    """The region's nodes (not inputs) in order, if they form one chain from its single input
    to its single output; raises OpError naming the first node that branches."""
    nodes = [n for n in region.nodes() if not n.is_input]
    (start,) = [n.id for n in region.inputs()]
    current = start
    for node in nodes:
        if len(node.inputs) != 1 or node.inputs[0].node != current or len(node.outputs) != 1:
            raise NodeError(node, f"`{node.op}` combines or branches tensors; a reversible body "
                            f"is a chain of invertible maps ({ALLOWED})")
        current = node.id
    (out,) = region.outputs.values()
    if out.node != current:
        raise NodeError(nodes[-1] if nodes else None, "the body's result is not the end of its "
                        "chain of maps")
    return nodes


class NodeError(Exception):
    """A reversible body's node that breaks invertibility (the elaborator locates it)."""

    def __init__(self, node, message: str):
        super().__init__(message)
        self.node = node
        self.message = message


def check_reversible(region) -> None:
    """Raise NodeError at the first node of the body graph that cannot be inverted."""
    for node in chain(region):
        x = region.type_of(node.inputs[0])
        reason = why_not_invertible(node.op, attrs_of(node), x, node.outputs[0])
        if reason:
            raise NodeError(node, f"`{node.op}` cannot be inverted in a reversible repeat: "
                            f"{reason} (allowed: {ALLOWED})")


# ---------------------------------------------------------------------------- lowering


def _inverse_fn(op: str, attrs):
    """prepare(module) -> fn(y) -> x for one invertible node; prepare inverts the node's
    matrices (once per backward pass: the parameters do not change while it walks the
    steps, and an inversion reads a flag back from the device)."""
    import torch

    if op == "identity":
        return lambda m: lambda y: y
    if op == "scale":
        return lambda m: lambda y: y / attrs.factor
    if op == "shift":
        return lambda m: lambda y: y - attrs.value
    if op == "linear":
        from nexusdsl.ops.axis_torch import matrix_inverse

        def linear(m):
            w_inv_t = matrix_inverse(m.weight).T  # y = x W^T + b

            def inverse(y):
                return (y - m.bias if attrs.bias else y) @ w_inv_t
            return inverse
        return linear
    if op == "mix":
        from nexusdsl.ops.axis_torch import mix_inverse

        return mix_inverse(attrs)
    if op == "leaky_relu":
        return lambda m: lambda y: torch.where(y >= 0, y, y / attrs.alpha)
    if op == "partial":
        from nexusdsl.ops.activations import active_channels

        act = attrs.act["op"]
        inner = _inverse_fn(act, REGISTRY[act].Attrs.model_validate(attrs.act["attrs"]))

        def partial(m):
            inner_y = inner(m)

            def inverse(y):
                k = active_channels(attrs.fraction, y.shape[-1])
                return torch.cat((inner_y(y[..., :k]), y[..., k:]), dim=-1)
            return inverse
        return partial
    raise NotImplementedError(op)


def body_inverse(body):
    """prepare() -> fn(y) -> x inverting one step of a lowered body module (a NexusModule);
    call prepare once per backward pass, after the parameters last changed."""
    steps = []
    for node in chain(body.graph):
        steps.append((body.get_submodule(node.shares or node.name),
                      _inverse_fn(node.op, attrs_of(node))))

    def prepare():
        fns = [invert(module) for module, invert in steps]

        def inverse(y):
            for fn in reversed(fns):
                y = fn(y)
            return y

        return inverse

    return prepare


def _lower_recur(attrs):
    import torch

    count, carried = attrs.count, attrs.carried

    def plain(body, xs):
        state, rest = list(xs[:carried]), xs[carried:]
        for _ in range(count):
            out = body(*state, *rest)
            state = [out] if carried == 1 else list(out.values())
        return state[0] if carried == 1 else tuple(state)

    def recur(m, *xs):
        body = m.body[0]
        params = [p for p in body.parameters() if p.requires_grad]
        wants_grad = torch.is_grad_enabled() and (xs[0].requires_grad or params)
        if not attrs.reversible or not wants_grad or count == 0:
            return plain(body, xs)
        function = _reversible_function()
        return function.apply(xs[0], body, body_inverse(body), count, attrs.checkpoint_every,
                              *params)

    return recur


_FUNCTION = None


def _reversible_function():
    """The autograd Function of reversible recursion (built once, when torch is loaded)."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    return _FUNCTION


def _make_function():
    import torch

    class ReversibleRecursion(torch.autograd.Function):
        """x_{t+1} = step(x_t) for t < count. Forward keeps x_t for t % every == 0 (and the
        output); backward walks t = count-1 .. 0, taking x_t from its checkpoint or else by
        inverting step on x_{t+1}, and backpropagates through one recomputed step at a time."""

        @staticmethod
        def forward(ctx, x, step, inverse, count, every, *params):
            marks = []
            with torch.no_grad():
                for t in range(count):
                    if t % every == 0:
                        marks.append(x)
                    x = step(x)
            ctx.step, ctx.inverse, ctx.count, ctx.every = step, inverse, count, every
            ctx.save_for_backward(x, *marks)
            ctx.n_params = len(params)
            return x

        @staticmethod
        def backward(ctx, grad):
            y, *marks = ctx.saved_tensors
            params = [p for p in ctx.step.parameters() if p.requires_grad]
            totals = [torch.zeros_like(p) for p in params]
            with torch.no_grad():
                inverse = ctx.inverse()  # the body's matrices inverted once for every step
            for t in reversed(range(ctx.count)):
                with torch.no_grad():
                    x = marks[t // ctx.every] if t % ctx.every == 0 else inverse(y)
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    out = ctx.step(x_in)
                    grads = torch.autograd.grad(out, [x_in, *params], grad, allow_unused=True)
                grad = grads[0]
                for total, g in zip(totals, grads[1:]):
                    if g is not None:
                        total.add_(g)
                y = x
            return (grad, None, None, None, None, *totals)

    return ReversibleRecursion
