"""Experts, adapters and routers (family "routing"; docs/language.md, "Builtin ops"):

    experts ffn = 16 of mlp(mult = 4)
    y = moe(x, ffn, router = topk(k = 4), balance = 0.01, capacity = 1.25)
    y = moe(x, pre, router = knn(k = 1, coords = 8))
    y = route(s) { text -> unembed(tie = tok); image -> generate(image) }

`moe` runs one nested graph (a region) per expert. The elaborator builds each region as the
MNN adapter around the expert, `linear_2(expert(linear_1(x))) + linear_3(x)`, out of `adapter`
nodes; a `pretrained(...)` expert is a region holding one `pretrained_module` node. `route`
elaborates to `modal_take` (the tokens of one modality) per branch and, when the branches agree
in width, `modal_merge` (the branch results put back in token order).

Torch code lives in `moe_torch.py` and `routers_torch.py` (dispatch, routers) and in
`nexusdsl.weights` (loading pretrained modules), imported only when lowering.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_serializer

from nexusdsl.ir.graph import ParamSpec
from nexusdsl.ir.types import Axis, CodeSegment, TensorType
from nexusdsl.ops.attrs import (
    Bool,
    Choice,
    Float,
    Int,
    PosInt,
    fixed_width,
    normal,
    numel,
    operand,
    require_float,
    require_rank,
    set_by_compiler,
    uniform,
)
from nexusdsl.ops.base import ALL_BACKENDS, Op, OpAttrs, OpError, op_of, same_type_as
from nexusdsl.ops.traits import Traits

NonNegative = Annotated[Float, Field(ge=0.0)]

ROUTERS = {
    # name: {keyword: default}; positional arguments fill keywords in this order
    "topk": {"k": 1, "noise": 0.0, "normalize": False, "score": "softmax", "bias": False,
             "groups": 1, "topk_groups": 1, "scale": 1.0, "bias_rate": 0.0},
    "knn": {"k": 1, "coords": 8, "min_tokens": 0},
    "hash": {"seed": 0},
}
# Settings that came after the first three of topk: the IR leaves them out at their defaults,
# so routers written before them print, hash and checkpoint as before.
LATER_SETTINGS = {"score", "bias", "groups", "topk_groups", "scale", "bias_rate"}
SCORES = ("softmax", "sigmoid")


def _router_error(message: str) -> OpError:
    return OpError(f"moe: {message}")


def normalize_router(raw: Any, experts: int) -> dict[str, Any]:
    """`topk(k = 4)` as it arrives from the elaborator ({"fn", "args", "kwargs"}) to the full
    form {"fn": "topk", "args": [], "kwargs": {every keyword}}; idempotent."""
    if not isinstance(raw, dict) or raw.get("fn") not in ROUTERS:
        raise _router_error(f"router must be one of {', '.join(n + '(...)' for n in ROUTERS)}, "
                            f"got {_show(raw)}")
    name, defaults = raw["fn"], ROUTERS[raw["fn"]]
    args, kwargs = list(raw.get("args") or []), dict(raw.get("kwargs") or {})
    if len(args) > len(defaults):
        raise _router_error(f"{name}(...) takes at most {len(defaults)} positional settings")
    for key, value in zip(defaults, args):
        if key in kwargs:
            raise _router_error(f"{name}(...): `{key}` is given twice")
        kwargs[key] = value
    for key in kwargs:
        if key not in defaults:
            raise _router_error(f"{name}(...) has no setting `{key}` (it takes "
                                f"{', '.join(defaults)})")
    if "score" in kwargs:
        kwargs["score"] = _option_name(kwargs["score"])
    full = {**defaults, **kwargs}
    _check_router(name, full, experts)
    kept = {k: v for k, v in full.items() if k not in LATER_SETTINGS or v != defaults[k]}
    return {"fn": name, "args": [], "kwargs": kept}


def router_settings(router: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a normalised router, defaults included (the IR leaves the later
    settings out at their defaults)."""
    return {**ROUTERS[router["fn"]], **router["kwargs"]}


