"""The IR's text form (`nexus compile --emit ir`): reads like MLIR, with names and sources.

    model TinyLM(%tokens: text[B, T]) -> (%logits: f32[B, T, vocab=256]) {
      %tok = embed(%tokens) {dim = 128}        : f32[B, T, dim=128]   # tiny.nx:8:7
      ...
    }
"""

from __future__ import annotations

import json
from pathlib import Path

from nexusdsl.ir.graph import Graph, Node, ValueRef
from nexusdsl.ir.types import TensorType


def format_type(t: TensorType, with_modality: bool = False) -> str:
    kind = t.modality if with_modality and t.modality else t.dtype
    return f"{kind}[{', '.join(str(a) for a in t.axes)}]"


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if value.isidentifier() else json.dumps(value)
    if isinstance(value, dict) and "op" in value:
        inner = _format_attrs(value.get("attrs", {}))
        return value["op"] + (f"({inner[1:-1]})" if inner else "")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def _format_attrs(attrs: dict) -> str:
    shown = [f"{k} = {_format_value(v)}" for k, v in attrs.items() if v is not None]
    return "{" + ", ".join(shown) + "}" if shown else ""


def _output_type(graph: Graph, ref: ValueRef) -> str:
    try:  # the printer also shows broken graphs, for the verifier's messages
        return format_type(graph.type_of(ref))
    except (KeyError, IndexError):
        return "<missing>"


def _ref(graph: Graph, ref: ValueRef) -> str:
    try:
        node = graph.node(ref.node)
    except KeyError:
        return f"%<missing {ref.node}>"
    suffix = f"#{ref.index}" if len(node.outputs) > 1 else ""
    return f"%{node.name}{suffix}"


def format_node(graph: Graph, node: Node) -> str:
    args = ", ".join(_ref(graph, r) for r in node.inputs)
    attrs = _format_attrs(node.attrs)
    shares = f" shares {node.shares}" if node.shares else ""
    lhs = f"%{node.name} = {node.op}({args}){' ' + attrs if attrs else ''}{shares}"
    types = ", ".join(format_type(t) for t in node.outputs)
    where = f"   # {Path(node.span.file).name}:{node.span.line}:{node.span.col}" if node.span else ""
    return f"  {lhs:<58} : {types}{where}"


def print_graph(graph: Graph, around: str | None = None) -> str:
    inputs = ", ".join(f"%{n.name}: {format_type(n.type, True)}" for n in graph.inputs())
    outputs = ", ".join(f"%{k}: {_output_type(graph, v)}" for k, v in graph.outputs.items())
    lines = [f"model {graph.name}({inputs}) -> ({outputs}) {{"]
    body = [n for n in graph.nodes() if n.op != "input"]
    if around is not None:
        at = next((i for i, n in enumerate(body) if n.name == around), 0)
        body = body[max(at - 3, 0): at + 4]
    for n in body:
        lines.append(format_node(graph, n))
        for i, region in enumerate(n.regions):
            inner = print_graph(region).splitlines()
            lines += [f"    region {i}: {inner[0]}"] + [f"    {line}" for line in inner[1:]]
    lines += [f"  return {', '.join(f'{k} = {_ref(graph, v)}' for k, v in graph.outputs.items())}", "}"]
    return "\n".join(lines)
