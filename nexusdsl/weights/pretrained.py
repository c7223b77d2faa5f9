"""Modules of open-weight models as block values: `pretrained(source, module = path, frozen =
true)`, piped, called, passed to blocks or used as experts (docs/language.md, "Pretrained
modules").

`source` is a local Hugging Face directory (`config.json` + `*.safetensors`, possibly sharded
with `model.safetensors.index.json`). Nothing is ever downloaded and no code shipped with a
model is run: transformers is called with `local_files_only=True`, `trust_remote_code=False`,
and weights are read with safetensors only (pickled `*.bin` files are refused).

Checking a file (`pretrained_attrs`) reads the safetensors headers and the config, builds the
model on the meta device to find the module, what it takes (hidden states `[*, T, width]`, or
token ids `[*, T]` for an embeddings module or a whole model), whether it takes an attention
mask and its output width, and hashes the module's tensors. Lowering (`pretrained_forward`)
builds only that module, loads its tensors, and runs it with the node's own parameters and
buffers (`torch.func.functional_call`): the node's torch module holds both, so the
state_dict, freezing, `.to()` and `torch.export` all see ordinary parameters and buffers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

SAFE_INDEX = "model.safetensors.index.json"
_WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "hidden_dim")


class PretrainedError(Exception):
    """A mistake in a `pretrained(...)` call; the elaborator locates it at the call."""


# ---------------------------------------------------------------------------- the call


def pretrained_attrs(args: tuple, kwargs: dict[str, Any], nx_file: str | None) -> dict:
    """The `pretrained_module` attributes for `pretrained(source, module = ..., frozen = ...)`."""
    settings = dict(kwargs)
    names = ("source", "module", "frozen")
    if len(args) > len(names):
        raise PretrainedError("pretrained(...) takes source, module and frozen")
    for key, value in zip(names, args):
        if key in settings:
            raise PretrainedError(f"pretrained(...): `{key}` is given twice")
        settings[key] = value
    unknown = set(settings) - set(names)
    if unknown:
        raise PretrainedError(f"pretrained(...) has no setting `{sorted(unknown)[0]}` "
                              "(it takes source, module, frozen)")
    source, module = settings.get("source"), settings.get("module", "")
    frozen = settings.get("frozen", True)
    if not isinstance(source, str) or not isinstance(module, str) or not isinstance(frozen, bool):
        raise PretrainedError('pretrained(...) is written `pretrained("dir", module = "a.b", '
                              "frozen = true)`")
    path = resolve_source(source, nx_file)
    info = dict(inspect_module(str(path), module, _stamp(path)))
    keys = info.pop("keys")  # hashed every time: a file rewritten within the same mtime tick
    info["hash"] = tensor_hash(weight_files(path), keys)  # must not reuse a stale hash
    return {**info, "frozen": frozen}


def resolve_source(source: str, nx_file: str | None) -> Path:
    if not source:
        raise PretrainedError("pretrained: give the model's directory: "
                              'pretrained("path/to/model", module = "encoder.layer.3")')
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and nx_file:
        path = Path(nx_file).resolve().parent / path
    path = path.resolve()
    if not path.exists():
        raise PretrainedError(f"pretrained: there is no model directory at {path} (nothing is "
                              "downloaded; give a local Hugging Face directory with "
                              "config.json and *.safetensors)")
    if not path.is_dir():
        raise PretrainedError(f"pretrained: {path} is a file; give the model's directory "
                              "(config.json + *.safetensors)")
    if not (path / "config.json").is_file():
        raise PretrainedError(f"pretrained: {path} has no config.json")
    return path


def _stamp(path: Path) -> tuple:
    """Changes when any file of the model changes (invalidates the caches)."""
    return tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                        for f in path.iterdir() if f.is_file()))


# ---------------------------------------------------------------------------- a file + a block


def file_settings(args: tuple, kwargs: dict[str, Any], nx_file: str | None):
    """(path, block, key prefix, frozen) of `pretrained("w.safetensors", mlp(mult = 2))`."""
    settings = dict(kwargs)
    for key, value in zip(("source", "expert"), args):
        settings.setdefault(key, value)
    unknown = set(settings) - {"source", "expert", "module", "frozen"}
    if unknown or len(args) > 2 or "expert" not in settings:
        raise PretrainedError("pretrained(...) with a file is written "
                              '`pretrained("w.safetensors", mlp(mult = 2), module = "prefix", '
                              "frozen = true)`: the block or op whose parameters the file holds")
    source, prefix = settings.get("source"), settings.get("module", "")
    frozen = settings.get("frozen", True)
    if not isinstance(source, str) or not isinstance(prefix, str) or not isinstance(frozen, bool):
        raise PretrainedError('pretrained(...): source and module are strings, frozen is '
                              "true or false")
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and nx_file:
        path = Path(nx_file).resolve().parent / path
    if path.suffix != ".safetensors":
        raise PretrainedError(f"pretrained(file, block) reads a .safetensors file, got {path}")
    if not path.is_file():
        raise PretrainedError(f"pretrained: there is no file {path.resolve()} (nothing is "
                              "downloaded)")
    return path.resolve(), settings["expert"], prefix, frozen


def file_tensors(path: Path, prefix: str, names: dict[str, str], shapes: dict[str, tuple]):
    """Check that the file holds every parameter of the block with the right shape:
    ({region parameter: file key}, content hash)."""
    header = read_header(path)
    keys = {}
    for name, relative in names.items():
        key = f"{prefix}.{relative}" if prefix else relative
        if key not in header:
            have = ", ".join(sorted(header)[:6])
            raise PretrainedError(f"pretrained: {path.name} has no tensor `{key}` for the "
                                  f"block's parameter {relative} (it has {have}, ...)")
        if tuple(header[key]["shape"]) != tuple(shapes[name]):
            raise PretrainedError(f"pretrained: `{key}` in {path.name} has shape "
                                  f"{header[key]['shape']}, but the block's {relative} has "
                                  f"{list(shapes[name])}")
        keys[name] = key
    return keys, tensor_hash({k: path for k in keys.values()}, list(keys.values()))


def load_file_expert(region_module) -> None:
    """Load a `pretrained(file, block = ...)` region's parameters from its file."""
    import torch
    from safetensors import safe_open

    info = region_module.graph.hyper.get("pretrained")
    if not info:
        return
    path = Path(info["source"])
    digest = tensor_hash({k: path for k in info["params"].values()}, list(info["params"].values()))
    if digest != info["hash"]:
        raise ValueError(f"the weights in {path} changed since the program was checked")
    with safe_open(str(path), framework="pt") as f, torch.no_grad():
        for name, key in info["params"].items():
            target = region_module.get_parameter(name)
            if target.device.type != "meta":
                target.copy_(f.get_tensor(key).to(target.dtype))
    region_module.pretrained = {"source": info["source"], "module": info["module"],
                                "hash": info["hash"], "params": list(info["params"])}


