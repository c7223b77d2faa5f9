"""Located diagnostics: every user mistake is a `NexusError` carrying one or more `Diagnostic`s.

Rendering follows the compilers users already read every day:

    model.nx:12:9: error: shape mismatch in `x + h`: axis d is 128 on the left, 256 on the right
       12 |   x = x + h
          |         ^
      note: h was made at model.nx:11:7

Internal bugs stay ordinary Python exceptions; only user mistakes become `NexusError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexusdsl.lang.source import read_source


@dataclass(frozen=True)
class Span:
    """A source range: 1-based line and column of the first character, and of the end."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


UNKNOWN = Span("<unknown>", 0, 0)


@dataclass(frozen=True)
class Note:
    message: str
    span: Span | None = None


@dataclass(frozen=True)
class Diagnostic:
    span: Span
    message: str
    notes: tuple[Note, ...] = ()
    severity: str = "error"


class NexusError(Exception):
    """A user mistake (or several), each located in the source."""

    def __init__(self, diagnostics, sources: dict[str, str] | None = None):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.sources: dict[str, str] = dict(sources or {})
        super().__init__(self.render())

    @classmethod
    def at(cls, span: Span | None, message: str, *notes: Note) -> NexusError:
        return cls(Diagnostic(span or UNKNOWN, message, tuple(notes)))

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)

    def __str__(self) -> str:
        return self.render()


@dataclass
class DiagnosticSink:
    """Collects independent errors so that one run reports all of them."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, error: NexusError) -> None:
        for d in error.diagnostics:
            if d not in self.diagnostics:
                self.diagnostics.append(d)

    def raise_if_any(self, sources: dict[str, str]) -> None:
        if self.diagnostics:
            raise NexusError(self.diagnostics, sources)


def _source_line(sources: dict[str, str], span: Span) -> str | None:
    text = sources.get(span.file)
    if text is None:
        try:  # within the limits of a source file: the error may be that it is /dev/zero
            text = read_source(span.file)
        except (OSError, UnicodeDecodeError):
            return None
    lines = text.splitlines()
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1]
    return None


def _excerpt(sources: dict[str, str], span: Span) -> list[str]:
    line = _source_line(sources, span)
    if line is None:
        return []
    gutter = " " * (len(str(span.line)) + 4)
    width = 1
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    caret_pad = "".join(c if c == "\t" else " " for c in line[: max(span.col - 1, 0)])
    return [f"   {span.line} | {line}", f"{gutter}| {caret_pad}{'^' * width}"]


def render(diagnostic: Diagnostic, sources: dict[str, str]) -> str:
    out = [f"{diagnostic.span}: {diagnostic.severity}: {diagnostic.message}"]
    out += _excerpt(sources, diagnostic.span)
    for note in diagnostic.notes:
        where = f" at {note.span}" if note.span and note.span.line else ""
        out.append(f"  note: {note.message}{where}")
    return "\n".join(out)


def render_all(diagnostics: list[Diagnostic], sources: dict[str, str]) -> str:
    return "\n".join(render(d, sources) for d in diagnostics)
