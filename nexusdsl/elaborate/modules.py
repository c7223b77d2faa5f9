"""Files, imports and names: loads a file and everything it imports (detecting cycles), and
resolves unqualified names in the order docs/language.md gives ("Program structure"): the
file's own definitions, builtins, then imported modules in import order."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note, Span
from nexusdsl.lang.parser import parse
from nexusdsl.lang.source import read_source
from nexusdsl.resources import stdlib_path

# Configuration functions: calling them makes an `OptionCall` for the op or section that
# receives it (routers, wirings, topologies, modality kinds, data, objectives, optimizers,
# initialisations).
OPTION_FUNCTIONS = frozenset(
    "bytes ids patches frames tubelets signal topk knn hash local random ring tree star full "
    "pretrained text folder digits waves denoise contrastive classify next_token ppo adamw sgd "
    "cosine constant rope llama3 yarn normal uniform".split()
)
MODALITY_KINDS = ("bytes", "ids", "patches", "frames", "tubelets", "signal")


class FileScope:
    """One loaded `.nx` file: its definitions and the modules it imports."""

    def __init__(self, program: ast.Program, display: str):
        self.program = program
        self.file = program.file
        self.display = display
        self.defs: dict[str, ast.Stmt] = {}
        self.trains: list[ast.Train] = []
        self.binds: list[ast.Bind] = []  # `bind Model from "dir" { ... }` sections
        self.imports: list[tuple[str, FileScope]] = []
        self.cache: dict[str, Any] = {}  # evaluated lets and modalities

    @property
    def models(self) -> list[ast.Model]:
        return [d for d in self.defs.values() if isinstance(d, ast.Model)]

    @property
    def aliases(self) -> list[ast.ModelAlias]:
        """`model Small = llama.Llama(dim = 256)`: models of other definitions."""
        return [d for d in self.defs.values() if isinstance(d, ast.ModelAlias)]

    def namespace(self, name: str) -> FileScope | None:
        return next((scope for alias, scope in self.imports if alias == name), None)


def _definition_name(item: ast.Stmt) -> str | None:
    if isinstance(item, (ast.Let, ast.Modality, ast.Block, ast.Model, ast.ModelAlias,
                         ast.Weights)):
        return item.name
    return None


class Loader:
    """Loads files once each; reports missing files, unknown modules and import cycles at the
    import line."""

    def __init__(self, sink: DiagnosticSink):
        self.sink = sink
        self.sources: dict[str, str] = {}
        self.scopes: dict[str, FileScope] = {}
        self._loading: list[str] = []
        self._via: list[Span] = []  # _via[i]: the import line in file _loading[i] being followed

    def load_text(self, text: str, file: str, key: str | None = None) -> FileScope:
        key = key or file
        self.sources[file] = text
        self._loading.append(key)
        try:
            scope = FileScope(parse(text, file), file)
            self.scopes[key] = scope
            self._collect(scope)
        finally:
            self._loading.pop()
        return scope

    def _collect(self, scope: FileScope) -> None:
        for item in scope.program.items:
            if isinstance(item, ast.Import):
                self._import(scope, item)
            elif isinstance(item, ast.Train):
                scope.trains.append(item)
            elif isinstance(item, ast.Bind):
                scope.binds.append(item)
            else:
                self._define(scope, item)

    def _define(self, scope: FileScope, item: ast.Stmt) -> None:
        name = _definition_name(item)
        first = scope.defs.get(name)
        if first is not None:
            self.sink.add(NexusError.at(item.span, f"`{name}` is defined twice",
                                        Note(f"`{name}` was first defined", first.span)))
            return
        scope.defs[name] = item

    def _import(self, scope: FileScope, item: ast.Import) -> None:
        try:
            path, alias = self._resolve_import(scope, item)
            key = str(path.resolve())
            if key in self._loading:
                raise self._cycle(key, path, item)
            self._via.append(item.span)
            try:
                imported = self.scopes.get(key) or self._load_path(path, key, item.span)
            finally:
                self._via.pop()
        except NexusError as err:
            self.sink.add(err)
            return
        if scope.namespace(alias) is not None or alias in scope.defs:
            self.sink.add(NexusError.at(item.span, f"`{alias}` is imported twice or also defined here"))
            return
        scope.imports.append((alias, imported))

    def _cycle(self, key: str, path: Path, item: ast.Import) -> NexusError:
        """Blame the import that entered the cycle, in the file where the cycle starts."""
        start = self._loading.index(key)
        if start == len(self._via):  # the file being read imports itself: no import led here
            return NexusError.at(item.span, f"{path.name} imports itself")
        chain = " -> ".join(Path(k).name for k in self._loading[start:])
        return NexusError.at(self._via[start], f"import cycle: {chain} -> {path.name}",
                             Note("the cycle closes here", item.span))

    def _resolve_import(self, scope: FileScope, item: ast.Import) -> tuple[Path, str]:
        if item.is_file:
            return _file_import(scope, item), item.alias or Path(item.module).stem
        parts = item.module.split(".")
        if parts[0] != "std" or len(parts) < 2:
            raise NexusError.at(item.span, f"unknown module `{item.module}`; "
                                "standard modules are named std.NAME, files are imported as \"path.nx\"")
        path = stdlib_path(item.module)
        if not path.is_file():
            known = [f"std.{p.stem}" for p in path.parent.glob("*.nx")]
            close = difflib.get_close_matches(item.module, known, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else " in the standard library"
            raise NexusError.at(item.span, f"unknown module `{item.module}`{hint}")
        return path, item.alias or parts[-1]

    def _load_path(self, path: Path, key: str, span: Span) -> FileScope:
        try:
            text = read_source(path)
        except UnicodeDecodeError:
            raise NexusError.at(span, f"cannot read {path}: it is not UTF-8 text") from None
        except OSError as err:
            raise NexusError.at(span, f"cannot read {path}: {err.strerror or err}") from None
        try:
            return self.load_text(text, _display_path(path), key)
        except NexusError as err:  # a broken imported file: report its own errors
            self.sources.update(err.sources)
            self.sink.add(err)
            raise NexusError.at(span, f"the imported file {path.name} has errors") from None


def _file_import(scope: FileScope, item: ast.Import) -> Path:
    """The file `import "lib/blocks.nx"` names: a `.nx` file in the importing file's folder or
    one below it (docs/language.md, "Program structure"). A path that leaves that folder (an
    absolute path, `..`, a link to a file elsewhere) or names another kind of file is refused
    before anything is read, so no other file's content can reach a message."""
    written = item.module
    folder = (Path(scope.file).parent if Path(scope.file).exists() else Path.cwd()).resolve()
    refuse = f'cannot import "{written}": '
    if not written.endswith(".nx"):
        raise NexusError.at(item.span, refuse + "only .nx files can be imported")
    if Path(written).is_absolute() or os.path.normpath(written).split(os.sep)[0] == "..":
        raise NexusError.at(item.span, refuse + "an import names a file in this file's folder "
                            f"or below it ({_display_path(folder)}), relative to the folder")
    path = folder / written
    if not path.is_file():
        raise NexusError.at(item.span, refuse + f"no such file {_display_path(path)}")
    if not path.resolve().is_relative_to(folder) or path.resolve().suffix != ".nx":
        raise NexusError.at(item.span, refuse + "it is a link to a file outside this file's "
                            "folder; copy the file here instead")
    return path


def _display_path(path: Path) -> str:
    """How a file is named in diagnostics: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def lookup_global(scope: FileScope, name: str, span: Span, builtins) -> tuple[str, Any] | None:
    """Resolve an unqualified name outside any local scope, in docs/language.md's order: own
    definitions, builtins, then the imports (a module's name, then the modules' definitions;
    ambiguity is an error). A module named like a builtin (`import std.hyena`) leaves the
    builtin callable as `hyena(...)`; `hyena.block` still reaches the module (the
    elaborator reads `name.attr` as a module access first)."""
    if name in scope.defs:
        return "def", (scope, scope.defs[name])
    if name in builtins:
        return "builtin", name
    namespace = scope.namespace(name)
    if namespace is not None:
        return "namespace", namespace
    found = [(alias, s) for alias, s in scope.imports if name in s.defs]
    if len(found) > 1:
        names = " and ".join(f"`{alias}.{name}`" for alias, _ in found)
        raise NexusError.at(span, f"`{name}` is ambiguous: it could be {names}; write the module name")
    if found:
        owner = found[0][1]
        return "def", (owner, owner.defs[name])
    return None
