"""The language server driven through a whole editing session by pygls's own client, over a pipe
to `python -m nexusdsl.cli lsp`: open, diagnostics, change, hover, definition, completion."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path, to_fs_path

from tests.conftest import ROOT

GOOD = """\
nexus 0.1
import std.nn

modality text = bytes(code = 0)

model Small(dim = 32, heads = 2) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(rmsnorm(x), heads = heads, causal = true)
  x = x + mlp(rmsnorm(x), mult = 2)
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""
# line 10 (1-based) adds a tensor of width 64 to one of width 32
BROKEN = GOOD.replace("  output logits", "  y = x + linear(x, 64)\n  output logits")
TIMEOUT = 30


class _Client(LanguageClient):
    def __init__(self):
        super().__init__("nexus-test", "0")
        self.diagnostics: asyncio.Queue = asyncio.Queue()


def _position(text: str, needle: str, offset: int = 0) -> types.Position:
    """The position of `needle` in `text` (plus `offset` characters), 0-based as LSP counts."""
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return types.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))


async def _session(path: Path) -> dict:
    client = _Client()

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params: types.PublishDiagnosticsParams):
        client.diagnostics.put_nowait(params)

    await client.start_io(sys.executable, "-m", "nexusdsl.cli", "lsp", cwd=str(ROOT))
    uri = from_fs_path(str(path))
    doc = types.TextDocumentIdentifier(uri=uri)
    seen: dict = {}

    async def next_diagnostics():
        return await asyncio.wait_for(client.diagnostics.get(), TIMEOUT)

    async def request(coro):
        return await asyncio.wait_for(coro, TIMEOUT)

    try:
        await request(client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(path.parent)))))
        client.initialized(types.InitializedParams())
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="nx", version=1, text=GOOD)))
        seen["open"] = await next_diagnostics()

        def change(version: int, text: str):
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))

        change(2, BROKEN)
        seen["broken"] = await next_diagnostics()
        change(3, GOOD)
        seen["fixed"] = await next_diagnostics()

        def hover(needle, offset=0):
            return request(client.text_document_hover_async(types.HoverParams(
                text_document=doc, position=_position(GOOD, needle, offset))))

        def definition(needle, offset=0):
            return request(client.text_document_definition_async(types.DefinitionParams(
                text_document=doc, position=_position(GOOD, needle, offset))))

        seen["hover_attention"] = await hover("attention(")
        seen["hover_mlp"] = await hover("mlp(")
        seen["hover_nothing"] = await hover("nexus 0.1", 6)
        seen["def_mlp"] = await definition("mlp(")
        seen["def_tok"] = await definition("tie = tok", 6)
        seen["def_import"] = await definition("std.nn", 4)
        change(4, GOOD.replace("heads = heads, causal", "heads = heads, "))
        await next_diagnostics()
        edited = GOOD.replace("heads = heads, causal", "heads = heads, ")
        seen["completion"] = await request(client.text_document_completion_async(
            types.CompletionParams(text_document=doc,
                                   position=_position(edited, "heads = heads, ", 15))))
        await request(client.shutdown_async(None))
        client.exit(None)
    finally:
        await asyncio.wait_for(client.stop(), TIMEOUT)
    return seen


def test_a_session_open_change_hover_definition_completion(tmp_path):
    path = tmp_path / "small.nx"
    path.write_text(GOOD)
    seen = asyncio.run(_session(path))

    assert list(seen["open"].diagnostics) == []
    broken = seen["broken"].diagnostics
    assert len(broken) == 1 and "shape mismatch" in broken[0].message
    line = BROKEN.splitlines().index("  y = x + linear(x, 64)")
    plus = "  y = x + linear(x, 64)".index("+")
    assert broken[0].range.start == types.Position(line=line, character=plus)  # at the `+`
    assert broken[0].related_information  # "x was made at ..." notes
    assert list(seen["fixed"].diagnostics) == []

    # attention over d = 32: qkv (d x 3d + 3d) and out (d x d + d) = 4 d^2 + 4 d
    d = 32
    attention = seen["hover_attention"].contents.value
    assert "text[B, T, dim=32]" in attention and f"parameters: {4 * d * d + 4 * d:,}" in attention
    # mlp(mult = 2): d -> 2d -> d with biases
    mlp = seen["hover_mlp"].contents.value
    assert f"parameters: {d * 2 * d + 2 * d + 2 * d * d + d:,}" in mlp
    assert "block mlp(x: [*, d]" in mlp
    assert seen["hover_nothing"] is None

    stdlib = ROOT / "stdlib" / "nn.nx"
    mlp_line = stdlib.read_text().splitlines().index(
        next(s for s in stdlib.read_text().splitlines() if s.startswith("block mlp(")))
    assert Path(to_fs_path(seen["def_mlp"].uri)) == stdlib.resolve()
    assert seen["def_mlp"].range.start.line == mlp_line
    assert Path(to_fs_path(seen["def_tok"].uri)) == path.resolve()
    assert seen["def_tok"].range.start == _position(GOOD, "as tok", 3)
    assert Path(to_fs_path(seen["def_import"].uri)) == stdlib.resolve()

    labels = [item.label for item in seen["completion"].items]
    assert labels[:5] == ["heads", "causal", "axis", "bias", "dropout"]  # attention's attributes
    assert "moe" in labels and "mlp" in labels and "transformer_block" in labels
