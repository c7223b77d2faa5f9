"""What a `train` section trains (docs/language.md, "Train sections"): `freeze = [...]` and
`train = [...]` select parameters by name, `lora(targets = [...])` selects projections.

Torch-free: `nexus check` asks these of the elaborated graph and `nexus train` of the compiled
module's graph, so both see the same names and give the same errors.

A parameter selector is a glob (fnmatch: `*` crosses dots) over state_dict names that matches a
name or any dotted prefix of it: `tok` and `blocks.*.attention` select every parameter of those
nodes, `*.bias` every bias. A projection is a 2-D weight named by its module (`mlp.linear`,
`blocks.0.attention.out`), and the row blocks of a fused weight by pseudo-names: a `qkv` weight
stacks query, key and value rows (docs/ops.md, `attention`), so `blocks.0.attention.q`, `.k`
and `.v` name its three blocks, and a cross-attention's `kv` weight gives `.k` and `.v`.
LoRA targets match projection names whole (`*.q`, `*.swiglu.linear`), not their prefixes: a
prefix would make `*.attention` take both the fused weight and its blocks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nexusdsl.ir.graph import Graph, Node, ParamSpec
from nexusdsl.lang.diagnostics import NexusError, Span
from nexusdsl.ops.base import REGISTRY

LISTED = 8  # names an error lists before "..."
DEFAULT_TARGETS = ["*.q", "*.v"]  # LoRA's, as PEFT's for Llama-style models: q_proj, v_proj


def selects(pattern: str, name: str) -> bool:
    """Whether `pattern` names the parameter `name` or a node it lies under."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern)
               for i in range(1, len(parts) + 1))


def brief(names: Iterable[str]) -> str:
    """`tok.weight, blocks.*.attention.qkv.weight, ... (40 in all)`: the names with their
    numbers made `*` and repeats dropped, the first few; the count when that hides some."""
    names = list(names)
    shapes = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", n) for n in names))
    listed = ", ".join(shapes[:LISTED]) + (", ..." if len(shapes) > LISTED else "")
    return listed if len(shapes) == len(names) <= LISTED else f"{listed} ({len(names)} in all)"


