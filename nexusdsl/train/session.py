"""Everything a run needs, built once: configuration, data, model, objective, optimizer, and
(when resuming) the checkpoint's state. Shared by `nexus train`, `nexus eval`, `nexus generate`
and `nexusdsl.train`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.lower.program import compile_program
from nexusdsl.elaborate.program import Program, load
from nexusdsl.elaborate.train_config import (
    CALLS,
    NO_SPAN,
    SETTINGS,
    Call,
    TrainConfig,
    build_config,
    resolve_data_path,
)
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.memory import available_bytes, format_bytes
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import lora
from nexusdsl.train.data import Dataset, open_data
from nexusdsl.train.distributed import Dist
from nexusdsl.train.objective_table import make_objective
from nexusdsl.train.objectives import Objective
from nexusdsl.train.tokenizer import corpus_tokenizer
from nexusdsl.train.trainee import Trainee, trainee_for


@dataclass
class Session:
    program: Program
    config: TrainConfig
    module: Any  # the NexusModule
    trainee: Trainee
    data: Dataset
    objective: Objective
    dist: Dist
    out: Path | None = None
    net: Any = None  # what a training step calls (DDP/FSDP-wrapped trainee)
    optimizer: Any = None
    step: int = 0
    elapsed: float = 0.0
    tied: dict[str, str] = field(default_factory=dict)
    resumed: ckpt.Checkpoint | None = None
    until: int | None = None  # stop at this step (a checkpoint), the schedule still spanning `steps`
    start_step: int = 0  # where this run started (0, or the step it resumed)
    run_seconds: float = 0.0  # training time of this run alone: what `time` budgets
    stop: Any = None  # interrupts.StopRequest: a signal received while training
    metrics: Any = None  # metrics.MetricsLog: OUT/metrics.jsonl
    expert_load: Any = None  # expert_load.ExpertLoad: routing shares of MoE models
    precision: Any = None  # precision.Precision: autocast and loss scaling of a step

    @property
    def end(self) -> int:
        return min(self.config.steps, self.until or self.config.steps)

    @property
    def model_name(self) -> str:
        return self.module.graph.name

    @property
    def graph_hash(self) -> str:
        return self.module.graph.content_hash()

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint's JSON records besides the step, RNG and optimizer."""
        return {"model": self.model_name, "hyper": self.config.hyper,
                "config": self.config.to_json(), "graph_hash": self.graph_hash,
                "source": {"file": self.program.file,
                           "path": str(Path(self.program.file).resolve()),
                           "sha256": ckpt.source_hash(self.program.source)},
                "world_size": self.dist.world, "sharded": self.dist.sharded,
                **lora.base_record(self.trainee.base_sha256)}


def load_program(program_or_path) -> Program:
    return program_or_path if isinstance(program_or_path, Program) else load(program_or_path)


