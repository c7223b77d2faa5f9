"""`nexus import`, `nexus verify` and `nexus export --hf`: open-weight checkpoints as `.nx`
files and back (docs/families.md).

    nexus import ./tiny-llama -o tiny.nx         # a readable file: the family, its settings, a bind
    nexus verify tiny.nx --against ./tiny-llama  # transformers' own class on the same inputs
    nexus export tiny.nx --checkpoint runs/tiny --hf out/   # from_pretrained("out/") loads it

Nothing is downloaded and no code shipped with a checkpoint runs: a SOURCE is a local
directory or a hub id already in the local Hugging Face cache, pickled weights and configs
asking for remote code are refused, and transformers is asked for local files only.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import typer

from nexusdsl.cli.app import app, check_seed, fail, out, report
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.weights.checkpoints import CheckpointError, Source, open_source, resolve
from nexusdsl.weights.families import Family, FamilyError, import_plan

TOLERANCE = 1e-4  # largest relative difference `nexus verify` accepts, in float32
WIDTH = 100  # the written file's lines, as the formatter's other files
# files of a checkpoint directory that `export` copies beside the weights it writes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt",
                   "generation_config.json", "added_tokens.json", "spiece.model",
                   "preprocessor_config.json")
# config.json fields an export keeps from the checkpoint the model was bound from: what the
# hyperparameters do not say (token ids, the context the model was trained for)
CARRIED = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
           "max_position_embeddings")


def _checkpoint(source: str) -> tuple[Path, Source]:
    """A SOURCE of the command line (a directory relative to the working directory, or a hub
    id in the local cache), opened: only its headers and config are read."""
    try:
        path = resolve(source, None)
        return path, open_source(path)
    except CheckpointError as err:
        fail(f"error: {_plain(err)}")


def _plain(err: Exception) -> str:
    return str(err).removeprefix("bind: ")


def _plan(source: str, checkpoint: Source) -> tuple[Family, dict[str, Any], list[str]]:
    try:
        return import_plan(checkpoint.config, set(checkpoint.tensors))
    except FamilyError as err:
        fail(f"error: {source}: {err}")


# ---------------------------------------------------------------------------- nexus import


@app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="a Hugging Face checkpoint directory, or a hub id "
                                 "in the local cache (nothing is downloaded)"),
    output: Path = typer.Option(..., "-o", "--output", help="the .nx file to write"),
    name: Optional[str] = typer.Option(None, "--name", help="the model's name (default: "
                                       "from SOURCE's name)"),
    frozen: bool = typer.Option(False, "--frozen", help="bind the weights frozen (no "
                                "gradient when the model trains)"),
) -> None:
    """Write a .nx file of a checkpoint's model, every parameter bound from the checkpoint.

    The file imports the model's family, sets every hyperparameter from config.json in a
    model alias, and binds the checkpoint with the family's rule sets."""
    import nexusdsl

    path, checkpoint = _checkpoint(source)
    family, hyper, rule_sets = _plan(source, checkpoint)
    name = name or model_name(path if Path(source).expanduser().is_dir() else Path(source),
                              family)
    from nexusdsl.tools.tokens import KEYWORDS

    if not name.isidentifier() or not name.isascii() or name in KEYWORDS:
        fail(f"error: --name {name}: a model's name is a word of letters, digits and _ "
             "(not a keyword)")
    params = _family_params(family)
    missing = [p for p in params if p not in hyper]
    if missing or set(hyper) - set(params):  # the table and the family file out of step
        fail(f"error: internal: {family.module}'s {family.model} takes {', '.join(params)}; "
             f"the import gives {', '.join(hyper)}")
    text = import_text(source, family, {p: hyper[p] for p in params}, rule_sets, name,
                       _bind_path(source, path, output), frozen)
    from nexusdsl.fsutil import atomic_write_text

    atomic_write_text(output, text)
    try:  # the file binds every parameter, checked against the headers as compile checks it
        program = nexusdsl.load(output)
        binding = program.binding(name)
        unbound = _unbound(program, name, binding)
    except NexusError as e:
        report(e)
    if unbound:
        fail(f"error: {output}: {len(unbound)} parameters of {name} are bound by no rule: "
             f"{', '.join(unbound[:3])}")
    count = sum(_numel(tree.shape) for tree in binding.plan.values())
    out.print(f"wrote {output}: model {name} = {family.file}.{family.model}, {count:,} "
              f"parameters bound from {source} ({', '.join(family.file + '.' + r for r in rule_sets)})",
              markup=False)


