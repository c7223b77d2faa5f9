"""The training configuration: a model's `train` section, checked, with overrides applied.

Precedence, lowest first: built-in defaults, the `train` section of the `.nx` file, then
flags (`nexus train --steps 10 --set lr=1e-3`) or keyword arguments of `nexusdsl.train`.
A field that is not a training setting must name one of the model's hyperparameters
(`dim = 96` in the section trains a 96-wide model). Mistakes in the file are reported at the
field; mistakes in flags are one-line errors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Span

NO_SPAN = Span("<command line>", 0, 0)

# Setting -> (type check, description) for plain numeric fields.
_INTS = {"batch": 1, "context": 1, "steps": 1, "prefix": 0, "seed": 0, "eval_every": 0, "threads": 0,
         "eval_batches": 1, "save_every": 0, "log_every": 1}
_FLOATS = {"clip": 0.0, "time": 0.0}
# How a step runs (docs/language.md, "Train sections"): the forward's precision, micro-batches
# per optimizer step, which repeat steps recompute their activations, torch.compile.
PRECISIONS = ("fp32", "bf16", "fp16")
SETTINGS = frozenset({"data", "objective", "optimizer", "schedule", "freeze", "train", "lora",
                      "precision", "accumulate", "checkpoint", "compile", *_INTS, *_FLOATS})


@dataclass
class Call:
    """A configuration call such as `adamw(lr = 3e-4)`, checked: its name and keyword values."""

    fn: str
    kwargs: dict[str, Any]
    span: Span = NO_SPAN
    args: list[Any] = field(default_factory=list)


@dataclass
class TrainConfig:
    data: Call = field(default_factory=lambda: Call("default", {}))
    objective: Call = field(default_factory=lambda: Call("next_token", {}))
    optimizer: Call = field(default_factory=lambda: Call("adamw", {}))
    schedule: Call = field(default_factory=lambda: Call("cosine", {}))
    batch: int = 16
    context: int = 128
    steps: int = 1000
    clip: float = 1.0
    time: float = 0.0  # a wall-clock budget in seconds (0: none), see loop.schedule_progress
    freeze: list[str] = field(default_factory=list)  # selectors (elaborate/selectors.py)
    train: list[str] = field(default_factory=list)  # empty: every parameter trains
    lora: Call | None = None  # `lora(rank, alpha, dropout, targets)` (train/lora.py)
    prefix: int = 0
    seed: int = 0
    eval_every: int = 500  # held-out metrics every N steps (0: before and after only)
    eval_batches: int = 16
    save_every: int = 1000
    log_every: int = 10
    threads: int = 0  # torch threads; 0: automatic (see train/threads.py)
    precision: str = "fp32"  # the forward's autocast dtype (train/precision.py)
    accumulate: int = 1  # micro-batches per optimizer step, `batch` split among them
    checkpoint: bool | list[str] = False  # repeat steps recomputed (train/checkpointing.py)
    compile: bool = False  # torch.compile the model for training
    hyper: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)

    def span(self, name: str) -> Span:
        return self.spans.get(name, NO_SPAN)

    def to_json(self) -> dict[str, Any]:
        """Plain values only (for the checkpoint's JSON), without spans."""
        data = {k: v for k, v in asdict(self).items() if k != "spans"}
        for name in ("data", "objective", "optimizer", "schedule", "lora"):
            if data[name] is None:  # no LoRA
                continue
            kwargs = {k: _entry_point(v) if callable(v) else v  # a reward given as a callable
                      for k, v in data[name]["kwargs"].items()}
            data[name] = {"fn": data[name]["fn"], "args": data[name]["args"], "kwargs": kwargs}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        for name in ("data", "objective", "optimizer", "schedule", "lora"):
            c = values.get(name)
            if c is not None:
                values[name] = Call(c["fn"], dict(c["kwargs"]), NO_SPAN, list(c["args"]))
        return cls(**values)


def _entry_point(fn) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


# Options each configuration call accepts, with a check for each value.
def _positive(v):
    return _number(v) and v > 0


def _fraction(v):
    return _number(v) and 0 <= v < 1


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _string(v):
    return isinstance(v, str)


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _reward(v):  # a Python callable (API) or an entry point "package.module:function"
    return callable(v) or (isinstance(v, str) and v.count(":") == 1)


def _nonneg(v):
    return _number(v) and v >= 0


def _finite_positive(v):
    return _positive(v) and math.isfinite(v)


def _globs(v):  # LoRA targets: a non-empty list of globs
    return isinstance(v, list) and bool(v) and all(isinstance(i, str) and i for i in v)


CALLS: dict[str, dict[str, dict[str, Any]]] = {
    "data": {"text": {"path": _string}, "folder": {"path": _string}, "digits": {},
             "default": {}},
    "objective": {"next_token": {}, "denoise": {"mask": _fraction, "noise": _fraction},
                  "contrastive": {"temperature": _positive}, "classify": {},
                  "ppo": {"reward": _reward, "clip": _fraction, "kl": _nonneg, "vf": _nonneg,
                          "entropy": _nonneg, "epochs": _whole, "head": _string}},
    "optimizer": {"adamw": {"lr": _positive, "weight_decay": _fraction, "beta1": _fraction,
                            "beta2": _fraction, "eps": _positive},
                  "sgd": {"lr": _positive, "momentum": _fraction, "weight_decay": _fraction}},
    "schedule": {"cosine": {"warmup": _nonneg_int, "final": _fraction},
                 "constant": {"warmup": _nonneg_int}},
}
# `lora(rank = 8, alpha = 16, dropout = 0.05, targets = ["*.q", "*.v"])` (train/lora.py): not
# in CALLS, which lists the settings every run has; a run without LoRA has none.
LORA_OPTIONS = {"rank": _whole, "alpha": _finite_positive, "dropout": _fraction, "targets": _globs}
_CALL_TABLES = {**CALLS, "lora": {"lora": LORA_OPTIONS}}
_DESCRIBE = {_positive: "a positive number", _finite_positive: "a positive number",
             _globs: "a list of name globs, e.g. [\"*.q\", \"*.v\"]", _fraction: "a number in [0, 1)",
             _nonneg_int: "a whole number >= 0", _string: "a string", _whole: "a whole number >= 1",
             _reward: "a callable or an entry point \"package.module:function\"",
             _nonneg: "a number >= 0"}
# `text("corpus.txt")` names its path positionally; the others take keywords only.
_POSITIONAL = {"text": ["path"], "folder": ["path"], "denoise": ["mask"],
               "contrastive": ["temperature"], "ppo": ["reward"]}


def resolve_data_path(config: TrainConfig, nx_file: str) -> Path | None:
    """The data path, made relative to the `.nx` file when it was written there (relative
    paths given by flags stay relative to the working directory). Updates `config.data`."""
    path = config.data.kwargs.get("path")
    if not isinstance(path, str) or not path:
        return None
    if config.data.span.line and not Path(path).expanduser().is_absolute():
        path = config.data.kwargs["path"] = str(Path(nx_file).parent / path)
    return Path(path)


def build_config(fields: dict[str, tuple[Any, Span]], hyper_names: list[str],
                 overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Check the section's `fields` ({name: (plain value, span)}) and apply `overrides`
    (flags: same names, no span). Raises `NexusError` (without sources; the caller adds them)."""
    config = TrainConfig()
    sink = DiagnosticSink()  # every field's mistake, not only the first
    for name, (value, span) in fields.items():
        try:
            _set(config, name, value, span, hyper_names)
        except NexusError as err:
            sink.add(err)
    sink.raise_if_any({})
    # `reward` last: it goes into the objective, which another override may have replaced
    for name, value in sorted((overrides or {}).items(), key=lambda kv: kv[0] == "reward"):
        if value is not None:
            _set(config, name, value, NO_SPAN, hyper_names)
    _check_lora_alone(config)
    _check_accumulate(config)
    return config


def _check_lora_alone(config: TrainConfig) -> None:
    """LoRA trains its adapters with every weight frozen: `freeze`, `train` and `prefix`,
    which choose what else trains, do not combine with it."""
    clash = [name for name in ("freeze", "train", "prefix") if getattr(config, name)]
    if config.lora is not None and clash:
        span = config.span("lora") if config.span("lora").line else config.span(clash[0])
        raise NexusError.at(span, f"{_where(span, 'lora')}: a LoRA run trains its adapters "
                            f"only, every weight of the model frozen; leave out {clash[0]}")


def _set(config: TrainConfig, name: str, value: Any, span: Span, hyper_names: list[str]) -> None:
    where = _where(span, name)
    if name == "lr":  # the `--lr` flag: a shortcut into the optimizer call
        _require(_positive(value), span, f"{where}: lr must be a positive number, got {value!r}")
        config.optimizer = Call(config.optimizer.fn, {**config.optimizer.kwargs, "lr": value},
                                config.optimizer.span)
    elif name == "reward":  # `--set reward=pkg.mod:fn`: a shortcut into `ppo(reward = ...)`
        _require(config.objective.fn == "ppo", span, f"{where}: reward is a setting of "
                 f"objective ppo, but the objective is {config.objective.fn}")
        _require(_reward(value), span, f"{where}: reward must be {_DESCRIBE[_reward]}, "
                 f"got {value!r}")
        config.objective = Call("ppo", {**config.objective.kwargs, "reward": value},
                                config.objective.span)
    elif name in CALLS:
        setattr(config, name, _call(name, value, span))
    elif name in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= _INTS[name]
        _require(ok, span, f"{where}: {name} must be a whole number >= {_INTS[name]}, got {value!r}")
        setattr(config, name, value)
    elif name in _FLOATS:
        _require(_number(value) and value >= 0, span,
                 f"{where}: {name} must be a number >= 0, got {value!r}")
        setattr(config, name, float(value))
    elif name in ("freeze", "train"):
        items = value if isinstance(value, list) else [value]
        _require(all(isinstance(i, str) for i in items), span,
                 f"{where}: {name} lists node names or globs over parameter names, e.g. "
                 f"`{name} = [tok, \"blocks.*.attention\"]`")
        setattr(config, name, list(items))
    elif name == "lora":
        config.lora = None if value in (None, "none") else _call("lora", value, span)
    elif name in ("precision", "accumulate", "checkpoint", "compile"):
        _set_step_setting(config, name, value, span, where)
    elif name in hyper_names:
        config.hyper[name] = value
    else:
        known = ", ".join(sorted(SETTINGS))
        hypers = ", ".join(hyper_names) or "none"
        raise NexusError.at(span, f"{where}: unknown training setting `{name}` (settings: {known}; "
                            f"model hyperparameters: {hypers})")
    config.spans[name if name != "lr" else "optimizer"] = span


def _set_step_setting(config: TrainConfig, name: str, value: Any, span: Span, where: str) -> None:
    """`precision = bf16`, `accumulate = 4`, `checkpoint = true` or a list of repeat steps,
    `compile = true`."""
    if name == "precision":
        _require(value in PRECISIONS, span, f"{where}: precision must be one of "
                 f"{', '.join(PRECISIONS)}, got {value!r}")
    elif name == "accumulate":
        _require(_whole(value), span, f"{where}: accumulate must be a whole number >= 1 (the "
                 f"micro-batches of one optimizer step), got {value!r}")
    elif name == "compile":
        _require(isinstance(value, bool), span, f"{where}: compile must be true or false, "
                 f"got {value!r}")
    else:
        items = value if isinstance(value, (bool, list)) else [value]
        _require(isinstance(items, bool) or (bool(items) and all(isinstance(i, str) and i
                                                                  for i in items)), span,
                 f"{where}: checkpoint is true, false or a list of repeat steps or globs, "
                 f"e.g. `checkpoint = [blocks]` or `checkpoint = [\"blocks.[0-3]\"]`, "
                 f"got {value!r}")
        value = items
    setattr(config, name, value)


def _check_accumulate(config: TrainConfig) -> None:
    """`batch` is what one optimizer step sees: its micro-batches are equal slices of it."""
    if config.batch % config.accumulate:
        name = "accumulate" if config.span("accumulate").line else "batch"
        span = config.span(name)
        raise NexusError.at(span, f"{_where(span, name)}: batch {config.batch} does not split "
                            f"into accumulate = {config.accumulate} equal micro-batches; "
                            "choose a batch that is a multiple of it")


def _call(kind: str, value: Any, span: Span) -> Call:
    """`adamw(lr = 3e-4)` arrives as {"fn", "args", "kwargs"}; a bare `next_token` as a string."""
    if isinstance(value, str) and kind == "data" and value not in CALLS["data"]:
        value = {"fn": "text", "args": [value], "kwargs": {}}  # `--data corpus.txt`
    if isinstance(value, str):
        value = {"fn": value, "args": [], "kwargs": {}}
    where = _where(span, kind)
    choices = ", ".join(_CALL_TABLES[kind])
    if not isinstance(value, dict) or "fn" not in value:
        raise NexusError.at(span, f"{where}: expected one of {choices}, got {value!r}")
    fn = value["fn"]
    if fn not in _CALL_TABLES[kind]:
        raise NexusError.at(span, f"{where}: unknown {kind} `{fn}` (choose one of {choices})")
    kwargs = _bind(fn, value, span, where)
    for key, v in kwargs.items():
        check = _CALL_TABLES[kind][fn][key]
        _require(check(v), span, f"{where}: `{fn}({key} = ...)` must be {_DESCRIBE[check]}, "
                 f"got {v!r}")
    return Call(fn, kwargs, span)


def _bind(fn: str, value: dict, span: Span, where: str) -> dict[str, Any]:
    kind_options = next(opts[fn] for opts in _CALL_TABLES.values() if fn in opts)
    positional = _POSITIONAL.get(fn, [])
    args = list(value.get("args", []))
    if len(args) > len(positional):
        raise NexusError.at(span, f"{where}: `{fn}` takes at most {len(positional)} positional "
                            f"argument(s), got {len(args)}")
    kwargs = dict(zip(positional, args))
    for key, v in value.get("kwargs", {}).items():
        if key not in kind_options:
            options = ", ".join(kind_options) or "no options"
            raise NexusError.at(span, f"{where}: `{fn}` has no option `{key}` (it takes {options})")
        if key in kwargs:
            raise NexusError.at(span, f"{where}: `{fn}` got `{key}` twice")
        kwargs[key] = v
    if fn in ("text", "folder") and "path" not in kwargs:
        raise NexusError.at(span, f"{where}: `{fn}` needs a path, e.g. {fn}(\"corpus.txt\")")
    return kwargs


def _where(span: Span, name: str) -> str:
    return f"train setting `{name}`" if span.line else f"--{name.replace('_', '-')}"


def _require(ok: bool, span: Span, message: str) -> None:
    if not ok:
        raise NexusError.at(span, message)
