"""Modality ops (family "modality"): raw data of a declared modality to tokens and back.

    modality text  = bytes(code = 0)
    modality image = patches(size = 16, channels = 3, code = 1)
    x = embed(tokens, dim) as tok          # [B, T] ids          -> [B, T, dim]
    y = embed(pixels, dim)                 # [B, 3, 224, 224]    -> [B, 196, dim]
    s = concat(tag(x), tag(y), axis = 1)   # every token records its modal code
    logits = unembed(s, tie = tok)         # [B, N, dim]         -> [B, N, vocab=256]
    patches = generate(s, image)           # [B, N, dim]         -> [B, N, 3*16*16]
"""

from __future__ import annotations

from pydantic import Field, model_serializer

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, CodeSegment, ModalitySpec, TensorType
from nexusdsl.ops.attrs import (
    Bool,
    PosInt,
    fixed_width,
    new_axis,
    normal,
    numel,
    operand,
    require_float,
    require_rank,
    set_by_compiler,
    uniform,
)
from nexusdsl.ops.base import InferContext, Op, OpAttrs, OpError, same_type_as

# The modality options each embedding needs at run time (recorded in the node's attributes).
LOWERING_OPTIONS = {"patches": ("size",), "frames": ("window", "hop"),
                    "tubelets": ("size", "frames")}


def modality_of(what: str, ctx: InferContext, x: TensorType) -> ModalitySpec:
    if x.modality is None:
        raise OpError(f"{what} needs an input with a modality (e.g. `input tokens: text[B, T]` "
                      f"after `modality text = bytes(code = 0)`), got {x}", about=(0,))
    spec = ctx.modalities.get(x.modality)
    if spec is None:
        raise OpError(f"{what}: modality {x.modality} is not declared")
    return spec


def _divides(x: TensorType, index: int, by: int, option: str, spec: ModalitySpec) -> int:
    """The fixed size of x's axis `index` (negative), which `option` must divide."""
    axis = x.axes[index]
    label = f"axis {axis.name}" if axis.name else f"axis {x.rank + index}"
    if axis.size is None:
        raise OpError(f"embed: {spec.kind} need fixed sizes, but {label} of {x} is symbolic")
    if axis.size % by:
        raise OpError(f"embed: {label} of {x} has size {axis.size}, which is not divisible "
                      f"by {option} = {by} of modality {spec.name}", about=(0,))
    return axis.size // by


def _channels(x: TensorType, index: int, spec: ModalitySpec) -> int:
    axis, channels = x.axes[index], spec.options["channels"]
    if axis.size != channels:
        size = axis.size if axis.size is not None else f"symbolic {axis.name}"
        raise OpError(f"embed: axis {x.rank + index} of {x} has {size} channels, but modality "
                      f"{spec.name} has channels = {channels}", about=(0,))
    return channels