def configure(program: Program, model: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The file's train section with `overrides` applied; mistakes located in the file."""
    tree = program.model_ast(model)
    hyper_names = [p.name for p in tree.params if p.type is None]
    fields = program.train_config(tree.name)
    try:
        config = build_config(fields, hyper_names, overrides)
    except NexusError as err:
        raise NexusError(err.diagnostics, program.sources) from None
    # A default (unwritten) objective or data is reported at the train section, or at the
    # model when it has none, so that its mistakes are located too.
    section = program.train_section(tree.name)
    for name in ("objective", "data"):
        config.spans.setdefault(name, section.span if section else tree.span)
    resolve_data_path(config, program.file)
    return config


MAX_SEED = 2**32 - 1  # numpy's range; step seeds are seed * 1,000,003 + step, within 64 bits
MAX_LR = 1e3  # beyond, a typo (1e308 for 1e-3): the optimizer's own arithmetic overflows
MAX_FLOAT32 = 3.4e38  # weights are float32: a setting beyond cannot be applied to them
MAX_THREADS = 1024  # torch starts that many threads; more is a typo


def check_values(config: TrainConfig, sources: dict[str, str] | None = None) -> None:
    """Settings the train section's checks let through but no run can use: a seed the random
    generators cannot take (`--seed 99999999999999999999`), a number that is not finite
    (`--lr inf`) or beyond float32, a learning rate above MAX_LR (`--lr 1e308`). Located in
    the file, or one line for a flag."""
    problems = []
    if not 0 <= config.seed <= MAX_SEED:
        problems.append(NexusError.at(config.span("seed"), f"seed must be a whole number from "
                                      f"0 to {MAX_SEED}, got {config.seed}"))
    for name in sorted(SETTINGS - set(CALLS) - {"freeze", "seed"}):  # the numeric ones
        problems += _number_problems(name, getattr(config, name), config.span(name), "")
    for name in CALLS:
        call = getattr(config, name)
        for key, value in call.kwargs.items():
            problems += _number_problems(key, value, config.span(name), f" (in {name} {call.fn})")
    if problems:
        raise NexusError([d for p in problems for d in p.diagnostics], sources)


def _number_problems(key: str, value: Any, span, where: str) -> list[NexusError]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    if not math.isfinite(value):
        return [NexusError.at(span, f"{key} must be a finite number, got {value}{where}")]
    limit = {"lr": MAX_LR, "threads": MAX_THREADS}.get(key, MAX_FLOAT32)
    if abs(value) > limit:
        return [NexusError.at(span, f"{key} must be at most {limit:g}, got {value:.4g}{where}")]
    return []


def build(program: Program, model: str | None, config: TrainConfig, d: Dist,
          data: Dataset | None = None, graph=None) -> Session:
    """Compile the model (or lower `graph`, a checkpoint's own IR: a pruned model), open the
    data, check the objective fits, apply freeze and prefix."""
    try:
        module = (compile_program(program, model, seed=config.seed, device=d.device,
                                  **config.hyper) if graph is None
                  else lower(graph, device=d.device, seed=config.seed))
        data = data or open_data(config.data, corpus_tokenizer(program, module.graph,
                                                                config.objective))
        objective = make_objective(config.objective, config.span("objective"), module.graph, data)
        trainee = trainee_for(module, config)
        _check_sizes(config, data)
    except NexusError as err:
        raise NexusError(err.diagnostics, program.sources) from None
    session = Session(program, config, module, trainee, data, objective, d)
    session.tied = ckpt.aliases(trainee)
    return session


def _check_sizes(config: TrainConfig, data: Dataset) -> None:
    if "bytes" not in data.fields or "label" in data.fields:
        return
    need = config.context + 1
    for split, what in ((data.train, "training"), (data.heldout, "held-out")):
        if len(split) < need:
            raise NexusError.at(config.span("data"), f"{data.name}: its {what} part has "
                                f"{len(split)} bytes, fewer than context + 1 = {need}; use a "
                                "larger file or a smaller --context")


def dry_run(session: Session) -> None:
    """One tiny forward pass, so that a model that cannot take this data fails before any
    training starts, with the reason at the `objective` setting."""
    obj, config = session.objective, session.config
    gen = torch.Generator().manual_seed(0)
    batch = obj.prepare(session.data.train.sample(2, obj.length(config.context), gen), gen)
    batch = {k: v.to(session.dist.device) for k, v in batch.items()}
    try:
        with torch.no_grad():
            obj.loss(session.trainee, batch)
    except (RuntimeError, ValueError, IndexError) as err:
        fixed = _fixed_length_input(session, config.context)
        if fixed is not None:  # the likeliest cause, said in the user's terms
            raise NexusError(fixed.diagnostics, session.program.sources) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NexusError(NexusError.at(
            config.span("objective"), f"{session.model_name} cannot be trained with "
            f"{config.objective.fn} on {session.data.name} (a trial batch of 2, context "
            f"{config.context}): {reason}").diagnostics, session.program.sources) from None
    finally:
        collect_aux(session.trainee)


@dataclass
class Footprint:
    """Bytes one example's forward pass produces: in all (what training keeps for the
    backward pass) and in the largest single tensor (what evaluation needs at most)."""

    total: float
    largest: float


def footprint(session: Session) -> Footprint:
    """Measured on a trial forward pass of 2 examples: every leaf module's outputs (in the
    generated code every op is one), plus the batch itself."""
    obj, config = session.objective, session.config
    gen = torch.Generator().manual_seed(0)
    batch = obj.prepare(session.data.train.sample(2, obj.length(config.context), gen), gen)
    sizes = [_nbytes(batch)]
    leaves = [m for m in session.trainee.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda _m, _a, out: sizes.append(_nbytes(out)))
             for m in leaves]
    try:
        with torch.no_grad():
            obj.loss(session.trainee, {k: v.to(session.dist.device) for k, v in batch.items()})
    finally:
        for hook in hooks:
            hook.remove()
        collect_aux(session.trainee)
    return Footprint(sum(sizes) / 2, max(sizes) / 2)


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def check_memory(session: Session, training: bool = True) -> None:
    """Refuse, before allocating, a batch whose activations (training: all of them, kept for
    the backward pass, plus gradients and two optimizer slots per weight; evaluation: the
    largest tensor, twice) cannot fit in the memory this machine has left. A crude lower
    estimate: it refuses only what cannot fit, instead of swapping for minutes and dying."""
    have = available_bytes()
    if have is None:
        return
    config, per = session.config, footprint(session)
    examples = config.batch // session.dist.world
    need = examples * (per.total if training else 2 * per.largest)
    if training:
        need += 3 * sum(p.numel() * p.element_size() for p in session.trainee.parameters()
                        if p.requires_grad)
    if need > have:
        what = "training" if training else "evaluation"
        raise NexusError(NexusError.at(
            config.span("batch"), f"batch {config.batch} (context {config.context}) needs "
            f"about {format_bytes(need)} of memory for {what}, this machine has "
            f"{format_bytes(have)} available: use a smaller batch or context").diagnostics,
            session.program.sources)