def select(patterns: list[str], names: list[str], setting: str, model: str, span: Span,
           graph: Graph | None = None) -> set[str]:
    """The `names` (parameters) some pattern selects. A pattern that selects none is an error
    located at the setting: a plain name says which nodes hold parameters (as `freeze` always
    has), a glob lists the parameter names briefly."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if selects(pattern, n)}
        if not hits:
            raise NexusError.at(span, _nothing_selected(pattern, names, setting, model, graph))
        chosen |= hits
    return chosen


def _nothing_selected(pattern: str, names: list[str], setting: str, model: str,
                      graph: Graph | None) -> str:
    if any(c in pattern for c in "*?["):
        if graph is not None:  # the file's order, whether the names came from torch or not
            order = {name: i for i, name in enumerate(parameter_names(graph))}
            names = sorted(names, key=lambda n: order.get(n, len(order)))
        return (f"{setting}: `{pattern}` matches no parameter of {model} (its parameters: "
                f"{brief(names)})")
    if graph is not None and graph.by_name(pattern) is not None:
        return f"{setting}: node `{pattern}` has no parameters"
    tops = ", ".join(sorted({n.split(".")[0] for n in names}))
    return f"{setting}: {model} has no node `{pattern}` (nodes with parameters: {tops})"


def trainable(names: list[str], train: list[str], freeze: list[str], model: str,
              spans: dict[str, Span], graph: Graph | None = None) -> set[str]:
    """The parameters that keep training: those `train` selects (all when it is empty) less
    those `freeze` selects."""
    kept = select(train, names, "train", model, spans["train"], graph) if train else set(names)
    return kept - select(freeze, names, "freeze", model, spans["freeze"], graph)


# ----------------------------------------------------------------------------- projections


@dataclass(frozen=True)
class Projection:
    """What a LoRA target names: `rows` [start, end) of the 2-D weight `param` (all its rows
    but for a block of a fused weight), whose columns are the inputs."""

    name: str  # `blocks.0.attention.q`
    param: str  # `blocks.0.attention.qkv.weight`
    rows: tuple[int, int]
    columns: int

    @property
    def module(self) -> str:
        return self.param.rpartition(".")[0]

    @property
    def whole(self) -> bool:
        return self.name == self.module


def parameters(graph: Graph) -> Iterator[tuple[str, str, Node, ParamSpec]]:
    """(state_dict name, the node's name for it, node, spec) of every parameter of a graph
    and of the graphs nested in its nodes (`moe.experts.3.swiglu.linear.weight`), as the
    lowered module names them; a node sharing another's parameters has none of its own."""
    yield from _parameters(graph, "")


def _parameters(graph: Graph, prefix: str):
    for node in graph.nodes():
        if node.shares:
            continue
        for key, spec in node.params.items():
            yield f"{prefix}{node.name}.{key}", key, node, spec
        region_name = REGISTRY[node.op].region_name if node.op in REGISTRY else "regions"
        for i, region in enumerate(node.regions):
            yield from _parameters(region, f"{prefix}{node.name}.{region_name}.{i}.")


def parameter_names(graph: Graph) -> list[str]:
    """Trained tensors' names (buffers left out), tied names included: what `freeze` and
    `train` select from."""
    return [name for name, _, _, spec in parameters(graph) if not spec.buffer]


def projections(graph: Graph) -> dict[str, Projection]:
    """Every projection LoRA can adapt, by name: each untied 2-D `weight` by its module name,
    and the blocks of fused `qkv` and `kv` weights by pseudo-names. A tied weight (an
    embedding that is also the output head) is one tensor used twice: left out."""
    found: dict[str, Projection] = {}
    entries = [e for e in parameters(graph) if not e[3].buffer]
    tied = {spec.tied_to for _, _, _, spec in entries if spec.tied_to}
    for name, key, node, spec in entries:
        if key.rpartition(".")[2] != "weight" or len(spec.shape) != 2 or spec.tied_to \
                or name in tied:
            continue
        rows, columns = spec.shape
        module = name.rpartition(".")[0]
        found[module] = Projection(module, name, (0, rows), columns)
        owner = module.rpartition(".")[0]
        for part, block in _fused_blocks(key, rows, node).items():
            found[f"{owner}.{part}"] = Projection(f"{owner}.{part}", name, block, columns)
    return found


def _fused_blocks(key: str, rows: int, node: Node) -> dict[str, tuple[int, int]]:
    """The row blocks of a fused weight: `qkv` holds heads query heads, then kv_heads key and
    value heads, each of equal size (three equal blocks when the node gives no head counts);
    `kv` holds key rows then value rows."""
    if key == "kv.weight" and rows % 2 == 0:
        return {"k": (0, rows // 2), "v": (rows // 2, rows)}
    if key != "qkv.weight":
        return {}
    heads = node.attrs.get("heads")
    kv_heads = node.attrs.get("kv_heads") or heads
    if not isinstance(heads, int) or not isinstance(kv_heads, int) \
            or rows % (heads + 2 * kv_heads):
        heads = kv_heads = 1
        if rows % 3:
            return {}
    size = rows // (heads + 2 * kv_heads)
    q, k = heads * size, (heads + kv_heads) * size
    return {"q": (0, q), "k": (q, k), "v": (k, rows)}


def lora_targets(patterns: list[str], found: dict[str, Projection], model: str,
                 span: Span) -> list[Projection]:
    """The projections the target globs name (whole names), in the model's order. A glob
    naming none, and a weight adapted both whole and by its blocks, are errors at `lora`."""
    chosen: dict[str, Projection] = {}
    for pattern in patterns:
        hits = [p for name, p in found.items() if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise NexusError.at(span, f"lora: target `{pattern}` matches no projection of "
                                f"{model} (its projections: {brief(found)})")
        chosen.update((p.name, p) for p in hits)
    for p in chosen.values():
        overlap = [o.name for o in chosen.values() if o.param == p.param and o.name != p.name
                   and o.rows[0] < p.rows[1] and p.rows[0] < o.rows[1]]
        if overlap:
            raise NexusError.at(span, f"lora: the targets take `{p.name}` and `{overlap[0]}`, "
                                f"which adapt the same rows of {p.param}; target one of them")
    return [p for name, p in found.items() if name in chosen]


def check(graph: Graph, config) -> None:
    """A train section's selectors and LoRA targets, checked against the model (TrainConfig
    `config`): what `nexus check` runs, without torch."""
    spans = {k: config.span(k) for k in ("train", "freeze")}
    names = parameter_names(graph)
    trainable(names, config.train, config.freeze, graph.name, spans, graph)
    if config.lora is not None:
        lora_targets(config.lora.kwargs.get("targets", DEFAULT_TARGETS), projections(graph),
                     graph.name, config.span("lora"))

