"""Checkpoints of models with frozen pretrained experts: frozen weights are saved by reference.

`frozen_sources(model)` lists, for every `pretrained(...)` module of a compiled model, its
source directory, the content hash of the tensors it loaded, and the state_dict names of its
parameters. A checkpoint leaves those parameters out and records the list instead; loading it
refuses a model whose sources have other hashes (the weights the checkpoint was trained
against are gone) and keeps the frozen weights the model loaded itself.

    save_checkpoint(model, "step100.safetensors")
    load_checkpoint(model, "step100.safetensors")   # SourceChanged if a source changed
"""

from __future__ import annotations

import json
from pathlib import Path

METADATA_KEY = "nexus.frozen_sources"


class SourceChanged(ValueError):
    """A checkpoint was trained against pretrained weights that are no longer the same."""


def frozen_sources(model) -> list[dict]:
    """[{"source", "module", "hash", "frozen", "params": [state_dict names]}] of a model."""
    found = []
    for name, sub in model.named_modules():
        info = getattr(sub, "pretrained", None)
        if isinstance(info, dict):
            own = info.get("params") or [p for p, _ in sub.named_parameters()]
            params = [f"{name}.{p}" if name else p for p in own]
            frozen = all(not sub.get_parameter(p).requires_grad for p in own)
            info = {k: v for k, v in info.items() if k != "params"}
            found.append({**info, "frozen": frozen, "params": params})
    return found


def by_reference(model) -> set[str]:
    """The state_dict names a checkpoint does not copy: parameters of frozen sources."""
    return {p for s in frozen_sources(model) if s["frozen"] for p in s["params"]}


def checkpoint_state(model) -> tuple[dict, dict[str, str]]:
    """(tensors to save, safetensors metadata) for a model."""
    skip = by_reference(model)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in skip}
    sources = [{k: s[k] for k in ("source", "module", "hash", "params")}
               for s in frozen_sources(model) if s["frozen"]]
    return tensors, {METADATA_KEY: json.dumps(sources)}


def check_sources(model, metadata: dict[str, str] | None) -> None:
    """Refuse a checkpoint whose recorded sources differ from the model's."""
    recorded = json.loads((metadata or {}).get(METADATA_KEY, "[]"))
    current = {(s["module"], s["hash"]) for s in frozen_sources(model) if s["frozen"]}
    for entry in recorded:
        if (entry["module"], entry["hash"]) not in current:
            have = ", ".join(f"{m} ({h})" for m, h in sorted(current)) or "none"
            raise SourceChanged(
                f"the checkpoint was trained with {entry['module']} of {entry['source']} "
                f"(hash {entry['hash']}), but the model has {have}: the pretrained weights "
                "changed, so the checkpoint does not fit them")


def save_checkpoint(model, path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors, metadata = checkpoint_state(model)
    save_file(tensors, str(path), metadata=metadata)


def load_checkpoint(model, path: str | Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    check_sources(model, metadata)
    tensors = load_file(str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    left = set(missing) - by_reference(model)
    if left or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {sorted(left)}, "
                         f"unexpected {sorted(unexpected)}")