def _fixed_length_input(session: Session, context: int) -> NexusError | None:
    """A token input whose sequence axis has a fixed size other than the context."""
    for port in session.objective.inputs:
        sizes = port.type.sizes
        if port.discrete and len(sizes) >= 2 and sizes[1] is not None and sizes[1] != context:
            node = session.trainee.model.graph.by_name(port.name)
            axis = port.type.axes[1].name or "its sequence axis"
            return NexusError.at(node.span if node else session.config.span("objective"),
                                 f"input {port.name} fixes {axis} = {sizes[1]}, but training "
                                 f"feeds {context} tokens: use --context {sizes[1]} (or leave "
                                 f"{axis} unsized)")
    return None


def collect_aux(module: torch.nn.Module) -> torch.Tensor | None:
    """Sum and clear the auxiliary losses op modules set during the last forward pass (MoE
    balance losses): every module may set a tensor attribute `aux_loss`; see
    docs/decisions.md, "Training"."""
    total = None
    for m in module.modules():
        aux = getattr(m, "aux_loss", None)
        if aux is not None:
            total = aux if total is None else total + aux
            m.aux_loss = None
    return total


def restore(session: Session, checkpoint: ckpt.Checkpoint) -> None:
    """Weights (before wrapping), step and elapsed time of a checkpoint."""
    ckpt.check_compatible(checkpoint, session.model_name, session.graph_hash,
                          session.program.file)
    lora.check_base(session.trainee.base_sha256, checkpoint)
    ckpt.load_weights(session.trainee, checkpoint.model)
    session.step = session.start_step = checkpoint.step
    session.elapsed = float(checkpoint.state.get("elapsed", 0.0))
    session.resumed = checkpoint