def model_name(path: Path, family: Family) -> str:
    """`tiny-llama` -> TinyLlama, `all-MiniLM-L6-v2` -> AllMiniLML6V2; the family's model
    name when nothing usable is left."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", path.name) if w]
    name = "".join(w[0].upper() + w[1:] for w in words)
    if not name or not name[0].isalpha():
        name = family.model + name
    return name


def _family_params(family: Family) -> list[str]:
    """The family model's hyperparameters, in the order its file declares them (the file is
    parsed only: checking it would build DeepSeek-V3's 671B graph of defaults)."""
    from nexusdsl.lang import ast
    from nexusdsl.lang.parser import parse
    from nexusdsl.resources import stdlib_path

    path = stdlib_path(family.module)
    tree = parse(path.read_text(encoding="utf-8"), str(path))
    model = next(item for item in tree.items
                 if isinstance(item, ast.Model) and item.name == family.model)
    return [p.name for p in model.params if p.type is None]


def _bind_path(source: str, path: Path, output: Path) -> str:
    """SOURCE as the file should name it: a hub id as given; a directory relative to the
    file's folder (bind sections resolve paths from there), or absolute when the two share no
    folder but the root."""
    if not Path(source).expanduser().is_dir():
        return source
    folder = Path(output).resolve().parent
    if os.path.commonpath([path, folder]) == path.anchor:
        return str(path)
    return os.path.relpath(path, folder)


def _unbound(program, name: str, binding) -> list[str]:
    from nexusdsl.ops.base import state_specs

    specs = state_specs(program.elaborate(name))
    bound = set(binding.plan) if binding is not None else set()
    return [p for p, spec in specs.items() if not spec.tied_to and p not in bound]


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def import_text(source: str, family: Family, hyper: dict[str, Any], rule_sets: list[str],
                name: str, bind_path: str, frozen: bool) -> str:
    """The `.nx` file `nexus import` writes, laid out as `nexus fmt` lays it out."""
    head = f"model {name} = {family.file}.{family.model}("
    settings = [f"{k} = {nx_value(v)}" for k, v in hyper.items()]
    lines = [f"# `nexus import {source}`: transformers' {family.architecture} as "
             f"{family.module}'s {family.model},",
             "# every parameter bound from the checkpoint (docs/families.md).",
             "nexus 0.1", f"import {family.module}", "", *_wrap(head, settings), "",
             f'bind {name} from "{_escape(bind_path)}"{" frozen" if frozen else ""} {{',
             *(f"  use {family.file}.{r}" for r in rule_sets), "}"]
    return "\n".join(lines) + "\n"


def _wrap(head: str, items: list[str]) -> list[str]:
    """`head` then items separated by commas, continued under the opening parenthesis."""
    lines, line = [], head
    indent = " " * len(head)
    for i, item in enumerate(items):
        piece = item + (")" if i == len(items) - 1 else ",")
        if line not in (head, indent) and len(line) + 1 + len(piece) > WIDTH:
            lines.append(line)
            line = indent
        line += ("" if line in (head, indent) else " ") + piece
    lines.append(line if items else head + ")")
    return lines


def nx_value(value: Any) -> str:
    """A hyperparameter as .nx writes it: true, 12, 1e-5, 10000.0, [1, 2]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            sign = "-" if exponent.startswith("-") else ""
            text = f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(nx_value(v) for v in value) + "]"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# ---------------------------------------------------------------------------- nexus verify


@app.command()
def verify(
    file: Path = typer.Argument(..., help="the .nx file"),
    against: str = typer.Option(..., "--against", help="the checkpoint directory or cached "
                                "hub id transformers loads"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to check (if several)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random inputs"),
) -> None:
    """Compare a .nx model with transformers' own class of a checkpoint, in float32.

    Both run on the same random inputs; the largest relative difference of each output is
    printed, and the command exits with status 1 when one is beyond 1e-4."""
    import nexusdsl

    check_seed(seed)
    path, checkpoint = _checkpoint(against)
    family, hyper, _ = _plan(against, checkpoint)
    try:
        program = nexusdsl.load(file)
        ours = nexusdsl.compile(program, model, dtype="f32").eval()
    except NexusError as e:
        report(e)
    reference = _transformers_model(family, path)
    try:
        differences = compare(family.kind, ours, reference, hyper, seed)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        fail(f"error: {file} and {against} do not run on the same inputs: {_first_line(err)}")
    worst = 0.0
    for output, difference in differences.items():
        out.print(f"{output}: largest relative difference {difference:.3g}", markup=False)
        worst = max(worst, difference)
    if worst > TOLERANCE:
        fail(f"error: {file} differs from transformers' {family.architecture} by {worst:.3g} "
             f"(relative), more than {TOLERANCE:g}")
    out.print(f"ok: equal to transformers' {family.architecture} within {TOLERANCE:g}",
              markup=False)


def compare(kind: str, ours, reference, hyper: dict[str, Any], seed: int) -> dict[str, float]:
    """{output: largest |ours - theirs| / largest |theirs|} on random inputs of the family's
    kind: two rows, the second right-padded, compared at real positions only."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if kind == "vision":
            pixels = torch.randn(2, hyper["channels"], hyper["size"], hyper["size"],
                                 generator=gen)
            got, want = _outputs(ours(pixels)), reference(pixel_values=pixels)
            return _encoder_differences(got, want, torch.ones(2, 1, dtype=torch.bool))
        length = min(12, hyper.get("context", 12))
        tokens = torch.randint(0, hyper["vocab"], (2, length), generator=gen)
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[1, max(1, length - 5):] = False
        if kind == "causal":
            got = _outputs(ours(tokens=tokens, mask=mask))
            want = reference(input_ids=tokens, attention_mask=mask.long()).logits
            return {"logits": _difference(got["logits"], want, mask)}
        if kind == "encoder":
            segment = torch.randint(0, hyper["segments"], (2, length), generator=gen)
            got = _outputs(ours(tokens=tokens, segment=segment, mask=mask))
            want = reference(input_ids=tokens, token_type_ids=segment,
                             attention_mask=mask.long())
            return _encoder_differences(got, want, mask)
        decoder = torch.randint(0, hyper["vocab"], (2, 7), generator=gen)
        got = _outputs(ours(tokens=tokens, decoder_tokens=decoder, mask=mask))
        want = reference(input_ids=tokens, attention_mask=mask.long(),
                         decoder_input_ids=decoder).logits
        return {"logits": _difference(got["logits"], want, torch.ones(2, 7, dtype=torch.bool))}


