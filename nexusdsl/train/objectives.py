"""Training objectives: next_token, denoise(mask, noise), contrastive(temperature), classify.

Each objective first checks that the model fits it (inputs the data can feed, outputs of the
right shape) and says what is wrong at the `objective` setting otherwise. Then, per step:
`prepare` draws its randomness (corruption, views) from the step's generator on the global
batch, `loss` runs the model on this process's slice, and `eval_sums`/`summarize` give the
held-out metrics (bits per byte for byte models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nexusdsl.elaborate.train_config import Call
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.types import TensorType
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.train.data import Dataset
from nexusdsl.train.waves import SAMPLES

LN2 = math.log(2.0)
DIGIT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class Port:
    """A model input or output: its name, type, and for inputs the modality kind of the
    embedding that reads it (bytes, ids, patches, ...) with its vocabulary."""

    name: str
    type: TensorType
    kind: str | None = None
    vocab: int | None = None

    @property
    def discrete(self) -> bool:
        return self.kind in ("bytes", "ids") or self.type.dtype == "i64"

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"


def defaulted(graph: Graph) -> tuple[str, ...]:
    """The names of the inputs declared with a default (`mask: bool[B, T] = true`)."""
    return tuple(n.name for n in graph.inputs() if "default" in n.attrs)


def ports(graph: Graph) -> tuple[list[Port], list[Port]]:
    inputs = []
    for node in graph.inputs():
        if "default" in node.attrs:
            continue  # a padding mask and the like: filled by the model when left out
        embeds = [u for u in graph.users(node) if u.op == "embed"]
        kind = embeds[0].attrs.get("kind") if embeds else None
        vocab = None
        if embeds and kind in ("bytes", "ids") and "weight" in embeds[0].params:
            vocab = embeds[0].params["weight"].shape[0]
        inputs.append(Port(node.name, node.type, kind, vocab))
    outputs = [Port(k, graph.type_of(v)) for k, v in graph.outputs.items()]
    return inputs, outputs


def first_output(out, name: str) -> torch.Tensor:
    return out[name] if isinstance(out, dict) else out


class Objective:
    """Base: the checks shared by all objectives, and feeding model inputs from a batch."""

    unit = "tok"  # what the throughput counts

    def __init__(self, call: Call, span: Span, model: str, inputs: list[Port],
                 outputs: list[Port], data: Dataset, defaulted: tuple[str, ...] = ()):
        self.call, self.span, self.model_name = call, span, model
        self.inputs, self.outputs, self.data = inputs, outputs, data
        self.options = call.kwargs
        self.sources = {p.name: self._source(p) for p in inputs}
        # inputs with a default that the data gives by name (a padded caption's
        # `caption_mask`): fed from it rather than filled with the default
        self.by_name = tuple(n for n in defaulted if n in data.fields)
        self.check()

    # -- checks ---------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        raise NexusError.at(self.span, f"objective {self.call.fn}: {message}")

    def _signature(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"{self.model_name}({ins}) -> ({outs})"

    def _source(self, port: Port) -> str:
        """The batch field that feeds an input."""
        fields = self.data.fields
        if port.discrete:
            field = next((f for f in ("tokens", "bytes", "caption") if f in fields), None)
            if field in ("bytes", "caption") and port.vocab is not None and port.vocab < 256:
                self.fail(f"input {port} has a vocabulary of {port.vocab}, but {self.data.name} "
                          "gives bytes (0..255)")
        else:
            field = "image" if "image" in fields and port.kind == "patches" else None
            if field:
                self._check_image(port)
            elif "audio" in fields and port.kind in ("frames", "signal"):
                field = "audio"  # the digits' DTMF tones (train/waves.py)
                self._check_audio(port)
        if field is None:
            hint = "; for images use `data = digits()` or --data digits" if port.kind == "patches" else ""
            self.fail(f"{self.data.name} has nothing to feed input {port} (it gives "
                      f"{', '.join(fields)}){hint}")
        return field

    def _check_image(self, port: Port) -> None:
        sizes = port.type.sizes[1:]
        if len(sizes) != 3 or any(s is not None and s != d for s, d in zip(sizes, DIGIT_SHAPE)):
            self.fail(f"input {port} cannot take the digits' [B, 1, 8, 8] images")

    def _check_audio(self, port: Port) -> None:
        sizes = port.type.sizes[1:]
        if len(sizes) != 1 or sizes[0] not in (None, SAMPLES):
            self.fail(f"input {port} cannot take the digits' [B, {SAMPLES}] tones")

    def one_output(self) -> Port:
        if len(self.outputs) != 1:
            self.fail(f"needs a model with one output; {self._signature()}")
        return self.outputs[0]

    def check_logits(self, conditioned: bool = False) -> Port:
        """next_token and denoise: one token input, one output [B, N, vocab]. With
        `conditioned`, other inputs (an image to caption) may come first: the token input's
        predictions are then the output's last positions."""
        tokens = [p for p in self.inputs if p.discrete]
        if len(tokens) != 1 or (len(self.inputs) > 1 and not conditioned):
            self.fail(f"needs a model with one token input; {self._signature()}")
        self.text = tokens[0]
        if self.sources[self.text.name] == "caption" and len(self.inputs) == 1:
            self.fail(f"needs a byte stream (text files, a folder, or the default corpus), "
                      f"but {self.data.name} gives {', '.join(self.data.fields)}")
        vocab = self.text.vocab or 256
        fits = [o for o in self.outputs if o.type.rank == 3 and o.type.axes[-1].size == vocab]
        # a model that also generates other modalities: its one output of logits is trained
        out = fits[0] if len(self.outputs) > 1 and len(fits) == 1 else self.one_output()
        last = out.type.axes[-1].size if out.type.rank else None
        if out.type.rank != 3 or last != vocab:
            self.fail(f"needs logits [B, T, {vocab}] over the input's vocabulary, but output "
                      f"{out} of {self.model_name} does not fit")
        return out

    def check(self) -> None:
        raise NotImplementedError

    # -- running ------------------------------------------------------------------------
    def feed(self, batch: dict[str, torch.Tensor], view: str = "") -> list[torch.Tensor]:
        return [batch[self.sources[p.name] + view] for p in self.inputs]

    def by_keyword(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every input the batch feeds, by name: the ports and the defaulted inputs the data
        gives (declared anywhere among the others, so not by position)."""
        fed = dict(zip((p.name for p in self.inputs), self.feed(batch)))
        return fed | {name: batch[name] for name in self.by_name}

    def length(self, context: int) -> int:
        return context

    def prepare(self, batch: dict[str, torch.Tensor], gen: torch.Generator):
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Throughput units in a batch: tokens of byte inputs, else examples."""
        x = self.feed(batch)[0]
        return x.numel() if self.inputs[0].discrete else x.shape[0]

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"] / max(sums["count"], 1)}


class NextToken(Objective):
    """Predict every next byte (token) of a window: cross-entropy, reported in bits per byte.
    A model with further inputs (Captioner: an image, then its caption) is conditioned on
    them and predicts the caption, whose logits are the output's last positions."""

    def check(self):
        self.out = self.check_logits(conditioned=True)

    def length(self, context):
        return context + 1

    def _ce(self, model, batch, reduction):
        x = batch[self.sources[self.text.name]]  # (n, T + 1)
        feeds = [x[:, :-1] if p is self.text else t for p, t in zip(self.inputs, self.feed(batch))]
        logits = first_output(model(*feeds), self.out.name)  # (n, [prefix +] T, V)
        logits = logits[:, logits.shape[1] - (x.shape[1] - 1):]  # (n, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(),
                               reduction=reduction)

    def loss(self, model, batch):
        return self._ce(model, batch, "mean")

    def count(self, batch):
        return batch[self.sources[self.text.name]][:, 1:].numel()

    def eval_sums(self, model, batch):
        sums = {"loss": self._ce(model, batch, "sum").item(), "count": self.count(batch)}
        if "token_bytes" in batch:  # a tokenized text: the bytes its targets stand for
            sums["bytes"] = int(batch["token_bytes"][:, 1:].sum())
        return sums

    def summarize(self, sums):
        loss = sums["loss"] / max(sums["count"], 1)
        if "bytes" in sums:  # the same code length per byte of text as a byte model's
            return {"loss": loss, "bpb": sums["loss"] / LN2 / max(sums["bytes"], 1),
                    "bits_per_token": loss / LN2}
        unit = "bpb" if self.text.kind in ("bytes", None) else "bits_per_token"
        return {"loss": loss, unit: loss / LN2}