def from_checkpoint(program: Program, model: str | None, path: Path,
                    overrides: dict[str, Any] | None = None, device: str = "cpu") -> Session:
    """A session rebuilt from a checkpoint's recorded configuration (for eval, generate and
    prune) on `device`: the same hyperparameters and prefix; `overrides` may change data,
    batch or context."""
    checkpoint = ckpt.load(path)
    saved = saved_config(checkpoint)
    name = model or checkpoint.state["model"]
    if name not in program.models:
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint.path} was saved from model {checkpoint.state['model']} of "
            f"{checkpoint.state['source']['file']}; {program.file} has no model of that name "
            f"(it has {', '.join(program.models) or 'none'})")
    config = build_config({}, list(saved.hyper), {})
    config.hyper, config.prefix, config.objective = saved.hyper, saved.prefix, saved.objective
    config.data, config.context, config.batch = saved.data, saved.context, saved.batch
    config.eval_batches, config.seed = saved.eval_batches, saved.seed
    config.lora = saved.lora  # the adapters it holds
    overrides = dict(overrides or {})
    config.objective = _reward_of_file(program, name, config.objective, overrides.pop("reward", None))
    for key, value in overrides.items():
        if value is not None:
            config = _override(config, key, value)
    session = _build_saved(program, name, config, checkpoint, device)
    restore(session, checkpoint)
    return session


def _build_saved(program: Program, name: str, config: TrainConfig,
                 checkpoint: ckpt.Checkpoint, device: str = "cpu") -> Session:
    """`build` with the hyperparameters a checkpoint recorded. A mistake they cause inside the
    file (an edited state.json, or a file changed since) is the checkpoint's: one line naming
    it, with the place in the file."""
    graph = stored_graph(checkpoint)
    try:
        return build(program, name, config, Dist(device=device), graph=graph)
    except ckpt.CheckpointError:
        raise
    except NexusError as err:
        first = err.diagnostics[0]
        if not first.span.line:
            raise
        hyper = ", ".join(f"{k}={str(v)[:40]!r}" for k, v in config.hyper.items()) or "none"
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint.path}: model {name} does not build with the "
            f"hyperparameters it recorded ({hyper}): {first.span.file}:{first.span.line}:"
            f"{first.span.col}: {first.message}") from None


def saved_config(checkpoint: ckpt.Checkpoint) -> TrainConfig:
    """The configuration a checkpoint recorded, checked as a train section is: an edited or
    damaged state.json gives one error, not a wrong type deep inside a run."""
    raw = checkpoint.state["config"]
    fields = {k: (v, NO_SPAN) for k, v in raw.items() if k != "hyper"}
    try:
        config = build_config(fields, [], {})
        config.hyper = dict(raw.get("hyper", {}))
        check_values(config)
    except NexusError as err:
        raise ckpt.CheckpointError(f"checkpoint {checkpoint.path} is damaged: state.json's "
                                   f"config: {err.diagnostics[0].message}") from None
    return config


def _reward_of_file(program: Program, model: str, objective: Call, given: Any = None) -> Call:
    """A stored `ppo` objective with its reward taken from `given` (the caller's) or else from
    the file's train section, never from the checkpoint: a state.json could otherwise name any
    module to import (docs/decisions.md, "Training")."""
    if objective.fn != "ppo":
        return objective
    kwargs = {k: v for k, v in objective.kwargs.items() if k != "reward"}
    written = configure(program, model, {}).objective
    if given is None and written.fn == "ppo":
        given = written.kwargs.get("reward")
    if given is not None:
        kwargs["reward"] = given
    return Call("ppo", kwargs, written.span if written.fn == "ppo" else objective.span)


def stored_graph(checkpoint: ckpt.Checkpoint):
    """The IR a checkpoint carries (`nexus prune` writes the pruned one), or None. It must
    hash to the checkpoint's graph hash, checked before anything is built from it."""
    from nexusdsl.ir.graph import Graph

    raw = checkpoint.state.get("ir")
    if not raw:
        return None
    try:
        graph = Graph.from_dict(raw)
        same = graph.content_hash() == checkpoint.state["graph_hash"]
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        same = False
    if not same:
        raise ckpt.CheckpointError(f"checkpoint {checkpoint.path} is damaged: the IR in its "
                                   "state.json does not match its graph hash")
    return graph


def _override(config: TrainConfig, key: str, value: Any) -> TrainConfig:
    patched = build_config({}, list(config.hyper), {key: value})
    setattr(config, key, getattr(patched, key))
    config.spans[key] = NO_SPAN
    return config