def _outputs(result) -> dict:
    """A model's outputs by name (a one-output model returns its tensor alone)."""
    return result if isinstance(result, dict) else {"logits": result, "hidden": result}


def _encoder_differences(got: dict, want, mask) -> dict[str, float]:
    found = {"hidden": _difference(got["hidden"], want.last_hidden_state, mask)}
    if "pooled" in got:  # a model without the pooler has nothing to compare it with
        found["pooled"] = _difference(got["pooled"], want.pooler_output, None)
    return found


def _difference(ours, theirs, mask) -> float:
    if ours.shape != theirs.shape:
        raise ValueError(f"outputs of shapes {list(ours.shape)} and {list(theirs.shape)}")
    if mask is not None and mask.shape == ours.shape[:2]:
        ours, theirs = ours[mask], theirs[mask]  # padded positions are nobody's output
    scale = theirs.abs().max().item()
    return (ours - theirs).abs().max().item() / (scale or 1.0)


def _transformers_model(family: Family, path: Path):
    """transformers' class of the family, from local files only, its own code only."""
    try:
        import torch
        import transformers
    except ImportError:
        fail("error: nexus verify and export check against transformers, which is not "
             "installed (pip install transformers)")
    transformers.utils.logging.set_verbosity_error()  # its warnings and loading bars are noise here
    transformers.utils.logging.disable_progress_bar()
    cls = getattr(transformers, family.architecture, None)
    if cls is None:
        fail(f"error: this transformers ({transformers.__version__}) has no "
             f"{family.architecture}")
    try:
        model = cls.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                    dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        fail(f"error: transformers' {family.architecture} could not load {path}: "
             f"{_first_line(err)}")
    return model.eval()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------- nexus export


@app.command()
def export(
    file: Path = typer.Argument(..., help="the .nx file"),
    hf: Optional[Path] = typer.Option(None, "--hf", help="the directory to write, which "
                                      "transformers' from_pretrained loads"),
    peft: Optional[Path] = typer.Option(None, "--peft", help="write a LoRA run's adapters "
                                        "here instead, for peft (with --checkpoint)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="a run folder or "
                                              "step directory: export its trained weights"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model to export (if several)"),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="largest safetensors "
                                       "file; beyond it the weights are sharded with an index"),
) -> None:
    """Write a bound model as a Hugging Face checkpoint that from_pretrained loads.

    Its bind rules run backwards, with the config.json of its family's transformers class and
    the source's tokenizer files. With --peft, a LoRA run's adapters as adapter_config.json +
    adapter_model.safetensors."""
    import nexusdsl
    from nexusdsl.weights.export import ExportError, parse_size

    if (hf is None) == (peft is None):
        fail("error: give one of --hf (the whole model) and --peft (a LoRA run's adapters)")
    if peft is not None:
        from nexusdsl.cli.merge import export_peft

        return export_peft(file, checkpoint, peft, model)
    try:
        max_bytes = parse_size(max_shard_size)
    except ExportError as err:
        fail(f"error: --max-shard-size: {err}")
    _check_out(hf)
    try:
        program = nexusdsl.load(file)
        name = program.model_ast(model).name
    except NexusError as e:
        report(e)
    family = _family_of(program, name)
    module, overrides = _exported_module(program, name, file, checkpoint)
    try:
        binding = program.binding(name, **overrides)
        unbound = _unbound(program, name, binding) if binding is not None else []
    except NexusError as e:
        report(e)
    if binding is None:
        fail(f"error: model {name} has no bind section: export --hf writes a bound model's "
             "parameters under its checkpoint's names (`nexus import` writes such a file)")
    if unbound:
        fail(f"error: {len(unbound)} parameters of {name} are bound by no rule, so "
             f"transformers' {family.architecture} has no place for them: "
             f"{', '.join(unbound[:3])}")
    hyper = {**hyperparameters(program, name), **overrides}
    _write_export(hf, family, hyper, binding, module, max_bytes)


