"""`modality text = bytes(code = 0)`: checks a modality declaration and makes its spec."""

from __future__ import annotations

from nexusdsl.elaborate.evaluate import is_number
from nexusdsl.elaborate.values import OptionCall, describe
from nexusdsl.ir.types import ModalitySpec
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import NexusError

# kind -> (required options, optional options with defaults), all positive integers
KINDS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "bytes": ((), {}),
    "ids": (("vocab",), {}),
    "patches": (("size",), {"channels": 3}),
    "frames": (("window",), {"hop": 0}),
    "tubelets": (("size", "frames"), {"channels": 3}),
    "signal": ((), {"channels": 1}),
}


def modality_spec(item: ast.Modality, call) -> ModalitySpec:
    if not isinstance(call, OptionCall) or call.name not in KINDS:
        kinds = ", ".join(KINDS)
        raise NexusError.at(item.value.span, f"a modality is one of {kinds}, got {describe(call)}")
    if call.args:
        raise NexusError.at(item.value.span, f"`{call.name}` takes named settings, e.g. {call.name}(code = 0)")
    required, optional = KINDS[call.name]
    options = dict(call.kwargs)
    code = options.pop("code", None)
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise NexusError.at(item.value.span, f"modality {item.name} needs `code = N` with N in 0..255")
    for key in options:
        if key not in required and key not in optional:
            allowed = ", ".join(("code", *required, *optional))
            raise NexusError.at(item.value.span, f"`{call.name}` has no setting `{key}` (it takes {allowed})")
    for key in required:
        if key not in options:
            raise NexusError.at(item.value.span, f"`{call.name}` needs `{key} = ...`")
    merged = {**optional, **options}
    for key, value in merged.items():
        if not is_number(value) or int(value) != value or value < (0 if key == "hop" else 1):
            raise NexusError.at(item.value.span, f"`{key}` must be a positive integer, got {describe(value)}")
    if call.name == "frames" and not merged["hop"]:
        merged["hop"] = merged["window"]
    return ModalitySpec(name=item.name, kind=call.name, code=code, options={k: int(v) for k, v in merged.items()})