def _frame_count(samples: Axis, window: int, hop: int) -> Axis:
    """How many windows of `window` samples, `hop` apart, fit in `samples`."""
    if samples.size is None:
        return Axis(name=f"({operand(samples)}-{window})//{hop}+1")
    if samples.size < window:
        raise OpError(f"embed: axis {samples} has {samples.size} samples, fewer than one "
                      f"frame (window = {window})")
    return Axis(size=(samples.size - window) // hop + 1)


def plan_tokens(x: TensorType, spec: ModalitySpec) -> tuple[tuple[Axis, ...], int]:
    """For continuous data: the token axes embed makes (without the width) and the number of
    values in one token (the projection's fan-in)."""
    o = spec.options
    if spec.kind == "patches":
        require_rank("embed", x, 3, "[B, C, H, W]")
        c = _channels(x, -3, spec)
        n = _divides(x, -2, o["size"], "size", spec) * _divides(x, -1, o["size"], "size", spec)
        return (*x.axes[:-3], Axis(size=n)), c * o["size"] ** 2
    if spec.kind == "tubelets":
        require_rank("embed", x, 4, "[B, F, C, H, W]")
        c = _channels(x, -3, spec)
        n = _divides(x, -4, o["frames"], "frames", spec)
        n *= _divides(x, -2, o["size"], "size", spec) * _divides(x, -1, o["size"], "size", spec)
        return (*x.axes[:-4], Axis(size=n)), o["frames"] * c * o["size"] ** 2
    if spec.kind == "frames":
        require_rank("embed", x, 1, "[B, S]")
        return (*x.axes[:-1], _frame_count(x.axes[-1], o["window"], o["hop"])), o["window"]
    # signal: [B, S] when there is one channel, else [*, S, C]
    require_rank("embed", x, 2, "[B, S] or [B, S, C]")
    if x.rank == 2 and o["channels"] == 1:
        return x.axes, 1
    if x.rank == 2:
        raise OpError(f"embed: modality {spec.name} has channels = {o['channels']}, so the "
                      f"input needs a channel axis: [B, S, {o['channels']}], got {x}")
    return x.axes[:-1], _channels(x, -1, spec)


class Embed(Op):
    """Turns data of a modality, or integer ids, into tokens: `x = embed(tokens, dim) as
    tok`, `embed(ids, dim, vocab = 32000)` for an `int[B, T]` input.

    Discrete data (bytes, ids) `[*, T]` looks its ids up in a table weight [vocab, dim]
    (N(0, 0.02)): 256 rows for bytes, the modality's vocabulary for ids; an `int[...]` input
    has no modality, so `vocab` gives the rows (and must be given); on an ids modality
    `vocab`, if given, must be the modality's. Continuous data is cut into tokens and
    projected by `proj` (weight [dim, values per token], bias [dim]): patches `[B, C, H, W]`
    into (H/size)*(W/size) patches of C*size*size values in (c, p, q) order, so a ViT's
    Conv2d weight reshapes into it; tubelets `[B, F, C, H, W]` likewise, values in (c, t, p,
    q) order as a Conv3d's; frames `[B, S]` into (S - window) // hop + 1 overlapping windows;
    a signal `[B, S]` or `[B, S, C]` sample by sample. The result is `[*, N, dim]` of the
    input's modality.

    `kind` and `options` are not for users: they record, from the input's modality, how the
    lowering cuts the data."""

    name = "embed"
    family = "modality"
    parameters = {"weight": "[vocab, dim] for discrete data (vocab 256 for bytes, the "
                            "modality's `vocab` for ids, `vocab` for an int input)",
                  "proj.weight": "[dim, values] for continuous data (values per token: "
                                 "C * size * size for patches, frames * C * size * size for "
                                 "tubelets, window for frames, channels for a signal)",
                  "proj.bias": "[dim] for continuous data"}

    layout = """Layout: a table row per id, [vocab, dim] as nn.Embedding's. Patches are
    flattened in (c, p, q) order (channel, then row and column within the patch), so a ViT's
    Conv2d weight [dim, C, size, size] reshapes to `proj.weight`; tubelets in (c, t, p, q)
    order."""

    class Attrs(OpAttrs):
        dim: PosInt
        vocab: PosInt | None = None
        tie: str | None = Field(None, description="another embed whose table this one shares: "
                                "`embed(target, dim, tie = shared)` (T5's encoder and decoder)")
        kind: str | None = set_by_compiler(default=None)
        options: dict[str, int] | None = set_by_compiler(default=None)

        @model_serializer(mode="wrap")
        def _vocab_when_given(self, handler):
            # embeddings of a modality print and hash as before `vocab` and `tie` existed
            data = handler(self)
            return {k: v for k, v in data.items() if k not in ("vocab", "tie") or v is not None}

    def resolve(self, ctx, inputs, attrs):
        x = inputs[0]
        if x.modality is None and x.dtype == "i64":
            return self._resolve_ids(attrs)
        spec = modality_of("embed", ctx, x)
        if attrs.kind not in (None, spec.kind):
            raise OpError(f"embed: `kind` comes from the input's modality ({spec.kind}); "
                          "leave it out")
        if attrs.vocab is not None:
            self._check_vocab(spec, attrs.vocab)
        options = {k: int(spec.options[k]) for k in LOWERING_OPTIONS.get(spec.kind, ())}
        return attrs.model_copy(update={"kind": spec.kind, "options": options or None})

    @staticmethod
    def _resolve_ids(attrs):
        """An `int[...]` input: ids into a table of `vocab` rows."""
        if attrs.vocab is None:
            raise OpError("embed: an int input has no modality to tell its vocabulary; give "
                          "the table's rows: `embed(tokens, dim, vocab = 32000)`", about=(0,))
        if attrs.kind not in (None, "ids") or attrs.options is not None:
            raise OpError("embed: `kind` and `options` come from the input; leave them out")
        return attrs.model_copy(update={"kind": "ids"})

    @staticmethod
    def _check_vocab(spec: ModalitySpec, vocab: int) -> None:
        if not spec.discrete:
            raise OpError(f"embed: `vocab` is the size of a table of ids, but modality "
                          f"{spec.name} ({spec.kind}) is continuous; leave it out")
        if vocab != spec.vocab:
            raise OpError(f"embed: vocab = {vocab}, but modality {spec.name} has a vocabulary "
                          f"of {spec.vocab}; leave vocab out, or make them agree", about=(0,))

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        width = new_axis(ctx, "dim", attrs.dim)
        if x.modality is None and x.dtype == "i64":
            return [same_type_as(x, (*x.axes, width), dtype="f32")]
        spec = modality_of("embed", ctx, x)
        if spec.discrete:
            if x.dtype != "i64":
                raise OpError(f"embed: modality {spec.name} holds integer ids, but the input "
                              f"is {x.dtype}")
            return [same_type_as(x, (*x.axes, width), dtype="f32")]
        require_float("embed", x)
        axes, _ = plan_tokens(x, spec)
        return [same_type_as(x, (*axes, width))]

    def params(self, ctx, inputs, attrs):
        x = inputs[0]
        if x.modality is None and x.dtype == "i64":
            return {"weight": self._table(ctx, attrs, attrs.vocab)}
        spec = modality_of("embed", ctx, x)
        if spec.discrete:
            return {"weight": self._table(ctx, attrs, spec.vocab)}
        _, fan_in = plan_tokens(x, spec)
        return {"proj.weight": uniform((attrs.dim, fan_in), fan_in),
                "proj.bias": uniform((attrs.dim,), fan_in)}

    @staticmethod
    def _table(ctx, attrs, vocab: int) -> ParamSpec:
        """The id table [vocab, dim]: its own, or with `tie` the named embed's own table."""
        if attrs.tie is None:
            return normal((vocab, attrs.dim))
        node = ctx.lookup(attrs.tie)
        table = node.params.get("weight") if node is not None and node.op == "embed" else None
        if table is None or table.tied_to:
            raise OpError(f"embed: tie = {attrs.tie} must name an embed of ids with its own "
                          f"table (`embed(tokens, dim, vocab = V) as {attrs.tie}`)")
        if table.shape != (vocab, attrs.dim):
            raise OpError(f"embed: tie = {attrs.tie} has a table of {list(table.shape)}, this "
                          f"embed needs [{vocab}, {attrs.dim}]")
        return ParamSpec(shape=table.shape, tied_to=f"{attrs.tie}.weight")

    def flops(self, inputs, outputs, attrs):
        if attrs.kind in ("bytes", "ids"):
            return 0
        if attrs.kind == "frames":  # overlapping windows: N * window values are projected
            return 2 * numel(outputs[0]) * attrs.options["window"]
        return 2 * numel(inputs[0]) * attrs.dim

    def decode(self, attrs, inputs):
        from nexusdsl.ops.decode import TOKENWISE

        return TOKENWISE if attrs.kind in ("bytes", "ids") else None  # a table row per id

    def lower(self, attrs):
        import torch.nn.functional as F

        if attrs.kind in ("bytes", "ids"):
            return lambda m, x: F.embedding(x, m.weight)
        tokens = _tokenizer(attrs.kind, attrs.options or {})

        def embed(m, x):
            return F.linear(tokens(x), m.proj.weight, m.proj.bias)  # (*, N, dim)

        return embed

    def lower_portable(self, attrs):
        if attrs.kind != "frames":
            return self.lower(attrs)
        import torch
        import torch.nn.functional as F

        window, hop = attrs.options["window"], attrs.options["hop"]

        def embed(m, x):  # torch-mlir's StableHLO has no unfold: gather the windows
            count = (x.shape[-1] - window) // hop + 1
            at = torch.arange(count, device=x.device)[:, None] * hop  # (N, 1)
            frames = x[..., at + torch.arange(window, device=x.device)]  # (*, N, window)
            return F.linear(frames, m.proj.weight, m.proj.bias)

        return embed


def _tokenizer(kind: str, o: dict[str, int]):
    """x -> (*, N, values per token), in the layout `plan_tokens` describes."""
    import einops

    if kind == "patches":
        pattern = "... c (h p) (w q) -> ... (h w) (c p q)"
        return lambda x: einops.rearrange(x, pattern, p=o["size"], q=o["size"])
    if kind == "tubelets":
        pattern = "... (f t) c (h p) (w q) -> ... (f h w) (c t p q)"
        return lambda x: einops.rearrange(x, pattern, t=o["frames"], p=o["size"], q=o["size"])
    if kind == "frames":
        return lambda x: x.unfold(-1, o["window"], o["hop"])
    return lambda x: x.unsqueeze(-1) if x.dim() == 2 else x  # signal


class Unembed(Op):
    """Maps tokens back to logits over a discrete vocabulary: `unembed(x, tie = tok)` reuses
    the table of `embed(...) as tok` (the same tensor, so the head adds no parameters);
    `unembed(x, vocab = 50257)` has its own weight [vocab, d] (N(0, 0.02)); without either,
    the vocabulary of x's discrete modality is used. `bias = true` adds a bias [vocab]."""

    name = "unembed"
    family = "modality"
    parameters = {"weight": "[vocab, d] (with `tie = t`: t's table itself, no new tensor)",
                  "bias": "[vocab] if bias"}

    class Attrs(OpAttrs):
        tie: str | None = Field(None, description="the name of an embed: `embed(...) as tok`")
        vocab: PosInt | None = None
        bias: Bool = False

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("unembed", x)
        fixed_width("unembed", x)
        vocab = Axis(name=ctx.axis_name("vocab") or "vocab", size=self._vocab(ctx, x, attrs))
        return [same_type_as(x, (*x.axes[:-1], vocab))]

    @staticmethod
    def _tied_shape(ctx: InferContext, x: TensorType, attrs) -> tuple[int, int]:
        tie = attrs.tie
        node = ctx.lookup(tie)
        if node is None:
            raise OpError(f"unembed: tie = {tie} names no node (name the embedding: "
                          f"`embed(tokens, dim) as {tie}`)")
        if node.op != "embed" or "weight" not in node.params:
            what = "an embed of continuous data" if node.op == "embed" else f"a {node.op}"
            raise OpError(f"unembed: tie = {tie} must name the embed of a discrete modality, "
                          f"but {tie} is {what}")
        vocab, width = node.params["weight"].shape
        if x.axes[-1].size != width:
            raise OpError(f"unembed: the input width {x.axes[-1]} does not match the width "
                          f"{width} of the tied embedding {tie}", about=(0,))
        return vocab, width

    def _vocab(self, ctx, x, attrs) -> int:
        if attrs.tie is not None:
            vocab, _ = self._tied_shape(ctx, x, attrs)
            if attrs.vocab not in (None, vocab):
                raise OpError(f"unembed: vocab = {attrs.vocab}, but the tied embedding "
                              f"{attrs.tie} has {vocab} entries")
            return vocab
        if attrs.vocab is not None:
            return attrs.vocab
        spec = ctx.modalities.get(x.modality) if x.modality else None
        if spec is None or not spec.discrete:
            raise OpError(f"unembed needs `tie = <an embed>` or `vocab = N` for input {x}")
        return spec.vocab

    def params(self, ctx, inputs, attrs):
        x = inputs[0]
        vocab, width = self._vocab(ctx, x, attrs), x.axes[-1].size
        if attrs.tie is not None:
            specs = {"weight": ParamSpec(shape=(vocab, width), tied_to=f"{attrs.tie}.weight")}
        else:
            specs = {"weight": normal((vocab, width))}
        if attrs.bias:
            specs["bias"] = ParamSpec(shape=(vocab,), init="zeros")
        return specs

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * outputs[0][-1]

    def decode(self, attrs, inputs):
        from nexusdsl.ops.decode import TOKENWISE

        return TOKENWISE

    def lower(self, attrs):
        import torch.nn.functional as F

        def unembed(m, x):
            return F.linear(x, m.weight, m.bias if attrs.bias else None)  # (*, vocab)

        return unembed


class Tag(Op):
    """Adds the learned embedding of x's modal code (`code` [d], N(0, 0.02)) to every token
    and records the code in the type, so that after `concat` a router can still tell the
    tokens apart: `words = tag(embed(caption, dim))`."""

    name = "tag"
    family = "modality"
    parameters = {"code": "[d]"}

    class Attrs(OpAttrs):
        pass

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        spec = modality_of("tag", ctx, x)
        require_rank("tag", x, 2, "[*, N, d]")
        require_float("tag", x)
        fixed_width("tag", x)
        codes = (CodeSegment(code=spec.code, modality=spec.name, length=x.axes[-2]),)
        return [same_type_as(x, codes=codes)]

    def params(self, ctx, inputs, attrs):
        return {"code": normal((inputs[0].axes[-1].size,))}

    def lower(self, attrs):
        return lambda m, x: x + m.code


def generated_width(spec: ModalitySpec) -> int:
    """The values in one token of a continuous modality (what `generate` predicts)."""
    o = spec.options
    if spec.kind == "patches":
        return o["channels"] * o["size"] ** 2
    if spec.kind == "tubelets":
        return o["frames"] * o["channels"] * o["size"] ** 2
    if spec.kind == "frames":
        return o["window"]
    return o["channels"]  # signal


class Generate(Op):
    """Maps tokens back to continuous data, the inverse of embed: `generate(x, image)` gives
    `[B, N, C*size*size]` patch values (frames: `[B, N, window]`, tubelets:
    `[B, N, frames*C*size*size]`, a signal: `[B, N, channels]`) with a linear head (weight,
    bias). Discrete modalities use `unembed`."""

    name = "generate"
    family = "modality"
    parameters = {"weight": "[values, d] (values per token of the modality, as for embed)",
                  "bias": "[values]"}

    class Attrs(OpAttrs):
        modality: str = Field(description="a declared continuous modality")

    def _spec(self, ctx: InferContext, attrs) -> ModalitySpec:
        spec = ctx.modalities.get(attrs.modality)
        if spec is None:
            known = ", ".join(sorted(ctx.modalities)) or "none"
            raise OpError(f"generate: unknown modality {attrs.modality} (declared: {known})")
        if spec.discrete:
            raise OpError(f"generate: use unembed for discrete modality {spec.name}")
        return spec

    def infer(self, ctx, inputs, attrs):
        x, spec = inputs[0], self._spec(ctx, attrs)
        require_float("generate", x)
        fixed_width("generate", x)
        axes = (*x.axes[:-1], Axis(size=generated_width(spec)))
        return [x.with_axes(axes, modality=spec.name, codes=None)]

    def params(self, ctx, inputs, attrs):
        width, out = inputs[0].axes[-1].size, generated_width(self._spec(ctx, attrs))
        return {"weight": uniform((out, width), width), "bias": uniform((out,), width)}

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * outputs[0][-1]

    def lower(self, attrs):
        import torch.nn.functional as F

        return lambda m, x: F.linear(x, m.weight, m.bias)