def _check_out(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        fail(f"error: --hf {folder}: it exists and is not an empty directory; export writes "
             "a new one")


def _family_of(program, name: str) -> Family:
    """The family a model is (through its aliases), if it is one of stdlib/families'."""
    from nexusdsl.lang import ast
    from nexusdsl.resources import resource_dir
    from nexusdsl.weights.families import FAMILIES, family_of_model

    scope, item, target = program.scope, program.scope.defs.get(name), name
    while isinstance(item, ast.ModelAlias) and scope is not None:
        expr = item.target
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            scope, target = scope.namespace(expr.value.id), expr.attr
        elif isinstance(expr, ast.Name):
            target = expr.id
        item = scope.defs.get(target) if scope is not None else None
    family = None
    if isinstance(item, ast.Model) and scope is not None:
        folder = (resource_dir("stdlib") / "families").resolve()
        where = Path(scope.file).resolve()
        if where.parent == folder:
            family = family_of_model(where.stem, target)
    if family is None:
        known = ", ".join(f"{f.file}.{f.model}" for f in FAMILIES.values())
        fail(f"error: model {name} is none of the families transformers has a class for "
             f"(std.families: {known}); export --hf writes those")
    return family


def _exported_module(program, name: str, file: Path, run: Path | None):
    """The model with the weights to export, and the hyperparameters it was built with."""
    import nexusdsl

    try:
        if run is None:
            return nexusdsl.compile(program, name), {}
        trained = nexusdsl.load_run(run, file, model=name)
    except NexusError as e:
        report(e)
    except (OSError, ValueError) as err:
        fail(f"error: --checkpoint {run}: {_first_line(err)}")
    from nexusdsl.train.lora import merge

    merge(trained.model)  # a LoRA run's adapters folded in: the weights it computes with
    return trained.model, dict(trained.config.hyper)


def hyperparameters(program, name: str) -> dict[str, Any]:
    """The model's hyperparameters as its definition (or alias) sets them."""
    return {p.name: _literal(p.default) for p in program.model_ast(name).params
            if p.type is None and p.default is not None}


def _literal(expr) -> Any:
    from nexusdsl.lang import ast

    if isinstance(expr, (ast.Int, ast.Float, ast.Bool)):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        return -_literal(expr.operand)
    if isinstance(expr, ast.ListExpr):
        return [_literal(e) for e in expr.items]
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def _write_export(folder: Path, family: Family, hyper: dict[str, Any], binding, module,
                  max_bytes: int) -> None:
    import json

    from nexusdsl.fsutil import atomic_directory
    from nexusdsl.weights.export import ExportError, sources_of, to_checkpoint, write_safetensors
    from nexusdsl.weights.families import export_config

    state = {**dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    missing = [p for p in binding.plan if p not in state]
    if missing:
        fail(f"error: the compiled model has no parameter {missing[0]} its bind rules fill")
    try:
        tensors = to_checkpoint(binding.plan, {p: state[p] for p in binding.plan})
        config = export_config(family, hyper, _dtype_name(tensors))
    except (ExportError, FamilyError) as err:
        fail(f"error: {err}")
    sources = sources_of(binding.plan)
    for key in CARRIED:
        if key not in config and sources and key in sources[0].config:
            config[key] = sources[0].config[key]
    with atomic_directory(folder) as tmp:
        files = write_safetensors(tmp, tensors, max_bytes)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for source in sources:
            for extra in TOKENIZER_FILES:
                if (source.path / extra).is_file():
                    shutil.copyfile(source.path / extra, tmp / extra)
    count = sum(t.numel() for t in tensors.values())
    out.print(f"wrote {folder}: {len(tensors)} tensors ({count:,} values, {config['dtype']}) "
              f"in {len([f for f in files if f.endswith('.safetensors')])} safetensors files, "
              f"config.json for transformers' {family.architecture}", markup=False)


def _dtype_name(tensors: dict) -> str:
    kinds = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    return kinds.pop() if len(kinds) == 1 else "float32"
