"""`nexus lsp`: a language server for `.nx` files over stdio (pygls 2).

- diagnostics as you type: every error `nexusdsl.loads` reports, at its place, with its notes
  as related locations;
- hover: the shape and parameter count of the value under the cursor (for a hyperparameter
  expression such as `ws[i]` or `i % 2 == 0`, the values it took, one per `repeat` step), and
  the signature of the op or block named there;
- go to definition: blocks, models, constants and modalities (also in imported files), local
  values, and imported modules;
- completion: keyword arguments of the call around the cursor (an op's attributes, a block's
  hyperparameters), the local names in scope (the index of an enclosing `repeat ... as i`
  too), op names, the file's and its imports' definitions, keywords.

The answers come from `tools/analysis.py` and `tools/completion.py`; this module converts
positions (LSP's are 0-based) and speaks the protocol.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from nexusdsl.lang.diagnostics import Diagnostic, Span
from nexusdsl.tools import analysis, completion
from nexusdsl.version import __version__

log = logging.getLogger(__name__)

_KINDS = {
    "keyword-argument": types.CompletionItemKind.Property,
    "op": types.CompletionItemKind.Function,
    "function": types.CompletionItemKind.Function,
    "block": types.CompletionItemKind.Class,
    "module": types.CompletionItemKind.Module,
    "keyword": types.CompletionItemKind.Keyword,
    "option": types.CompletionItemKind.EnumMember,
    "value": types.CompletionItemKind.Variable,
}


class NexusServer(LanguageServer):
    """Keeps the latest analysis of every open document."""

    def __init__(self):
        super().__init__("nexus-lsp", __version__,
                         text_document_sync_kind=types.TextDocumentSyncKind.Full)
        self.analyses: dict[str, analysis.Analysis] = {}

    def refresh(self, uri: str) -> None:
        doc = self.workspace.get_text_document(uri)
        path = to_fs_path(uri) or uri
        try:
            result = analysis.analyze(doc.source, _display(path))
        except Exception:  # an internal bug must not take the editor's server down
            log.exception("analysis of %s failed", uri)
            return
        if result.scope is not None or uri not in self.analyses:
            self.analyses[uri] = result
        else:  # a syntax error while typing: keep the last tree for hover and completion
            self.analyses[uri] = _with_error(self.analyses[uri], result)
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=uri, version=doc.version, diagnostics=lsp_diagnostics(result, path)))


def _with_error(previous: analysis.Analysis, current: analysis.Analysis) -> analysis.Analysis:
    previous.error = current.error
    return previous


def _display(path: str) -> str:
    """The file name the compiler uses: relative to the working directory when inside it,
    like `nexus check` prints it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def to_range(span: Span) -> types.Range:
    line, col = max(span.line - 1, 0), max(span.col - 1, 0)
    if span.end_line and (span.end_line, span.end_col) > (span.line, span.col):
        end = types.Position(line=span.end_line - 1, character=span.end_col - 1)
    else:
        end = types.Position(line=line, character=col + 1)
    return types.Range(start=types.Position(line=line, character=col), end=end)


def _location(span: Span) -> types.Location:
    return types.Location(uri=from_fs_path(str(Path(span.file).resolve())), range=to_range(span))


def lsp_diagnostics(result: analysis.Analysis, path: str) -> list[types.Diagnostic]:
    if result.error is None:
        return []
    return [_diagnostic(d, path) for d in result.error.diagnostics]


def _diagnostic(d: Diagnostic, path: str) -> types.Diagnostic:
    here = _same_file(d.span.file, path) if d.span.line else False
    related = [types.DiagnosticRelatedInformation(location=_location(n.span), message=n.message)
               for n in d.notes if n.span is not None and n.span.line]
    message = d.message if here else f"{d.span}: {d.message}"  # in an imported file
    span = d.span if here else Span(path, 1, 1)
    severity = types.DiagnosticSeverity.Error if d.severity == "error" else types.DiagnosticSeverity.Warning
    return types.Diagnostic(range=to_range(span), message=message, severity=severity,
                            source="nexus", related_information=related or None)


def create_server() -> NexusServer:
    server = NexusServer()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: NexusServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.refresh(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: NexusServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.refresh(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: NexusServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.analyses.pop(params.text_document.uri, None)

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(ls: NexusServer, params: types.HoverParams) -> types.Hover | None:
        result = ls.analyses.get(params.text_document.uri)
        if result is None:
            return None
        pos = params.position
        text = analysis.hover(result, pos.line + 1, pos.character + 1)
        if text is None:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: NexusServer, params: types.DefinitionParams) -> types.Location | None:
        result = ls.analyses.get(params.text_document.uri)
        if result is None:
            return None
        pos = params.position
        span = analysis.definition(result, pos.line + 1, pos.character + 1)
        return _location(span) if span is not None else None

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=["(", ",", "."]))
    def complete(ls: NexusServer, params: types.CompletionParams) -> types.CompletionList:
        uri = params.text_document.uri
        text = ls.workspace.get_text_document(uri).source
        result = ls.analyses.get(uri) or analysis.Analysis(uri, text)
        pos = params.position
        items = [types.CompletionItem(label=c.label, kind=_KINDS.get(c.kind), detail=c.detail or None,
                                      insert_text=c.insert, sort_text=f"{i:04d}")
                 for i, c in enumerate(completion.completions(result, text, pos.line + 1,
                                                            pos.character + 1))]
        return types.CompletionList(is_incomplete=False, items=items)

    return server


def serve() -> None:
    """Run the server on stdin/stdout until the client disconnects."""
    create_server().start_io()
