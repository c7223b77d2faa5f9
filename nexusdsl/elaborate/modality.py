"""`modality text = bytes(code = 0)`: checks a modality declaration and makes its spec."""

from __future__ import annotations

from nexusdsl.elaborate.evaluate import is_number
from nexusdsl.elaborate.values import Modality, OptionCall, describe
from nexusdsl.ir.types import ModalitySpec
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import UNKNOWN, DiagnosticSink, NexusError

# kind -> (required options, optional options with defaults), all positive integers
KINDS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "bytes": ((), {}),
    "ids": (("vocab",), {}),
    "patches": (("size",), {"channels": 3}),
    "frames": (("window",), {"hop": 0}),
    "tubelets": (("size", "frames"), {"channels": 3}),
    "signal": ((), {"channels": 1}),
}
# kind -> optional settings that name a directory, not a number
PATHS: dict[str, tuple[str, ...]] = {"ids": ("tokenizer",)}


def modality_spec(item: ast.Modality, call) -> ModalitySpec:
    if not isinstance(call, OptionCall) or call.name not in KINDS:
        kinds = ", ".join(KINDS)
        raise NexusError.at(item.value.span, f"a modality is one of {kinds}, got {describe(call)}")
    if call.args:
        raise NexusError.at(item.value.span, f"`{call.name}` takes named settings, e.g. {call.name}(code = 0)")
    required, optional = KINDS[call.name]
    paths = PATHS.get(call.name, ())
    options = dict(call.kwargs)
    code = options.pop("code", None)
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise NexusError.at(item.value.span, f"modality {item.name} needs `code = N` with N in 0..255")
    for key in options:
        if key not in required and key not in optional and key not in paths:
            allowed = ", ".join(("code", *required, *optional, *paths))
            raise NexusError.at(item.value.span, f"`{call.name}` has no setting `{key}` (it takes {allowed})")
    for key in required:
        if key not in options:
            raise NexusError.at(item.value.span, f"`{call.name}` needs `{key} = ...`")
    named = {key: options.pop(key) for key in paths if key in options}
    merged = {**optional, **options}
    for key, value in merged.items():
        if not is_number(value) or int(value) != value or value < (0 if key == "hop" else 1):
            raise NexusError.at(item.value.span, f"`{key}` must be a positive integer, got {describe(value)}")
    if call.name == "frames" and not merged["hop"]:
        merged["hop"] = merged["window"]
    settings: dict[str, int | str] = {k: int(v) for k, v in merged.items()}
    if "tokenizer" in named:
        settings["tokenizer"] = _tokenizer(item, named["tokenizer"], settings["vocab"])
    return ModalitySpec(name=item.name, kind=call.name, code=code, options=settings)


def _tokenizer(item: ast.Modality, source, vocab: int) -> str:
    """`ids(vocab = 32000, tokenizer = "dir")`: the directory of the model's tokenizer.json
    (relative to the file that declares the modality), read and checked here so that every
    mistake is located at the modality; the spec records the directory found."""
    from nexusdsl.weights.tokenizer import TokenizerError, open_tokenizer

    if not isinstance(source, str):
        raise NexusError.at(item.value.span, f"`tokenizer` names the directory of the model's "
                            f'tokenizer.json in quotes (tokenizer = "path/to/model"), got '
                            f"{describe(source)}")
    try:
        tokenizer = open_tokenizer(source, item.span.file)
    except TokenizerError as err:
        raise NexusError.at(item.value.span, f"modality {item.name}: {err}") from None
    if tokenizer.size > vocab:
        raise NexusError.at(item.value.span, f"modality {item.name}: tokenizer "
                            f"{tokenizer.directory} gives ids up to {tokenizer.size - 1}, but "
                            f"vocab = {vocab}: every id must be below vocab (use vocab = "
                            f"{tokenizer.size} or more)")
    return str(tokenizer.directory)


def input_modality(program, node) -> ModalitySpec | None:
    """The modality a model input of `program` was declared with (`input tokens: text[B,
    T]`), for later stages that read its settings (the tokenizer); None for an input of
    floats, ints or bools. The type records the modality's name, which the model's file
    resolves as it did when the model was built."""
    name = node.type.modality
    if name is None:
        return None
    from nexusdsl.elaborate.elaborator import Elaborator
    from nexusdsl.elaborate.modules import lookup_global
    from nexusdsl.elaborate.names import BUILTINS

    span = node.span or UNKNOWN
    found = lookup_global(program.scope, name, span, BUILTINS)
    if found is None or found[0] != "def" or not isinstance(found[1][1], ast.Modality):
        return None
    scope, item = found[1]
    elaborator = Elaborator(program.scope, DiagnosticSink(), program.sources)
    value = elaborator.definition_value(scope, item, span)
    return value.spec if isinstance(value, Modality) else None