# ---------------------------------------------------------------------------- safetensors


# A safetensors file is an 8-byte little-endian header length, a JSON header naming each
# tensor's dtype, shape and byte range, then the bytes. The header is checked against the file
# before anything trusts it: an empty, truncated or edited file is one located error, and no
# length read from the file decides how much is read (the safetensors library refuses headers
# over 100 MB too).
MAX_HEADER_BYTES = 100 * 2**20
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
                "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_CHUNK = 16 * 2**20  # tensors are hashed a piece at a time, not read whole


def _damaged(file: Path, why: str) -> PretrainedError:
    return PretrainedError(f"pretrained: {file} is not a complete safetensors file: {why}")


def read_header(file: Path) -> dict[str, dict]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of a safetensors file, checked."""
    return _read_header(file)[0]


def _read_header(file: Path) -> tuple[dict[str, dict], int]:
    """The checked header, and where the tensors' bytes start (offsets count from there)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _damaged(file, f"it has {size} bytes, fewer than the 8 of a header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise _damaged(file, f"its header would be {length:,} bytes long, but the file "
                               f"has {size:,}")
            header = json.loads(f.read(length))
    except OSError as err:
        raise PretrainedError(f"pretrained: cannot read {file}: {err.strerror or err}") from None
    except ValueError:  # not UTF-8, not JSON
        raise _damaged(file, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _damaged(file, "its header is not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        why = _entry_problem(entry, size - 8 - length)
        if why:
            raise _damaged(file, f"tensor `{name}` {why}")
    return header, 8 + length


def _entry_problem(entry: Any, data_bytes: int) -> str | None:
    """What is wrong with one tensor's header entry, or None."""
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
        return "has no known dtype"
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_whole(n) for n in shape):
        return "has no shape"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_whole, offsets))):
        return "has no byte range"
    start, end = offsets
    if not start <= end <= data_bytes:
        return f"lies at bytes {start:,}-{end:,}, past the end of the data ({data_bytes:,} bytes)"
    numel = 1
    for n in shape:
        numel *= n
    if end - start != numel * _DTYPE_BYTES[entry["dtype"]]:
        return f"has {end - start:,} bytes for a {entry['dtype']} tensor of shape {shape}"
    return None


