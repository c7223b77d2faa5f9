"""The models every backend is checked on, discovered rather than listed, so that what lands
later is covered (or fails loudly):

- every model of every `examples/*.nx`, at its train section's configuration where it has one,
  one layer deep (`depth = 1` where it has a depth);
- every block of every `stdlib/**/*.nx`, wrapped in a generated model with concrete sizes
  (`*` becomes the batch B, the last axis of each tensor parameter 16, other named axes stay
  symbolic; hyperparameters without a default get 4, a `depth` 1, unless `STDLIB_OVERRIDES`
  says otherwise);
- every model of `tests/backends/zoo.nx`, small models for the ops the first two leave out.

Symbolic axes take `SIZES` (B = 2, others 8) when run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nexusdsl.lang import ast
from nexusdsl.lang.parser import parse

ROOT = Path(__file__).resolve().parents[2]
ZOO = Path(__file__).with_name("zoo.nx")
WIDTH = 16  # the last axis of a wrapped block's tensor parameters
REQUIRED = 4  # a wrapped block's hyperparameters that have no default
SIZES = {"B": 2}
# Examples whose defaults would make slow IREE compilations (agents unrolled round by round).
EXAMPLE_HYPER: dict[str, dict] = {"RingSchool": {"agents": 3, "rounds": 1},
                                  "TreeSchool": {"agents": 3, "rounds": 1}}
SYMBOLIC = 8
# Blocks the generic wrapper cannot size (a grid input, a context of side^3 tokens, token
# ids): input types, arguments (both as .nx text) and lines to put before the model. Small
# sizes keep the IREE compilations quick.
MASKED = {"x": "float[B, T, 16]", "mask": "bool[B, T]"}
STDLIB_OVERRIDES: dict[str, dict] = {
    "axial_layer": {"inputs": {"x": "float[B, 4, 3, 16]"}, "args": {"axes": "[1, 2]"}},
    "grid_block": {"inputs": {"x": "float[B, 27, 16]"}, "args": {"side": "3"}},
    "mnn_lm": {"inputs": {"tokens": "text[B, 8]"},
               "args": {"dim": "16", "depth": "1", "side": "2"},
               "prelude": ["modality text = bytes(code = 0)"]},
    "moe_block": {"args": {"n": "3", "heads": "2", "mult": "1"}},
    "knn_moe_block": {"args": {"n": "3", "heads": "2", "mult": "1", "coords": "2"}},
    "ring_school": {"args": {"n": "3", "rounds": "1"}},
    "tree_school": {"args": {"n": "3", "rounds": "1"}},
    "hyena_block": {"args": {"filter": "16"}},
    "hyena_stack": {"args": {"filter": "16"}},
    "thann_layer": {"args": {"n": "3", "k": "2", "heads": "2", "mult": "1"}},
    "thann_encoder": {"args": {"widths": "[6, 5, 5]", "depth": "1", "n": "3", "k": "2",
                               "heads": "2", "mult": "1"}},
    # the layers of stdlib/families, at tiny sizes, with their padding masks
    "decoder_layer": {"inputs": MASKED, "args": {"heads": "4", "kv_heads": "2", "head_dim": "4",
                                                 "hidden": "8", "window": "3"}},
    "moe_layer": {"inputs": MASKED, "args": {"heads": "4", "kv_heads": "2", "head_dim": "4",
                                             "hidden": "8", "n": "3", "k": "2",
                                             "qk_norm": "rmsnorm"}},
    "deepseek_layer": {"inputs": MASKED, "args": {
        "heads": "2", "q_rank": "8", "kv_rank": "4", "nope_dim": "4", "rope_dim": "4",
        "v_dim": "4", "hidden": "8", "n": "4", "k": "2", "moe_hidden": "4", "groups": "2",
        "topk_groups": "1"}},
    "bert_layer": {"inputs": MASKED, "args": {"heads": "2", "hidden": "8"}},
    "gpt2_layer": {"inputs": MASKED, "args": {"heads": "2"}},
    "vit_layer": {"args": {"heads": "2", "hidden": "8"}},
    "gemma_layer": {"inputs": MASKED, "args": {"heads": "4", "kv_heads": "2", "head_dim": "4",
                                               "hidden": "8", "window": "3"}},
    "t5_encoder_layer": {"inputs": {"x": "float[B, S, 16]", "mask": "bool[B, S]",
                                    "bias": "float[2, S, S]"},
                         "args": {"heads": "2", "head_dim": "4", "hidden": "8"}},
    "t5_decoder_layer": {"inputs": {"y": "float[B, T, 16]", "memory": "float[B, S, 16]",
                                    "memory_mask": "bool[B, S]", "mask": "bool[B, T]",
                                    "bias": "float[2, T, T]"},
                         "args": {"heads": "2", "head_dim": "4", "hidden": "8"}},
}


@dataclass
class Case:
    id: str
    path: Path | None  # a file to load, or
    text: str | None = None  # generated source
    model: str | None = None
    hyper: dict = field(default_factory=dict)

    def load(self):
        import nexusdsl

        if self.path is not None:
            return nexusdsl.load(self.path.relative_to(ROOT))
        return nexusdsl.loads(self.text, f"<{self.id}>")


def example_cases() -> list[Case]:
    """Every model of every example, at its train section's configuration where it has one
    (an example may default to a design's full size, as THANN does) and one layer deep (a
    `depth` hyperparameter set to 1)."""
    import nexusdsl

    cases = []
    for path in sorted((ROOT / "examples").glob("*.nx")):
        program = nexusdsl.load(path.relative_to(ROOT))
        for name in program.models:
            hypers = {p.name for p in program.model_ast(name).params}
            hyper = {k: v for k, (v, _) in program.train_config(name).items() if k in hypers}
            hyper |= {"depth": 1} if "depth" in hypers else {}
            hyper |= EXAMPLE_HYPER.get(name, {})
            cases.append(Case(f"example:{path.stem}.{name}", path, None, name, hyper))
    return cases


def zoo_cases() -> list[Case]:
    return [Case(f"zoo:{model.name}", ZOO, model=model.name) for model in _models(ZOO)]


def stdlib_cases() -> list[Case]:
    cases = []
    stdlib = ROOT / "stdlib"
    for path in sorted(stdlib.rglob("*.nx")):
        module = "std." + ".".join(path.relative_to(stdlib).with_suffix("").parts)
        tree = parse(path.read_text(encoding="utf-8"), str(path))
        for block in (item for item in tree.items if isinstance(item, ast.Block)):
            text = wrap_block(module, block, tree.source)
            cases.append(Case(f"stdlib:{module}.{block.name}", None, text))
    return cases


def all_cases() -> list[Case]:
    return example_cases() + stdlib_cases() + zoo_cases()


def _models(path: Path) -> list[ast.Model]:
    tree = parse(path.read_text(encoding="utf-8"), str(path))
    return [item for item in tree.items if isinstance(item, ast.Model)]


# ---------------------------------------------------------------------------- block wrappers


def wrap_block(module: str, block: ast.Block, source: str) -> str:
    """A model that applies `block` to fresh inputs of concrete width."""
    override = STDLIB_OVERRIDES.get(block.name, {})
    types, given = override.get("inputs", {}), dict(override.get("args", {}))
    if any(p.name == "depth" and p.type is None for p in block.params):
        given.setdefault("depth", "1")  # one layer deep, as for the examples
    tensors = [p for p in block.params if p.type is not None]
    hyper = [p.name for p in block.params
             if p.type is None and (p.default is None or p.name in given)]
    inputs = [f"  input {p.name}: {types.get(p.name) or _input_type(p.type, source)}"
              for p in tensors]
    args = [p.name for p in tensors] + [f"{n} = {given.get(n, REQUIRED)}" for n in hyper]
    call = f"{block.name}({', '.join(args)})"
    outputs = _outputs(block, call)
    return "\n".join(["nexus 0.1", f"import {module}", *override.get("prelude", []), "",
                      f"model Wrap_{block.name}() {{", *inputs, *outputs, "}", ""])


def _input_type(texpr: ast.TensorTypeExpr, source: str) -> str:
    kind = texpr.kind or "float"
    dims = texpr.shape.dims
    parts = []
    for i, dim in enumerate(dims):
        if dim.star:
            parts.append("B")
        elif dim.size is not None:
            parts.append(_text(source, dim.span))
        elif i == len(dims) - 1:
            parts.append(str(WIDTH))
        else:
            parts.append(dim.name)
    return f"{kind}[{', '.join(parts)}]"


def _outputs(block: ast.Block, call: str) -> list[str]:
    """`output y = call`, or one output per value for a block returning a tuple."""
    returns = [s for s in block.body if isinstance(s, ast.Return)]
    count = len(returns[-1].values) if returns else 1
    if count == 1:
        return [f"  output y = {call}"]
    names = [f"y{i}" for i in range(count)]
    return [f"  {', '.join(names)} = {call}", *(f"  output {n}" for n in names)]


def _text(source: str, span) -> str:
    lines = source.splitlines()
    if span.end_line == span.line and span.end_col > span.col:
        return lines[span.line - 1][span.col - 1:span.end_col - 1]
    raise AssertionError(f"cannot quote the dimension at {span}")
