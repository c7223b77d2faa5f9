"""`nexus viz`: every example as DOT (always) and SVG (when Graphviz's `dot` is installed), with
the expert clusters, router switches, shapes on edges, modality colours and `--depth`."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from nexusdsl.tools.viz import PALETTE, human, render, to_dot
from tests.conftest import EXAMPLES

HAS_DOT = shutil.which("dot") is not None
MOE = """\
nexus 0.1
import std.nn

modality text = bytes(code = 0)
modality image = patches(size = 2, channels = 1, code = 1)

model Mixed(dim = 16) {
  input pixels: image[B, 1, 4, 4]
  input caption: text[B, T]
  x = concat(tag(embed(pixels, dim)), tag(embed(caption, dim) as tok), axis = 1)
  experts ffn = 3 of mlp(mult = 2)
  repeat 2 {
    x = x + moe(rmsnorm(x), ffn, router = topk(k = 2))
  }
  y = route(x) { text -> linear(dim); image -> linear(dim) }
  output logits = unembed(y, tie = tok)
}
"""


def _models(path: Path):
    program = nexusdsl.load(path)
    return [(m, program.elaborate(m)) for m in program.models]


def _edge_labels(source: str) -> list[str]:
    return re.findall(r'-> \S+ \[label="([^"]*)"', source)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_to_dot(path: Path, tmp_path: Path):
    for name, graph in _models(path):
        written, note = render(graph, tmp_path / f"{name}.dot")
        assert note is None
        source = written.read_text()
        assert source.startswith(f"digraph {name}")
        drawn = set(re.findall(r"^\s*(n\d+) \[", source, re.M))
        expected = {f"n{n.id}" for n in graph.nodes()}
        assert drawn == expected  # every node of the graph, nothing else
        labels = set(_edge_labels(source))
        for node in graph.nodes():
            for ref in node.inputs:  # every edge shows its tensor's shape
                axes = graph.type_of(ref).axes
                assert "[" + ", ".join(str(a) for a in axes) + "]" in labels


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed (DOT is tested above)")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_to_svg(path: Path, tmp_path: Path):
    for name, graph in _models(path):
        written, note = render(graph, tmp_path / f"{name}.svg")
        assert note is None and written.suffix == ".svg"
        root = ET.fromstring(written.read_text())
        assert root.tag.endswith("svg")
        titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
        assert {f"n{n.id}" for n in graph.nodes()} <= titles


def test_experts_are_a_cluster_with_a_router_switch():
    graph = nexusdsl.loads(MOE, "mixed.nx").elaborate()
    source = to_dot(graph).source
    moes = [n for n in graph.nodes() if n.op == "moe"]
    assert len(moes) == 2
    for moe in moes:
        assert f"subgraph cluster_moe_{moe.id}" in source
        assert re.search(rf"n{moe.id}_router \[label=\"router\ntopk\(k=2\)\" [^]]*shape=diamond", source)
        for i in range(3):  # one box per expert, fed by the router, summed into the moe node
            assert f"n{moe.id}_router -> n{moe.id}_e{i}" in source
            assert f"n{moe.id}_e{i} -> n{moe.id}" in source
        expert_params = sum(s.numel for n in moe.regions[0].nodes() for s in n.params.values())
        assert f"{human(expert_params)} params" in source
    takes = [n for n in graph.nodes() if n.op == "modal_take"]
    assert len(takes) == 2 and all(
        re.search(rf"n{t.id} \[[^]]*shape=diamond", source) for t in takes)


def test_modalities_have_colours_and_mixed_streams_are_striped():
    graph = nexusdsl.loads(MOE, "mixed.nx").elaborate()
    source = to_dot(graph).source
    text, image = PALETTE[0], PALETTE[1]  # colours follow modal codes: text 0, image 1
    assert re.search(rf'legend_text \[label=text [^]]*fillcolor="{text}"', source)
    assert re.search(rf'legend_image \[label=image [^]]*fillcolor="{image}"', source)
    concat = next(n for n in graph.nodes() if n.op == "concat")
    assert re.search(rf'n{concat.id} \[[^]]*fillcolor="{image}:{text}"[^]]*style=striped', source)
    tok = graph.by_name("tok")
    assert re.search(rf'n{tok.id} \[[^]]*fillcolor="{text}"', source)


def test_depth_collapses_repeated_blocks():
    graph = nexusdsl.load("examples/tiny_lm.nx").elaborate()
    source = to_dot(graph, depth=2).source
    groups = sorted(set(re.findall(r'^\s*"g_(\S+)" \[', source, re.M)))
    assert groups == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    per_block = [n for n in graph.nodes() if n.name.startswith("blocks.0.")]
    params = sum(s.numel for n in per_block for s in n.params.values())
    assert f"blocks.0\n{len(per_block)} nodes" in source and f"{human(params)} params" in source
    # the chain tok -> blocks.0 -> ... -> blocks.3 -> final norm, once each
    assert re.findall(r'"(g_blocks\.\d)" -> "(g_blocks\.\d)"', source) == [
        ("g_blocks.0", "g_blocks.1"), ("g_blocks.1", "g_blocks.2"), ("g_blocks.2", "g_blocks.3")]
    full = to_dot(graph).source
    assert "g_blocks" not in full and 'subgraph "cluster_blocks.0"' in full


def test_without_dot_the_dot_file_is_written_with_a_how_to(tmp_path: Path, monkeypatch):
    def missing(*args, **kwargs):
        raise graphviz.ExecutableNotFound(("dot",))

    monkeypatch.setattr(graphviz.Digraph, "pipe", missing)
    graph = nexusdsl.load("examples/tiny_lm.nx").elaborate()
    written, note = render(graph, tmp_path / "tiny.svg")
    assert written == tmp_path / "tiny.dot" and written.read_text().startswith("digraph TinyLM")
    assert f"dot -Tsvg {written} -o {tmp_path / 'tiny.svg'}" in note


def test_cli(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "gpt.dot"
    result = runner.invoke(app, ["viz", "examples/gpt.nx", "-o", str(out), "--depth", "2"])
    assert result.exit_code == 0 and f"wrote {out}" in result.output
    assert "g_blocks.0" in out.read_text()
    bad = runner.invoke(app, ["viz", "examples/gpt.nx", "-o", str(tmp_path / "x.jpg")])
    assert bad.exit_code == 1 and "choose a .svg, .png, .pdf or .dot file" in bad.output
    missing = runner.invoke(app, ["viz", "examples/gpt.nx", "--model", "Nope", "-o", str(out)])
    assert missing.exit_code == 1 and "no model `Nope`" in missing.output
