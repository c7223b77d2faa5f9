"""The tokenizer a model's token input reads text with: its modality's (`ids(vocab = ...,
tokenizer = "dir")`, checked when the file was elaborated) or one given by `--tokenizer DIR`.

Used by training (a text corpus becomes the tokenizer's ids for next_token), `nexus generate`
(prompt in, text out) and `nexus run --text` (the text becomes the token input). A byte
modality reads UTF-8 bytes and takes no tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from nexusdsl.elaborate.modality import input_modality
from nexusdsl.elaborate.train_config import NO_SPAN, Call
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.objectives import ports
from nexusdsl.weights.tokenizer import TextTokenizer, TokenizerError, open_tokenizer


def input_tokenizer(program, graph, name: str) -> TextTokenizer | None:
    """The tokenizer the modality of input `name` names, or None."""
    node = graph.by_name(name)
    spec = input_modality(program, node) if node is not None else None
    source = spec.options.get("tokenizer") if spec is not None else None
    if not isinstance(source, str):
        return None
    try:  # read when the file was checked; only a file changed since can fail here
        return open_tokenizer(source)
    except TokenizerError as err:
        raise NexusError.at(node.span, f"input {name}: {err}") from None


def corpus_tokenizer(program, graph, objective: Call) -> TextTokenizer | None:
    """The tokenizer the data's text is read with for `objective`: next_token or contrastive
    on a model whose one token input names a tokenizer (a corpus becomes its ids, the digits'
    captions sentences through it). Other objectives read bytes, as they always have."""
    if objective.fn not in ("next_token", "contrastive"):
        return None
    tokens = [p for p in ports(graph)[0] if p.discrete]
    return input_tokenizer(program, graph, tokens[0].name) if len(tokens) == 1 else None


def flag_tokenizer(path: Path, flag: str = "--tokenizer") -> TextTokenizer:
    """A tokenizer named on the command line (relative to the working directory)."""
    try:
        return open_tokenizer(str(path))
    except TokenizerError as err:
        raise NexusError.at(NO_SPAN, f"{flag} {path}: {err}") from None


def text_tokenizer(program, graph, name: str, flag: Path | None) -> TextTokenizer | None:
    """What encodes text for token input `name`: `--tokenizer` when given, else the
    modality's; None for a byte modality (and an input that has none)."""
    spec = input_modality(program, graph.by_name(name))
    if spec is not None and spec.kind == "bytes":
        if flag is not None:
            raise NexusError.at(NO_SPAN, f"--tokenizer: input {name} reads bytes (modality "
                                f"{spec.name} = bytes), which need no tokenizer")
        return None
    return flag_tokenizer(flag) if flag is not None else input_tokenizer(program, graph, name)


def generation_tokenizer(program, graph, flag: Path | None) -> TextTokenizer | None:
    """What `nexus generate` encodes the prompt and decodes ids with: the tokenizer of the
    model's one token input (or `--tokenizer`), None for a byte model."""
    tokens = [p for p in ports(graph)[0] if p.discrete]
    if len(tokens) != 1:  # not a model generate can sample from: said by its checks
        return flag_tokenizer(flag) if flag is not None else None
    return text_tokenizer(program, graph, tokens[0].name, flag)


def text_inputs(program, graph, text: str, flag: Path | None) -> list:
    """`nexus run --text`: the model's inputs with `text` encoded into its one token input
    ([1, T]: bytes for a byte modality, else the tokenizer's ids) and every defaulted input
    full of its default, sized like the token input."""
    import torch

    token = _token_node(graph)
    ids = _encoded_text(program, graph, token, text, flag)
    sizes = {a.name: n for a, n in zip(token.type.axes, (1, len(ids))) if a.size is None}
    for axis, n in zip(token.type.axes, (1, len(ids))):
        if axis.size is not None and axis.size != n:
            raise NexusError.at(NO_SPAN, f"--text gives {n} {'token' if n == 1 else 'tokens'} "
                                f"and a batch of 1, but input {token.name} is {token.type}")
    tensors = []
    for node in graph.inputs():
        if node is token:
            tensors.append(torch.tensor([ids], dtype=torch.int64))
            continue
        missing = [a.name for a in node.type.axes if a.size is None and a.name not in sizes]
        if missing:
            raise NexusError.at(NO_SPAN, f"--text fills input {token.name} only, and input "
                                f"{node.name} ({node.type}) has an axis {missing[0]} it does "
                                "not size; give every input with --inputs")
        shape = [a.size if a.size is not None else sizes[a.name] for a in node.type.axes]
        dtype = {"bool": torch.bool, "i64": torch.int64}.get(node.type.dtype, torch.float32)
        tensors.append(torch.full(shape, node.attrs["default"], dtype=dtype))
    return tensors


def _token_node(graph):
    """The one input without a default, of token ids [B, T]."""
    required = [n for n in graph.inputs() if "default" not in n.attrs]
    if len(required) != 1 or required[0].type.dtype != "i64" or required[0].type.rank != 2:
        shown = ", ".join(f"{n.name}: {n.type}" for n in required)
        raise NexusError.at(NO_SPAN, f"--text feeds a model whose one input (besides inputs "
                            f"with a default) is token ids [B, T]; {graph.name} takes {shown}")
    return required[0]


def _encoded_text(program, graph, node, text: str, flag: Path | None) -> list[int]:
    from nexusdsl.compiler.lower.mlir import id_bound

    tokenizer = text_tokenizer(program, graph, node.name, flag)
    bound = id_bound(graph, node) or 256
    if tokenizer is None:
        spec = input_modality(program, node)
        if spec is None or spec.kind != "bytes":
            raise NexusError.at(NO_SPAN, f"--text: input {node.name} ({node.type}) has no "
                                "tokenizer: name one in its modality (ids(vocab = ..., "
                                'tokenizer = "dir")) or give --tokenizer DIR')
        ids = list(text.encode("utf-8"))
    else:
        check_fits(tokenizer, bound, f"input {node.name}")
        ids = tokenizer.encode(text)
    if not ids:
        raise NexusError.at(NO_SPAN, "--text gives no tokens: give some text")
    return ids


def check_fits(tokenizer: TextTokenizer, vocab: int, what: str) -> None:
    if tokenizer.size > vocab:
        raise NexusError.at(NO_SPAN, f"tokenizer {tokenizer.directory} gives ids up to "
                            f"{tokenizer.size - 1}, but {what} has a vocabulary of {vocab}")
