"""What a LoRA run's checkpoint becomes outside training: merged weights (`nexus merge`), and
an adapter `peft` applies to the original transformers model (`nexus export --peft`).

    merge_run("runs/tiny-lora", "runs/tiny-merged")        # a run folder of plain weights
    merge_run("runs/tiny-lora", "tiny-merged.safetensors")  # or one safetensors file
    export_peft("runs/tiny-lora", "tiny-adapter")          # adapter_config.json + weights

The merged run folder is a checkpoint like any other: `nexus eval` and `nexusdsl.load_run`
read it as the plain model, with each adapted weight W + (alpha / rank) B A.

The PEFT adapter names transformers' modules. Which checkpoint tensor, and which of its rows,
an adapted block comes from, the model's bind rules say, run backwards
(`weights.export.exported_names`): the query rows of a fused qkv are q_proj's rows, so their
pair becomes PEFT's q_proj lora_A and lora_B; a checkpoint weight of which the block fills only
some rows (GPT-2's fused c_attn) gets zeros in the others. Anything PEFT's LoRA on a Linear
cannot say exactly (a transpose or reshape between the two, part of a weight's columns, a
3-D fused expert tensor) is refused, naming the parameter and the tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nexusdsl.elaborate.selectors import Projection, parameters, projections
from nexusdsl.fsutil import UnwritablePath, atomic_write_bytes, check_writable
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import lora
from nexusdsl.train.runs import Run, load_run
from nexusdsl.train.trainee import Trainee
from nexusdsl.weights.checkpoints import Source
from nexusdsl.weights.export import Part, exported_names
from nexusdsl.weights.transforms import Tree

WEIGHTS_FORMAT = "nexusdsl-weights/1"  # a merged model as one safetensors file


def load_lora_run(path: str | Path, file: str | Path | None = None,
                  model: str | None = None) -> Run:
    """`nexusdsl.load_run` of a LoRA run's checkpoint (its model with the adapters
    attached); any other checkpoint is refused."""
    state = ckpt.read_state(_where(Path(path)))
    if not isinstance(state.get(lora.RECORD), dict):
        raise ckpt.CheckpointError(f"checkpoint {path} is not a LoRA run (its train section "
                                   "had no `lora`): it holds no adapters")
    return load_run(path, file, model=model)


def _where(path: Path) -> Path:
    found = ckpt.find(path)
    if found is None:
        reason = "does not exist" if not path.exists() else "holds no checkpoint"
        raise ckpt.CheckpointError(f"checkpoint {path} {reason}")
    return found


def merge_run(path: str | Path, out: str | Path, file: str | Path | None = None,
              model: str | None = None) -> Path:
    """Fold a LoRA run's adapters into its base weights and write the plain model: a run
    folder `out` (a checkpoint at the run's step, without optimizer state), or one
    safetensors file when `out` ends in `.safetensors`. Returns what was written."""
    out = Path(out)
    _check_out(out)
    run = load_lora_run(path, file, model)
    lora.merge(run.model)
    plain = Trainee(run.model)
    if out.suffix == ".safetensors":
        return _write_file(plain, run, out)
    state = ckpt.read_state(run.path)
    config = dict(state["config"], lora=None)
    kept = {k: v for k, v in state.items()
            if k not in ("format", "step", "aliases", "optimizer", "rng", lora.RECORD)}
    return ckpt.save(out, run.step, plain.state_dict(), ckpt.aliases(plain),
                     {"state": {}, "param_groups": []},
                     {**kept, "config": config, "merged_from": str(run.path)})


def _check_out(out: Path) -> None:
    try:
        check_writable(out, directory=out.suffix != ".safetensors")
    except UnwritablePath as err:
        raise ckpt.CheckpointError(f"-o {out}: {err}") from None
    if out.suffix != ".safetensors" and ckpt.find(out) is not None:
        raise ckpt.CheckpointError(f"-o {out} already holds a checkpoint; choose another "
                                   "folder")


def _write_file(plain: Trainee, run: Run, out: Path) -> Path:
    """The merged weights under the model's parameter names, each tensor once (tied names in
    the metadata); `safetensors.torch.load_model` or `load_file` read it back."""
    from safetensors.torch import save

    tied = ckpt.aliases(plain)
    tensors = {ckpt.file_name(k): v.detach().cpu().contiguous()
               for k, v in plain.state_dict().items() if ckpt.file_name(k) not in tied}
    metadata = {"format": WEIGHTS_FORMAT, "model": run.model.graph.name,
                "graph_hash": run.model.graph.content_hash(), "aliases": json.dumps(tied),
                "merged_from": str(run.path)}
    atomic_write_bytes(out, save(tensors, metadata=metadata))
    return out


# ----------------------------------------------------------------------------- PEFT

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's modules
# transformers' class name ending -> PEFT's task type (other classes: none, a plain PeftModel)
TASKS = (("ForCausalLM", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
         ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"), ("ForSequenceClassification", "SEQ_CLS"),
         ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"))


class ExportError(ckpt.CheckpointError):
    """A LoRA run that has no exact PEFT form (one line, like a checkpoint's mistakes)."""


@dataclass
class Pair:
    """One transformers weight's LoRA pair: delta = scale * B A over its [out, in]."""

    key: str  # the checkpoint tensor, `model.layers.0.self_attn.q_proj.weight`
    source: Source
    a: torch.Tensor  # [rank, in]
    b: torch.Tensor  # [out, rank]
    embedding: bool  # read as a lookup table (nn.Embedding): PEFT stores it transposed

    @property
    def module(self) -> str:
        return self.key.removesuffix(".weight")


def export_peft(path: str | Path, out: str | Path, file: str | Path | None = None,
                model: str | None = None) -> Path:
    """Write a LoRA run as `out/adapter_config.json` and `out/adapter_model.safetensors`,
    which `peft.PeftModel.from_pretrained` applies to the transformers model the bind
    sections read. Returns `out`."""
    out = Path(out)
    try:
        check_writable(out, directory=True)
    except UnwritablePath as err:
        raise ExportError(f"--peft {out}: {err}") from None
    run = load_lora_run(path, file, model)
    pairs = peft_pairs(run)
    sources = {str(p.source.path): p.source for p in pairs}
    if len(sources) > 1:
        raise ExportError(f"the adapters of {run.path} adapt weights of {len(sources)} "
                          f"checkpoints ({', '.join(sorted(sources))}); a PEFT adapter applies "
                          "to one model")
    source = next(iter(sources.values()))
    settings = lora.Settings(run.config.lora)
    tensors = {}
    for p in pairs:
        if p.embedding:
            tensors[f"{PEFT_PREFIX}{p.module}.lora_embedding_A"] = p.b.T.contiguous()
            tensors[f"{PEFT_PREFIX}{p.module}.lora_embedding_B"] = p.a.T.contiguous()
        else:
            tensors[f"{PEFT_PREFIX}{p.module}.lora_A.weight"] = p.a.contiguous()
            tensors[f"{PEFT_PREFIX}{p.module}.lora_B.weight"] = p.b.contiguous()
    config = {"peft_type": "LORA", "task_type": _task(source),
              "base_model_name_or_path": str(source.path), "r": settings.rank,
              "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
              "target_modules": target_modules({p.module for p in pairs}, source),
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False,
              "modules_to_save": None}
    from safetensors.torch import save

    atomic_write_bytes(out / PEFT_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out / PEFT_CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return out


def peft_pairs(run: Run) -> list[Pair]:
    """The transformers weights a LoRA run adapts, each with its LoRA pair."""
    graph = run.model.graph
    binding = run.program.binding(graph.name, **run.config.hyper)
    if binding is None:
        raise ExportError(f"model {graph.name} of {run.program.file} has no bind section: a "
                          "PEFT adapter applies to the transformers model its weights are "
                          "bound from")
    found = projections(graph)
    ops = {name: node.op for name, _, node, _ in parameters(graph)}
    pairs: dict[str, Pair] = {}
    for target, (a, b) in lora.adapters(run.model).items():
        proj = found[target]
        tree = binding.plan.get(proj.param)
        if tree is None:
            raise ExportError(f"{proj.param} (adapted as `{target}`) is bound by no rule, so "
                              "the transformers model has no weight it comes from")
        embedding = ops[proj.param] == "embed"
        for pair in _pairs(tree, proj, a.detach().cpu(), b.detach().cpu(), embedding):
            if pair.key in pairs:
                raise ExportError(f"two adapters adapt {pair.key} (one is `{target}`); PEFT "
                                  "gives a weight one LoRA pair")
            pairs[pair.key] = pair
    return list(pairs.values())


def _pairs(tree: Tree, proj: Projection, a: torch.Tensor, b: torch.Tensor,
           embedding: bool) -> list[Pair]:
    """The LoRA pairs of the checkpoint weights whose rows the block `proj` adapts."""
    sources = {info.key: source for source, info in tree.reads()}
    lo, hi = proj.rows
    pairs = []
    for part in exported_names({proj.param: tree})[proj.param]:
        (start, stop), _ = part.param_region
        first, last = max(lo, start), min(hi, stop)
        if first >= last:
            continue  # the block takes none of this tensor's rows
        _check_part(part, proj)
        row = part.key_region[0][0] + first - start  # where the block's rows land in the key
        pair_b = b.new_zeros(part.key_shape[0], b.shape[1])
        pair_b[row:row + last - first] = b[first - lo:last - lo]
        pairs.append(Pair(part.key, sources[part.key], a.clone(), pair_b, embedding))
    return pairs


def _check_part(part: Part, proj: Projection) -> None:
    """A PEFT LoRA pair adapts a module's [out, in] weight: the block's rows must be whole rows
    of the checkpoint weight, its columns that weight's columns in order."""
    key, shape = part.key, list(part.key_shape)
    if len(shape) != 2 or not key.endswith(".weight"):
        problem = (f"{key} {shape} is not a module's 2-D weight (a fused expert tensor is "
                   "adapted through PEFT's target_parameters, which this export does not "
                   "write)")
    elif not part.exact or part.param_axes != (0, 1):
        problem = (f"a transform that moves rows or columns (transpose, reshape, "
                   f"rotary_halves) stands between it and {key}")
    elif part.key_region[1] != (0, shape[1]) or part.param_region[1] != (0, proj.columns):
        problem = f"its columns are not all of {key}'s"
    else:
        return
    raise ExportError(f"`{proj.name}` ({proj.param}) has no exact PEFT form: {problem}")


def target_modules(modules: set[str], source: Source) -> list[str]:
    """PEFT's target_modules: a module's last name (`q_proj`) where every module of that
    name in the checkpoint is adapted, the full names of the adapted ones otherwise."""
    by_name: dict[str, set[str]] = {}
    for module in modules:
        by_name.setdefault(module.rpartition(".")[2], set()).add(module)
    names = []
    for name, adapted in sorted(by_name.items()):
        everywhere = {k.removesuffix(".weight") for k in source.tensors
                      if k.endswith(".weight") and k.removesuffix(".weight").rpartition(".")[2]
                      == name}
        names += [name] if adapted == everywhere else sorted(adapted)
    return names


def _task(source: Source) -> str | None:
    classes = source.config.get("architectures") or []
    for ending, task in TASKS:
        if any(isinstance(c, str) and c.endswith(ending) for c in classes):
            return task
    return None