def _option_name(value: Any) -> Any:
    """`score = sigmoid` arrives as the op of that name (`{"op": "sigmoid", ...}`) or a bare
    name; either way the setting is the name."""
    if isinstance(value, dict) and "op" in value and not value.get("attrs"):
        return value["op"]
    return value


def _check_router(name: str, s: dict[str, Any], experts: int) -> None:
    for key, value in s.items():
        default = ROUTERS[name][key]
        if isinstance(default, str):
            if value not in SCORES:
                raise _router_error(f"{name}(...): `{key}` should be "
                                    f"{' or '.join(SCORES)}, got {_show(value)}")
            continue
        want = bool if isinstance(default, bool) else (int, float)
        if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
            raise _router_error(f"{name}(...): `{key}` should be "
                                f"{'true or false' if want is bool else 'a number'}, got {value!r}")
    if "k" in s and (s["k"] != int(s["k"]) or s["k"] < 1):
        raise _router_error(f"{name}(...): k must be a positive integer, got {s['k']}")
    if "k" in s and s["k"] > experts:
        raise _router_error(f"{name}(k = {s['k']}) picks more experts than the {experts} "
                            "there are")
    if name == "knn" and (s["coords"] < 1 or s["min_tokens"] < 0):
        raise _router_error("knn(...): coords must be positive and min_tokens not negative")
    if name == "topk" and s["noise"] < 0:
        raise _router_error(f"topk(...): noise must not be negative, got {s['noise']}")
    if name == "topk":
        _check_topk(s, experts)