def _whole(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _read_json(file: Path, what: str) -> Any:
    try:
        with open(file, "rb") as f:
            text = f.read(MAX_HEADER_BYTES + 1)
    except OSError as err:
        raise PretrainedError(f"pretrained: cannot read {file}: {err.strerror or err}") from None
    if len(text) > MAX_HEADER_BYTES:
        raise PretrainedError(f"pretrained: {file} is too large for {what}")
    try:
        return json.loads(text)
    except ValueError as err:
        where = f" (line {err.lineno}, column {err.colno})" if hasattr(err, "lineno") else ""
        raise PretrainedError(f"pretrained: {file} is not valid JSON{where}") from None


def _index_files(path: Path) -> dict[str, Path]:
    """The weight map of a sharded model: every shard a file of the model's own directory."""
    index = path / SAFE_INDEX
    data = _read_json(index, "an index")
    mapping = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise PretrainedError(f"pretrained: {index} has no weight_map of file names")
    files = {}
    for key, name in mapping.items():
        file = path / name
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise PretrainedError(f"pretrained: {index} maps `{key}` to {name!r}, which is not "
                                  "a .safetensors file of the model's directory")
        if not file.is_file():
            raise PretrainedError(f"pretrained: {index} maps `{key}` to {name}, which is missing")
        files[key] = file
    return files


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    if (path / SAFE_INDEX).is_file():
        return _index_files(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [f.name for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        extra = f" (it has {', '.join(pickled)}: pickle files are never loaded)" if pickled else ""
        raise PretrainedError(f"pretrained: {path} has no *.safetensors weights{extra}")
    return {name: f for f in files for name in read_header(f)}


def tensor_hash(files: dict[str, Path], names: list[str]) -> str:
    """sha256 over the named tensors' names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    headers: dict[Path, tuple[dict, int]] = {}
    for name in sorted(names):
        file = files[name]
        if file not in headers:
            headers[file] = _read_header(file)
        header, base = headers[file]
        entry = header.get(name)
        if entry is None:
            raise _damaged(file, f"it has no tensor `{name}`, which the index places there")
        start, end = entry["data_offsets"]
        digest.update(f"{name}|{entry['dtype']}|{entry['shape']}|".encode())
        _hash_bytes(digest, file, base + start, end - start)
    return digest.hexdigest()[:32]


def _hash_bytes(digest, file: Path, offset: int, count: int) -> None:
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            while count > 0:
                piece = f.read(min(count, _CHUNK))
                if not piece:  # shrunk since its header was read
                    raise _damaged(file, "it ends inside a tensor")
                digest.update(piece)
                count -= len(piece)
    except OSError as err:
        raise PretrainedError(f"pretrained: cannot read {file}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------- transformers


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def load_config(path: str):
    transformers = _transformers()
    settings = _read_json(Path(path) / "config.json", "a model's config")
    if not isinstance(settings, dict):
        raise PretrainedError(f"pretrained: {Path(path) / 'config.json'} is not a JSON object")
    try:
        return transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                       trust_remote_code=False)
    except (ValueError, KeyError, OSError, TypeError) as err:
        model_type = settings.get("model_type")
        raise PretrainedError(f"pretrained: transformers does not know the architecture "
                              f"`{model_type}` of {path} (code shipped with a model is never "
                              f"run): {str(err).splitlines()[0]}") from None


def meta_model(config):
    """The whole model on the meta device: its structure, no memory, no weights."""
    import torch

    transformers = _transformers()
    with torch.device("meta"):
        try:
            return transformers.AutoModel.from_config(config, trust_remote_code=False)
        except ValueError as err:
            raise PretrainedError(f"pretrained: transformers has no model for "
                                  f"`{config.model_type}`: {str(err).splitlines()[0]}") from None


def submodule(model, module: str):
    """The module at a dotted path; a path that leads nowhere names the place it stops at and
    what is there."""
    if not module:
        return model
    found, parts = model, module.split(".")
    for depth, part in enumerate(parts):
        children = dict(found.named_children())
        if part not in children:
            where = ".".join(parts[:depth])
            have = ", ".join(children) or "no modules"
            place = f"`{where}` holds" if where else "its top-level modules are"
            raise PretrainedError(f"pretrained: the model has no module `{module}` ({place} "
                                  f"{have})")
        found = children[part]
    return found


def first_tensor(out):
    """The hidden states of a module's output: a tensor, a tuple's first item, or a
    ModelOutput's first field."""
    import torch

    while not isinstance(out, torch.Tensor):
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        elif hasattr(out, "to_tuple"):
            out = out.to_tuple()[0]
        else:
            return None
    return out


def _width(config) -> int:
    for key in _WIDTH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise PretrainedError(f"pretrained: cannot tell the width of {config.model_type} models "
                          f"(its config has none of {', '.join(_WIDTH_KEYS)})")


def _forward_arguments(sub) -> list[str]:
    return list(inspect.signature(sub.forward).parameters)


def takes_ids(sub) -> bool:
    """Whether the module looks token ids up (an embeddings module, a table, a whole model)
    instead of transforming hidden states: an nn.Embedding, or a forward whose first argument
    is transformers' `input_ids`."""
    import torch

    arguments = _forward_arguments(sub)
    return isinstance(sub, torch.nn.Embedding) or arguments[:1] == ["input_ids"]


def mask_form(sub) -> str:
    """How the module takes a padding mask: "none" (its forward has no `attention_mask`),
    "padding" (a model: the [batch, T] mask of 1 and 0, which it turns into its layers' mask
    itself), "layers" (a module inside an encoder: the bidirectional mask its model makes
    for its layers) or "causal" (a module inside a causal model, whose mask its model makes
    together with the positions: only the whole model can take a padding mask)."""
    transformers = _transformers()
    if "attention_mask" not in _forward_arguments(sub):
        return "none"
    if isinstance(sub, transformers.PreTrainedModel):
        return "padding"
    causal = any(getattr(m, "is_causal", False) is True for m in sub.modules())
    return "causal" if causal else "layers"


def _probe_out(sub, width: int | None, module: str) -> int:
    """Run the module on meta tokens (4 vectors of its width, or 4 ids when `width` is None)
    to learn its output width."""
    import torch

    if width is None:
        probe, shown = torch.zeros(1, 4, dtype=torch.long, device="meta"), "token ids [1, 4]"
    else:
        probe, shown = torch.empty(1, 4, width, device="meta"), f"tokens [1, 4, {width}]"
    try:
        out = first_tensor(sub(probe))
    except Exception as err:  # noqa: BLE001  (any failure means: not a module over tokens)
        raise PretrainedError(f"pretrained: module `{module}` cannot be run on {shown} alone, "
                              "so it cannot be used as a block (a module that needs what its "
                              "model computes, such as rotary positions, runs in the whole "
                              f"model only): {type(err).__name__}: "
                              f"{str(err).splitlines()[0]}") from None
    if out is None or out.dim() != 3 or tuple(out.shape[:2]) != (1, 4):
        got = "no tensor" if out is None else f"shape {list(out.shape)}"
        raise PretrainedError(f"pretrained: module `{module}` gives {got} for {shown}, not "
                              "one vector per token ([batch, tokens, width])")
    return int(out.shape[-1])


def _prefix(files: dict[str, Path], model, module: str, names: list[str]) -> str:
    """The key prefix of the module's tensors in the files ('' or the base model's prefix)."""
    for prefix in ("", getattr(model, "base_model_prefix", "") + "."):
        keys = [f"{prefix}{module}.{n}" if module else f"{prefix}{n}" for n in names]
        if all(k in files for k in keys):
            return prefix
    missing = next(n for n in names if f"{module}.{n}" not in files)
    raise PretrainedError(f"pretrained: the safetensors files have no weights for "
                          f"`{module}.{missing}`")


def _lookup_tables(sub) -> tuple[list[str], int | None]:
    """The weights of the module's embedding tables (looked up, not multiplied: no FLOPs)
    and the rows of the first one (the vocabulary, for a module that takes ids)."""
    import torch

    tables = [(name, m) for name, m in sub.named_modules() if isinstance(m, torch.nn.Embedding)]
    names = sorted(f"{name}.weight" if name else "weight" for name, _ in tables)
    return names, (tables[0][1].num_embeddings if tables else None)


@lru_cache(maxsize=16)
def inspect_module(path: str, module: str, stamp: tuple) -> dict:
    """Everything the IR records about a pretrained module (cached per file state)."""
    files = weight_files(Path(path))
    config = load_config(path)
    model = meta_model(config)
    sub = submodule(model, module)
    params = {n: list(p.shape) for n, p in sub.named_parameters()}
    if not params:
        raise PretrainedError(f"pretrained: module `{module}` has no parameters")
    prefix = _prefix(files, model, module, list(params))
    full = {n: f"{prefix}{module}.{n}" if module else prefix + n for n in params}
    for name, key in full.items():
        shape = _header_shape(files[key], key)
        if shape != params[name]:
            raise PretrainedError(f"pretrained: `{key}` has shape {shape} in the weights but "
                                  f"{params[name]} in the model built from config.json")
    ids = takes_ids(sub)
    width = None if ids else _width(config)
    out = _probe_out(sub, width, module)
    tables, vocab = _lookup_tables(sub)
    # a module of ids records its output width as `width` too (it reads no vectors)
    found = {"source": path, "module": module, "prefix": prefix, "width": width or out,
             "out": out, "keys": list(full.values()), "tensors": params}
    # what came after experts: left out at its default, so an expert's node is as before
    extra = {"ids": ids, "vocab": vocab if ids else None, "mask_form": mask_form(sub),
             "tables": tables}
    return {**found, **{k: v for k, v in extra.items() if v not in (False, None, "none", [])}}


@lru_cache(maxsize=64)
def _header(file: Path) -> dict:
    return read_header(file)


def _header_shape(file: Path, key: str) -> list[int]:
    return list(_header(file)[key]["shape"])


# ---------------------------------------------------------------------------- lowering


def module_keys(attrs, names) -> dict[str, str]:
    base = f"{attrs.prefix}{attrs.module}." if attrs.module else attrs.prefix
    return {n: base + n for n in names}


def build_module(attrs):
    """The module with its weights, built from the local config (only this module), and the
    config of the model it belongs to (its layers' attention masks are made from it)."""
    import torch
    from safetensors import safe_open

    path = Path(attrs.source)
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained model directory {path} is gone")
    files = weight_files(path)
    model = meta_model(load_config(str(path)))
    sub = submodule(model, attrs.module).to_empty(device="cpu")
    state = sub.state_dict()
    keys = module_keys(attrs, state)
    digest = tensor_hash(files, [keys[n] for n in attrs.tensors])
    if digest != attrs.hash:
        raise ValueError(f"the weights of {attrs.module} in {path} changed since the program "
                         f"was checked (hash {digest}, expected {attrs.hash})")
    loaded = {}
    for name, key in keys.items():
        with safe_open(files[key], framework="pt") as f:
            loaded[name] = f.get_tensor(key)
    sub.load_state_dict(loaded, strict=True)
    if _has_unsaved_buffers(sub):
        model = _full_model(str(path))
        sub = submodule(model, attrs.module)
    return sub.to(torch.float32), model.config


def _has_unsaved_buffers(sub) -> bool:
    persistent = set(sub.state_dict())
    return any(n not in persistent for n, _ in sub.named_buffers())


def _full_model(path: str):
    """Fallback for modules with computed buffers: load the whole model with transformers."""
    transformers = _transformers()
    return transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False, use_safetensors=True)


def pretrained_forward(attrs):
    """The node's function: (*, T, width) vectors, or (*, T) ids, and an optional bool padding
    mask (*, T) -> (*, T, out), computed by the transformers module with the node's
    parameters and buffers (those of the torch module `m` running it, wherever `.to()` put
    them)."""
    import torch

    sub, config = build_module(attrs)
    params = list(attrs.tensors)
    buffers = [n for n, _ in sub.named_buffers()]
    token_axes = 1 if attrs.ids else 2  # the axes of one sequence: (T,) ids, (T, width) vectors
    if attrs.frozen:
        sub.eval()  # a frozen module keeps its inference behaviour (no dropout)

    def pretrained(m, x, mask=None):
        if not attrs.frozen:
            sub.train(m.training)
        lead = x.shape[:-token_axes]
        flat = x.reshape(-1, *x.shape[len(lead):])  # one sequence per row
        state = {n: m.get_parameter(n) for n in params}
        state.update((n, m.get_buffer(n)) for n in buffers)
        options = {}
        if mask is not None:
            rows = mask.reshape(-1, mask.shape[-1])
            options["attention_mask"] = attention_mask(attrs.mask_form, config, flat, rows)
        out = first_tensor(torch.func.functional_call(sub, state, (flat,), options))
        return out.reshape(*lead, *out.shape[-2:])

    pretrained.hf_module = sub
    return pretrained


def attention_mask(form: str, config, x, mask):
    """The `attention_mask` a module takes, from a bool padding mask [batch, T] (true for real
    tokens): a model's own [batch, T] mask of 1 and 0, or, for a module inside an encoder,
    the mask its model would make for its layers from that one."""
    import torch

    if form == "padding":
        return mask.to(torch.long)
    from transformers.masking_utils import create_bidirectional_mask

    # x gives the mask's batch, length, dtype and device only
    return create_bidirectional_mask(config=config, inputs_embeds=x, attention_mask=mask)


def attach_weights(module, attrs) -> None:
    """Copy the loaded weights into the node's parameters and let the module share them;
    register the module's buffers on the node's torch module too."""
    import torch

    sub = module._fn.hf_module
    module.pretrained = {"source": attrs.source, "module": attrs.module, "hash": attrs.hash}
    for name, param in list(sub.named_parameters()):
        target = module.get_parameter(name)
        if target.device.type == "meta":
            continue
        with torch.no_grad():
            target.copy_(param.to(target.dtype))
        owner, _, leaf = name.rpartition(".")
        (sub.get_submodule(owner) if owner else sub)._parameters[leaf] = target
    _adopt_buffers(module, sub)


def _adopt_buffers(module, sub) -> None:
    """The transformers module's buffers (position ids, rotary frequencies, masks) as buffers
    of the node's torch module, at the same paths as its parameters, so `.to()`, `.double()`
    and `.cuda()` move and cast them with the weights (the forward reads them from there).
    Each keeps its persistence (a non-persistent one stays out of the state_dict, as it does
    in transformers) and the dtype transformers makes it in: rotary frequencies stay float32
    in a bf16 model, as transformers keeps them, until `.to(dtype)` casts them."""
    device = next(module.parameters()).device
    persistent = set(sub.state_dict())
    for name, buffer in list(sub.named_buffers()):
        value = buffer.to(device=device)
        owner, _, leaf = name.rpartition(".")
        _holder(module, owner).register_buffer(leaf, value, persistent=name in persistent)
        if value.device.type != "meta":  # one copy in memory, as for the parameters
            (sub.get_submodule(owner) if owner else sub)._buffers[leaf] = value


def _holder(module, dotted: str):
    """The submodule at a dotted path of the node's torch module, made where missing (a
    module of buffers only, such as a rotary embedding, has no parameters to have made it)."""
    import torch

    for part in filter(None, dotted.split(".")):
        if part not in module._modules:
            module.add_module(part, torch.nn.Module())
        module = module._modules[part]
    return module