class Denoise(Objective):
    """The autoencoder objective: a fraction `mask` of the bytes become NUL (the mask byte) and
    a fraction `noise` become random bytes; the model recovers the originals. The loss counts
    corrupted positions only."""

    def check(self):
        self.out = self.check_logits()
        self.mask = float(self.options.get("mask", 0.15))
        self.noise = float(self.options.get("noise", 0.0))
        if not 0 < self.mask + self.noise < 1:
            self.fail(f"mask + noise must be between 0 and 1, got {self.mask + self.noise:g}")

    def prepare(self, batch, gen):
        x = batch["bytes"]
        r = torch.rand(x.shape, generator=gen)
        noisy = torch.randint(0, 256, x.shape, generator=gen)
        masked, noised = r < self.mask, (r >= self.mask) & (r < self.mask + self.noise)
        corrupted = torch.where(masked, torch.zeros_like(x), torch.where(noised, noisy, x))
        return {**batch, "input": corrupted, "corrupt": masked | noised}

    def _ce(self, model, batch):
        """(the summed loss over corrupted positions, their count), both on the device."""
        logits = first_output(model(batch["input"]), self.out.name)  # (n, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["bytes"].flatten(),
                             reduction="none")
        corrupt = batch["corrupt"].flatten()
        return (ce * corrupt).sum(), corrupt.sum()

    def loss(self, model, batch):
        total, n = self._ce(model, batch)
        return total / n.clamp_min(1)  # a training step reads nothing back from the device

    def eval_sums(self, model, batch):
        total, n = self._ce(model, batch)
        return {"loss": total.item(), "count": int(n)}

    def summarize(self, sums):
        loss = sums["loss"] / max(sums["count"], 1)
        return {"loss": loss, "bits_per_corrupted_byte": loss / LN2}