def _check_topk(s: dict[str, Any], experts: int) -> None:
    """Grouped selection, the routed scaling and the correction bias's update rate."""
    for key in ("groups", "topk_groups"):
        if s[key] != int(s[key]) or s[key] < 1:
            raise _router_error(f"topk(...): {key} must be a positive integer, got {s[key]}")
    groups, kept = int(s["groups"]), int(s["topk_groups"])
    if experts % groups:
        raise _router_error(f"topk(groups = {groups}) must divide the {experts} experts into "
                            "equal groups")
    if groups > 1 and experts // groups < 2:
        raise _router_error(f"topk(groups = {groups}): a group's score is the sum of its two "
                            f"best experts, so each group needs at least 2 (it has "
                            f"{experts // groups})")
    if kept > groups:
        raise _router_error(f"topk(topk_groups = {kept}) keeps more groups than the {groups} "
                            "there are")
    if s["k"] > kept * (experts // groups):
        raise _router_error(f"topk(k = {s['k']}) picks more experts than the {kept} kept "
                            f"groups of {experts // groups} hold")
    if s["scale"] <= 0:
        raise _router_error(f"topk(...): scale must be positive, got {s['scale']}")
    if s["bias_rate"] < 0:
        raise _router_error(f"topk(...): bias_rate must not be negative, got {s['bias_rate']}")
    if s["bias_rate"] > 0 and not s["bias"]:
        raise _router_error("topk(bias_rate = ...) updates the correction bias; give "
                            "bias = true too")


def _show(value: Any) -> str:
    if isinstance(value, str):  # a bare name written in the file
        return f"`{value}`"
    if isinstance(value, dict) and "fn" in value:
        return f"`{value['fn']}(...)`"
    if isinstance(value, dict) and "op" in value:
        return f"`{value['op']}`"
    return repr(value)


def is_tokenwise(region) -> bool:
    """Whether a region treats every token on its own (so tokens can be grouped by expert)."""
    return all(node.is_input or (not node.regions and op_of(node).traits.tokenwise)
               for node in region.nodes())


class Moe(Op):
    """A mixture of experts: `moe(x, ffn, router = topk(k = 4), balance = 0.01,
    capacity = 1.25)`. [*, d] -> [*, d].

    Every token goes to the experts its router picks and gets the gate-weighted sum of their
    outputs. Routers: `topk(k, noise = 0, normalize = false, score = softmax, bias = false,
    groups = 1, topk_groups = 1, scale = 1.0, bias_rate = 0)` (gate weight `router.weight`
    [n, d]; `score = softmax`: probabilities over the experts, as Mixtral and Qwen3-MoE;
    `score = sigmoid`: each expert's sigmoid, computed in float32, as DeepSeek-V3; the top k
    scores are the weights, renormalised to sum 1 with `normalize = true`, then times
    `scale`; Gaussian noise of std `noise` on the logits while training), `knn(k, coords,
    min_tokens = 0)` (MNN: tokens emit coordinates through `router.proj` [coords, d], experts
    own `router.coords` [n, coords]; the k nearest experts are weighted by 1 - distance /
    the token's largest distance; `min_tokens = m` also gives every expert its m nearest
    tokens), `hash(seed = 0)` (a fixed expert per sequence position, weight 1).

    DeepSeek-V3's selection: `bias = true` adds a correction bias `router.bias` [n] to the
    scores for choosing only (the weights stay the unbiased scores); it is a buffer (saved,
    not trained by gradients, not counted as a parameter), which `bias_rate = r` > 0 moves
    after each training-mode pass by r * sign(mean load - load) per expert (load: how many
    of the pass's choices picked it). `groups = g` splits the experts into g groups scored by
    the sum of their two best biased scores; only the `topk_groups` best groups are chosen
    from.

    `shared = swiglu(hidden = 64)` adds a shared expert: a block (or op) every token goes
    through, added to the routed sum (DeepSeek-V3, Qwen2-MoE); its parameters are
    `moe.shared.…` (`moe.shared.swiglu.linear.weight`).

    While training, `balance` > 0 sets `aux_loss = balance * n * sum_i f_i * P_i` on the
    module (Switch Transformer; f_i the share of routing choices that picked expert i, P_i
    the mean router probability of expert i; sigmoid scores are normalised to sum 1 per token
    for P_i; knn uses softmax(-distance)).
    `capacity = c` > 0 lets each expert take at most ceil(c * tokens * k / n) tokens (first
    choices first, then in token order); the rest are dropped for that expert. `capacity = 0`
    drops nothing. `adapter` and `skip` shape the expert wrappers (see the module doc)."""

    name = "moe"
    family = "routing"
    traits = Traits(pure=False)  # records its balance loss on its module
    # the shared expert's output, made by the elaborator from `shared = block` (its nodes are
    # ordinary nodes named `moe.shared.…`, run on every token)
    optional_inputs = ("shared",)
    parameters = {"router.weight": "[experts, d] with router = topk",
                  "router.bias": "[experts] with router = topk(bias = true): a buffer "
                                 "(saved, not trained, not counted)",
                  "router.proj": "[coords, d] with router = knn",
                  "router.coords": "[experts, coords] with router = knn (each expert's place)"}
    region_name = "experts"
    # TOSA has no scatter-add (index_add_), which combining the experts' outputs needs
    backends = tuple(b for b in ALL_BACKENDS if b != "mlir-tosa")

    layout = """Layout: `router.weight` [n, d] (transformers' gate.weight); expert i's parameters
    are its block's, under `experts.i.` (a fused checkpoint's gate_up_proj[i] splits into the
    gate rows then the up rows); `router.bias` is DeepSeek's e_score_correction_bias; a shared
    expert's parameters are under `shared.`."""

    class Attrs(OpAttrs):
        experts: PosInt
        router: dict[str, Any] = Field(description="topk(k, noise, normalize, score, bias, "
                                                   "groups, topk_groups, scale, bias_rate) | "
                                                   "knn(k, coords, min_tokens) | hash(seed)",
                                       default_factory=lambda: {"fn": "topk", "args": [],
                                                                "kwargs": {"k": 1}})
        balance: NonNegative = 0.01
        capacity: NonNegative = 0.0
        adapter: Bool = False
        skip: Bool = False
        sequence: list[bool] = set_by_compiler(default_factory=list)  # per expert: on whole sequences
        given: list[Literal["shared"]] = set_by_compiler(default=[])

        @model_serializer(mode="wrap")
        def _plain_without_shared(self, handler):
            # a moe without a shared expert prints and hashes as before `shared` existed
            data = handler(self)
            if not self.given:
                data.pop("given", None)
            return data

    def resolve(self, ctx, inputs, attrs):
        if len(ctx.regions) != attrs.experts:
            raise OpError("moe: the second argument must be a set of experts "
                          "(`experts ffn = 4 of mlp(mult = 2)`), not a number")
        router = normalize_router(attrs.router, attrs.experts)
        sequence = [not is_tokenwise(r) for r in ctx.regions]
        return attrs.model_copy(update={"router": router, "sequence": sequence})

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        require_float("moe", x)
        fixed_width("moe", x)
        if any(attrs.sequence):
            require_rank("moe (with an expert that mixes tokens)", x, 2, "[*, T, d]")
        if attrs.router["fn"] == "hash":
            require_rank("moe with router = hash()", x, 2, "[*, T, d]")
        if len(attrs.given) != len(inputs) - 1:
            raise OpError("moe: `given` is set by the compiler from `shared`; leave it out")
        if attrs.given:
            _check_shared(x, inputs[1])
        return [same_type_as(x)]

    def params(self, ctx, inputs, attrs):
        d, n, r = inputs[0].axes[-1].size, attrs.experts, attrs.router
        if r["fn"] == "topk":
            specs = {"router.weight": normal((n, d))}
            if router_settings(r)["bias"]:
                specs["router.bias"] = ParamSpec(shape=(n,), init="zeros", buffer=True)
            return specs
        if r["fn"] == "knn":
            c = int(r["kwargs"]["coords"])
            return {"router.proj": uniform((c, d), d), "router.coords": normal((n, c), 1.0)}
        return {}

    def flops(self, inputs, outputs, attrs):
        router = 2 * numel(inputs[0]) * attrs.experts  # the experts count via region_share
        return router + (numel(inputs[0]) if attrs.given else 0)  # adding the shared expert

    def decode(self, attrs, inputs):
        from nexusdsl.ops.decode import TOKENWISE

        # each token is routed alone unless experts see whole sequences, a capacity drops
        # tokens by their order in the batch, or the router is picked by position (hash)
        fn, settings = attrs.router.get("fn"), attrs.router.get("kwargs") or {}
        per_token = fn == "topk" or (fn == "knn" and not settings.get("min_tokens"))
        alone = not any(attrs.sequence) and attrs.capacity == 0
        return TOKENWISE if alone and per_token else None

    def region_share(self, attrs, count):
        return attrs.router["kwargs"].get("k", 1) / max(count, 1)

    @staticmethod
    def expert_rows(attrs) -> str | None:
        """The router parameter holding one row per expert (topk's gate, knn's expert
        coordinates), which goes with an expert that is pruned; None where no expert can be
        removed alone: `hash`, whose assignment by position has nothing to remove, and a topk
        router with a correction bias or groups (the bias and the equal groups would no
        longer fit the experts left)."""
        r = attrs.router
        if r["fn"] == "topk":
            s = router_settings(r)
            return "router.weight" if not s["bias"] and s["groups"] == 1 else None
        return {"knn": "router.coords"}.get(r["fn"])

    def finish(self, module, attrs, node):
        import torch

        from nexusdsl.weights.pretrained import load_file_expert

        for region in getattr(module, self.region_name):
            load_file_expert(region)
        bias = getattr(getattr(module, "router", None), "bias", None)
        if bias is not None and bias.dtype in (torch.float16, torch.bfloat16):
            # at least float32, as transformers keeps it: half precision would lose the small
            # steps `bias_rate` takes and blur the choices the bias decides
            module.router.bias = bias.float()

    def lower(self, attrs):
        from nexusdsl.ops.moe_torch import moe_forward

        return moe_forward(attrs)


def _check_shared(x: TensorType, shared: TensorType) -> None:
    same = shared.rank == x.rank and all(a.same_extent(b) for a, b in zip(shared.axes, x.axes))
    if not same or shared.dtype != x.dtype:
        raise OpError(f"moe: the shared expert turns {x} into {shared}; it is added to the "
                      "routed experts' sum, so it must give back its input's shape", about=(0,))


class Adapter(Op):
    """A linear map of the last axis that can start as the identity: the `linear_1`,
    `linear_2` and `linear_3` of the MNN expert adapter. `start = identity` sets weight to
    the identity (bias 0) when in = out (else nn.Linear's init); `start = zero` sets weight
    and bias to 0 (the skip `linear_3`, so a wrapped expert starts as itself)."""

    name = "adapter"
    family = "routing"
    public = False  # made by the elaborator around every expert
    traits = Traits(tokenwise=True, token_projection=True, projection_weights=True)

    class Attrs(OpAttrs):
        out: PosInt
        bias: Bool = True
        start: Choice("identity", "zero", "random") = "identity"

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        fixed_width("adapter", x)
        return [same_type_as(x, (*x.axes[:-1], Axis(size=attrs.out)))]

    def params(self, ctx, inputs, attrs):
        width = inputs[0].axes[-1].size
        zero = attrs.start == "zero"
        specs = {"weight": ParamSpec(shape=(attrs.out, width), init="zeros") if zero
                 else uniform((attrs.out, width), width)}
        if attrs.bias:
            specs["bias"] = ParamSpec(shape=(attrs.out,), init="zeros") if zero \
                else uniform((attrs.out,), width)
        return specs

    def flops(self, inputs, outputs, attrs):
        return 2 * numel(inputs[0]) * attrs.out

    def finish(self, module, attrs, node):
        import torch

        weight = module.weight
        if attrs.start != "identity" or weight.shape[0] != weight.shape[1]:
            return
        if weight.device.type == "meta":
            return
        with torch.no_grad():
            weight.copy_(torch.eye(weight.shape[0], dtype=weight.dtype))
            if attrs.bias:
                module.bias.zero_()

    def lower(self, attrs):
        import torch.nn.functional as F

        return lambda m, x: F.linear(x, m.weight, m.bias if attrs.bias else None)


# Attributes that came after `pretrained(...)` experts: left out at their defaults, so an
# expert's node prints and hashes as before they existed.
_PRETRAINED_LATER = {"ids": False, "vocab": None, "mask_form": "none", "tables": [], "given": []}


class PretrainedModule(Op):
    """A module of an open-weight model, run with its weights (never written by users:
    `pretrained(source, module = "encoder.layer.3")` elaborates to it wherever it is applied:
    piped, called, in a block, as an expert).

    [*, T, width] -> [*, T, out]; a module that looks ids up (`ids`: an embeddings module, a
    whole model) takes integer ids [*, T] instead (`vocab`: its table's rows). `mask = m`, a
    bool [*, T] (true for real tokens), is its attention mask, as `mask_form` says: "padding"
    for a whole model (passed as its 1/0 attention_mask), "layers" for a module inside an
    encoder (passed as the mask that model makes for its layers); "none" (its forward takes
    none) and "causal" (a module inside a causal model) take no mask. `source` is a local
    Hugging Face directory; the parameters are the module's own, with shapes read from the
    safetensors header, frozen unless `frozen = false`; its buffers are the torch module's
    too. The lowering builds the module with transformers from the local config (no network,
    no remote code), loads its tensors, and wraps its output (a tuple or model output gives
    its first tensor). `hash` is the content hash of the loaded tensors: a checkpoint records
    it instead of the weights. `tables` (embedding tables) are looked up, not multiplied: they
    count no FLOPs."""

    name = "pretrained_module"
    family = "routing"
    public = False  # written `pretrained(source, module = ...)`
    optional_inputs = ("mask",)

    class Attrs(OpAttrs):
        source: str
        module: str
        prefix: str = ""
        hash: str
        width: PosInt
        out: PosInt
        frozen: Bool = True
        tensors: dict[str, list[int]] = Field(default_factory=dict)  # parameter -> shape
        ids: Bool = False
        vocab: PosInt | None = None
        mask_form: Literal["none", "padding", "layers", "causal"] = "none"
        tables: list[str] = Field(default_factory=list)
        given: list[Literal["mask"]] = set_by_compiler(default=[])

        @model_serializer(mode="wrap")
        def _plain_as_an_expert(self, handler):
            data = handler(self)
            return {k: v for k, v in data.items()
                    if k not in _PRETRAINED_LATER or v != _PRETRAINED_LATER[k]}

    def infer(self, ctx, inputs, attrs):
        x, what = inputs[0], _module_words(attrs)
        if len(attrs.given) != len(inputs) - 1:
            raise OpError(f"{what}: `given` is set by the compiler from `mask`; leave it out")
        if attrs.ids:
            _check_ids(ctx, x, attrs, what)
            tokens = x.axes
            out = same_type_as(x, (*tokens, Axis(size=attrs.out)), dtype="f32")
        else:
            _check_vectors(x, attrs, what)
            tokens = x.axes[:-1]
            out = same_type_as(x, (*tokens, Axis(size=attrs.out)))
        if attrs.given:
            _check_module_mask(tokens, inputs[1], attrs, what)
        return [out]

    def params(self, ctx, inputs, attrs):
        return {name: ParamSpec(shape=tuple(shape), init="zeros", frozen=attrs.frozen)
                for name, shape in attrs.tensors.items()}

    def flops(self, inputs, outputs, attrs):
        tables = set(attrs.tables)
        per_token = 2 * sum(numel(tuple(s)) for name, s in attrs.tensors.items()
                            if len(s) == 2 and name not in tables)
        return numel(inputs[0] if attrs.ids else inputs[0][:-1]) * per_token

    def finish(self, module, attrs, node):
        from nexusdsl.weights.pretrained import attach_weights

        attach_weights(module, attrs)

    def lower(self, attrs):
        from nexusdsl.weights.pretrained import pretrained_forward

        return pretrained_forward(attrs)


def _module_words(attrs) -> str:
    return f"pretrained module `{attrs.module}`" if attrs.module else "the pretrained model"


def _check_ids(ctx, x: TensorType, attrs, what: str) -> None:
    """A module that looks ids up takes integer ids [*, T], within its vocabulary when their
    modality tells theirs."""
    if x.dtype != "i64" or x.rank < 1:
        raise OpError(f"{what} takes integer token ids [*, T], got {x}: it makes their "
                      f"vectors [*, T, {attrs.out}] itself", about=(0,))
    spec = ctx.modalities.get(x.modality) if x.modality else None
    vocab = spec.vocab if spec is not None and spec.discrete else None
    if vocab is not None and attrs.vocab is not None and vocab > attrs.vocab:
        raise OpError(f"{what} has a vocabulary of {attrs.vocab} ids, but modality {spec.name} "
                      f"has {vocab}: its ids past {attrs.vocab - 1} have no row", about=(0,))


def _check_vectors(x: TensorType, attrs, what: str) -> None:
    """A module of hidden states takes [*, T, width] vectors of its config's width."""
    if x.dtype == "i64":
        raise OpError(f"{what} takes vectors [*, T, {attrs.width}], got integer ids {x}: embed "
                      "them first (the model's embedding module, or the whole model, takes "
                      "ids)", about=(0,))
    require_float(what, x)
    last = x.axes[-1].size if x.rank else None
    if x.rank < 2 or last != attrs.width:
        raise OpError(f"{what} takes vectors [*, T, {attrs.width}] (the width of its config), "
                      f"got {x}", about=(0,))


def _check_module_mask(tokens: tuple[Axis, ...], mask: TensorType, attrs, what: str) -> None:
    if attrs.mask_form == "none":
        raise OpError(f"{what} takes no attention mask (its forward has no `attention_mask`); "
                      "leave `mask` out")
    if attrs.mask_form == "causal":
        raise OpError(f"{what} is part of a causal model, which makes its layers' mask together "
                      "with their positions: give the mask to the whole model (leave `module` "
                      "out)")
    same = mask.rank == len(tokens) and all(a.same_extent(b) for a, b in zip(mask.axes, tokens))
    if mask.dtype != "bool" or not same:
        raise OpError(f"{what}: mask must be bool[{', '.join(map(str, tokens))}] (true for the "
                      f"real tokens), got {mask}", about=(1,))


# ---------------------------------------------------------------------------- route


def segments_json(codes: tuple[CodeSegment, ...]) -> list[list]:
    """Code segments as plain data: [[code, fixed length or None, symbolic name], ...]."""
    return [[s.code, s.length.size, s.length.name] for s in codes]


def joined_length(parts: list[Axis]) -> Axis:
    if len(parts) == 1:
        return parts[0]
    if all(p.size is not None for p in parts):
        return Axis(size=sum(p.size for p in parts))
    return Axis(name="+".join(operand(p) for p in parts))


def check_segments(segments: list[list]) -> None:
    """Run-time lengths must follow from the total: the symbolic parts share one name."""
    names = {name for _, size, name in segments if size is None}
    if len(names) > 1:
        raise OpError("route: cannot tell the modalities apart at run time: parts of the "
                      f"sequence have different symbolic lengths ({', '.join(sorted(names))}); "
                      "give all but one of them a fixed size")


class ModalTake(Op):
    """The tokens of one modal code, in order: `route` makes one per branch.
    [*, N, d] -> [*, N_code, d]."""

    name = "modal_take"
    family = "routing"
    public = False  # made by `route`

    class Attrs(OpAttrs):
        code: Int
        segments: list[list[Any]]

    def infer(self, ctx, inputs, attrs):
        x = inputs[0]
        check_segments(attrs.segments)
        mine = [s for s in (x.codes or ()) if s.code == attrs.code]
        if not mine:
            raise OpError(f"route: the input carries no tokens of code {attrs.code}", about=(0,))
        axes = (*x.axes[:-2], joined_length([s.length for s in mine]), x.axes[-1])
        return [x.with_axes(axes, modality=mine[0].modality, codes=tuple(mine))]

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        from nexusdsl.ops.moe_torch import modal_take

        return modal_take(attrs.code, attrs.segments)


class ModalMerge(Op):
    """Puts the branch results of a `route` back in token order: inputs are one tensor per
    code (in `order`), each holding that code's tokens. [*, N_c, w]... -> [*, N, w]."""

    name = "modal_merge"
    family = "routing"
    public = False  # made by `route`
    inputs = ("parts",)
    variadic = True

    class Attrs(OpAttrs):
        order: list[int]
        segments: list[list[Any]]
        length: dict[str, Any]  # the merged sequence axis, as Axis fields
        codes: list[dict[str, Any]]  # the merged tensor's CodeSegments

    def infer(self, ctx, inputs, attrs):
        first = inputs[0]
        for x in inputs[1:]:
            if x.rank != first.rank or x.axes[-1].size != first.axes[-1].size:
                raise OpError(f"route: the branches give {first} and {x}, which cannot be put "
                              "back together", about=tuple(range(len(inputs))))
        axes = (*first.axes[:-2], Axis(**attrs.length), first.axes[-1])
        codes = tuple(CodeSegment(**c) for c in attrs.codes)
        modalities = {c.modality for c in codes}
        modality = modalities.pop() if len(modalities) == 1 else None
        return [TensorType(dtype=first.dtype, axes=axes, modality=modality, codes=codes)]

    def flops(self, inputs, outputs, attrs):
        return 0

    def lower(self, attrs):
        from nexusdsl.ops.moe_torch import modal_merge

        return modal_merge(attrs.order, attrs.segments)