class Classify(Objective):
    """Cross-entropy on class labels (digits, or a folder of class subfolders)."""

    unit = "ex"

    def check(self):
        out = self.one_output()
        if "label" not in self.data.fields:
            self.fail(f"needs labelled data (digits, or folder(\"dir\") with one subfolder per "
                      f"class), but {self.data.name} has no labels")
        classes = self.data.classes
        if out.type.rank != 2 or (out.type.axes[-1].size or 0) < classes:
            self.fail(f"needs an output [B, classes >= {classes}], but {self.model_name} gives "
                      f"{out}")
        self.out = out

    def _logits(self, model, batch):
        return first_output(model(*self.feed(batch)), self.out.name).float()

    def loss(self, model, batch):
        return F.cross_entropy(self._logits(model, batch), batch["label"])

    def eval_sums(self, model, batch):
        logits = self._logits(model, batch)
        loss = F.cross_entropy(logits, batch["label"], reduction="sum").item()
        correct = int((logits.argmax(-1) == batch["label"]).sum())
        return {"loss": loss, "correct": correct, "count": len(batch["label"])}

    def summarize(self, sums):
        n = max(sums["count"], 1)
        return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
             reduction: str = "mean") -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` should pick row i of `b` among all rows, and back."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature  # (n, n)
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target, reduction=reduction)
            + F.cross_entropy(logits.T, target, reduction=reduction)) / 2


class Contrastive(Objective):
    """InfoNCE between two outputs of one pass (two modalities: `image` and `caption`), or, for
    a model with one output, between two noisy views of each example. Outputs [B, ..., d] are
    mean-pooled over the middle axes. Negatives are the other examples of the process's batch."""

    unit = "ex"

    def check(self):
        self.temperature = float(self.options.get("temperature", 0.07))
        if len(self.outputs) not in (1, 2):
            self.fail(f"needs one output (two views) or two outputs (two modalities); "
                      f"{self._signature()}")
        widths = {o.type.axes[-1].size for o in self.outputs if o.type.rank >= 2}
        if any(o.type.rank < 2 for o in self.outputs) or len(widths) != 1 or None in widths:
            self.fail(f"needs outputs [B, ..., d] of one fixed width d; {self._signature()}")
        self.views = len(self.outputs) == 1

    def prepare(self, batch, gen):
        if not self.views:
            return batch
        extra = {}
        for field in set(self.sources.values()):
            for view in ("@1", "@2"):
                extra[field + view] = _augment(batch[field], gen)
        return {**batch, **extra}

    def _embeddings(self, model, batch):
        if self.views:
            name = self.outputs[0].name
            return (_pool(first_output(model(*self.feed(batch, "@1")), name)),
                    _pool(first_output(model(*self.feed(batch, "@2")), name)))
        out = model(**self.by_keyword(batch))
        return tuple(_pool(out[o.name]) for o in self.outputs)

    def loss(self, model, batch):
        return info_nce(*self._embeddings(model, batch), self.temperature)

    def eval_sums(self, model, batch):
        a, b = self._embeddings(model, batch)
        loss = info_nce(a, b, self.temperature, reduction="sum").item()
        picked = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).argmax(-1)
        hit = picked == torch.arange(len(a), device=picked.device)
        if "label" in batch:  # same-class captions are equally right
            hit |= batch["label"][picked] == batch["label"]
        return {"loss": loss, "correct": int(hit.sum()), "count": len(a)}

    def summarize(self, sums):
        n = max(sums["count"], 1)
        return {"loss": sums["loss"] / n, "retrieval_accuracy": sums["correct"] / n}


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1, -2).mean(1) if x.dim() > 2 else x  # (B, d)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view: 10% of bytes replaced at random, or images with pixel noise."""
    if x.dtype == torch.int64:
        swap = torch.rand(x.shape, generator=gen) < 0.1
        return torch.where(swap, torch.randint(0, 256, x.shape, generator=gen), x)
    return x + 0.1 * torch.randn(x.shape, generator=gen)
