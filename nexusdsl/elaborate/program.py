"""A checked program: a parsed file with its imports resolved and every model elaborated with
its default hyperparameters. `elaborate` builds a model's IR graph for given hyperparameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nexusdsl.elaborate.aliases import resolve_alias
from nexusdsl.elaborate.bindings import Binding, bind_model, check_binds, freeze_params
from nexusdsl.elaborate.elaborator import Elaborator
from nexusdsl.elaborate.modules import FileScope, Loader
from nexusdsl.elaborate.names import BUILTINS
from nexusdsl.elaborate.selectors import check as check_selectors
from nexusdsl.elaborate.unused import check_uncalled_blocks
from nexusdsl.ir.graph import Graph
from nexusdsl.ir.verify import verify
from nexusdsl.lang import ast
from nexusdsl.lang.diagnostics import DiagnosticSink, NexusError, Note, Span
from nexusdsl.lang.source import read_source
from nexusdsl.ops import REGISTRY


class Program:
    """What `nexusdsl.load` returns: the models of a file, checked."""

    def __init__(self, loader: Loader, scope: FileScope):
        self._loader = loader
        self.scope = scope
        self.file = scope.file
        self.source = scope.program.source
        self._graphs: dict[tuple, Graph] = {}
        self._bindings: dict[tuple, Binding | None] = {}

    @property
    def models(self) -> list[str]:
        """The file's models: those it writes and those it names (`model M = other.Model(...)`)."""
        return [d.name for d in self.scope.defs.values()
                if isinstance(d, (ast.Model, ast.ModelAlias))]

    @property
    def trains(self) -> list[ast.Train]:
        return list(self.scope.trains)

    @property
    def sources(self) -> dict[str, str]:
        return self._loader.sources

    def model_ast(self, name: str | None = None) -> ast.Model:
        """The model's definition; for `model M = other.Model(dim = 256)`, other.Model's with
        M's name and the given settings as its defaults."""
        return self._model(name)[1]

    def _model(self, name: str | None) -> tuple[FileScope, ast.Model]:
        """The model's definition and the file scope its body is read in."""
        names = self.models
        if name is None:
            if len(names) == 1:
                name = names[0]
            else:
                listing = ", ".join(names) or "none"
                raise NexusError.at(Span(self.file, 1, 1), f"{self.file} defines {len(names)} "
                                    f"models ({listing}); choose one with --model")
        item = self.scope.defs.get(name)
        if isinstance(item, ast.Model):
            return self.scope, item
        if isinstance(item, ast.ModelAlias):
            return resolve_alias(self.scope, item, self._loader.sources)
        listing = ", ".join(names) or "none"
        raise NexusError.at(Span(self.file, 1, 1), f"no model `{name}` in {self.file} (it has {listing})")

    def elaborate(self, model: str | None = None, **hyper: Any) -> Graph:
        """The model's IR graph for these hyperparameters, shape-checked and verified."""
        scope, tree = self._model(model)
        key = (tree.name, _hashable(hyper))
        if key not in self._graphs:
            sink = DiagnosticSink()
            elaborator = Elaborator(scope, sink, self._loader.sources)
            try:
                graph = elaborator.build_model(tree, hyper)
            except NexusError as err:
                sink.add(err)
            sink.raise_if_any(self._loader.sources)
            verify(graph, REGISTRY)
            binding = bind_model(self.scope, tree.name, graph, self._loader.sources)
            if binding is not None and binding.frozen:
                graph = freeze_params(graph, binding.frozen)
            self._graphs[key] = graph
            self._bindings[key] = binding
        return self._graphs[key]

    def binding(self, model: str | None = None, **hyper: Any) -> Binding | None:
        """What the file's `bind` sections fill the model's parameters with (None if
        nothing): checked against the model with these hyperparameters and the checkpoints'
        headers; no tensor is read yet."""
        self.elaborate(model, **hyper)
        return self._bindings[(self.model_ast(model).name, _hashable(hyper))]

    def train_section(self, model: str | None = None) -> ast.Train | None:
        name = self.model_ast(model).name
        sections = [t for t in self.scope.trains if t.model == name]
        if len(sections) > 1:
            raise NexusError.at(sections[1].span, f"model {name} has more than one train section",
                                Note("the first is here", sections[0].span))
        return sections[0] if sections else None

    def train_config(self, model: str | None = None) -> dict[str, tuple[Any, Span]]:
        """The fields of the model's `train` section, evaluated: {name: (value, span)}."""
        section = self.train_section(model)
        if section is None:
            return {}
        elaborator = Elaborator(self.scope, DiagnosticSink(), self._loader.sources)
        try:
            return elaborator.train_fields(section)
        except NexusError as err:
            raise NexusError(err.diagnostics, self._loader.sources) from None

    def check_train(self, model: str, graph: Graph | None = None) -> None:
        """The settings of the model's train section, checked as `nexus train` checks them
        (names, objectives, ranges) without loading data or torch. `graph`: the model as
        already elaborated, if the caller has it."""
        config = self._train_settings(model)
        if config.freeze or config.train or config.lora:
            check_selectors(graph or self.elaborate(model), config)

    def _train_settings(self, model: str):
        from nexusdsl.elaborate.train_config import build_config

        tree = self.model_ast(model)
        return build_config(self.train_config(model),
                            [p.name for p in tree.params if p.type is None])

    def check_data_paths(self) -> None:
        """The data files and folders the train sections name exist (relative paths: next to
        this file, as `nexus train` reads them). Asked by `nexus check`, not by loading: a file
        whose data lives elsewhere still compiles."""
        from nexusdsl.elaborate.train_config import resolve_data_path

        sink = DiagnosticSink()
        for train in self.scope.trains:
            if train.model not in self.models:
                continue
            config = self._train_settings(train.model)
            path = resolve_data_path(config, self.file)
            if path is not None and not path.expanduser().exists():
                what = "folder" if config.data.fn == "folder" else "path"
                sink.add(NexusError.at(config.data.span, f"data {what} {path} does not exist"))
        sink.raise_if_any(self._loader.sources)

    def _check_modal_codes(self, sink: DiagnosticSink) -> None:
        """Modal codes are unique among the file's modalities, used or not (a model that
        uses both would otherwise be the first to notice): the elaborator's own check, run over
        every modality the file declares."""
        elaborator = Elaborator(self.scope, DiagnosticSink(), self._loader.sources)
        for item in self.scope.defs.values():
            if not isinstance(item, ast.Modality):
                continue
            try:
                value = elaborator.definition_value(self.scope, item, item.span)
            except NexusError:
                continue  # a broken modality is reported where a model uses it
            try:
                elaborator.register_modality(value)
            except NexusError as err:
                sink.add(err)

    def check(self) -> None:
        """Elaborate every model with its defaults; raise one error listing every mistake."""
        sink = DiagnosticSink()
        graphs = {}
        for name in self.models:
            try:
                graphs[name] = self.elaborate(name)
            except NexusError as err:
                sink.add(err)
        self._check_modal_codes(sink)
        check_binds(self.scope, self.models, sink)
        check_uncalled_blocks(self.scope, BUILTINS, sink)
        names = set(self.models) | {n for _, s in self.scope.imports for n in s.defs}
        for train in self.scope.trains:
            if train.model not in names:
                sink.add(NexusError.at(train.span, f"`train {train.model}`: no model named {train.model}"))
            elif train.model in self.models:
                try:
                    self.check_train(train.model, graphs.get(train.model))
                except NexusError as err:
                    sink.add(err)
        sink.raise_if_any(self._loader.sources)


def _hashable(value: Any):
    """Hyperparameters as a cache key: lists (`windows = [4096, 0]`) become tuples, and every
    value keeps its type (`1`, `1.0` and `true` are equal in Python, not as settings)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_hashable, value))
    return (type(value).__name__, value)


def loads(text: str, filename: str = "<string>") -> Program:
    sink = DiagnosticSink()
    loader = Loader(sink)
    key = str(Path(filename).resolve()) if Path(filename).is_file() else filename
    scope = loader.load_text(text, filename, key)
    sink.raise_if_any(loader.sources)
    program = Program(loader, scope)
    program.check()
    return program


def load(path: str | Path) -> Program:
    path = Path(path)
    try:
        text = read_source(path)  # a regular file of bounded size (docs/language.md, "Limits")
    except (OSError, UnicodeDecodeError) as err:
        from nexusdsl.fsutil import os_reason

        raise NexusError.at(Span(str(path), 1, 1), f"cannot read {path}: {os_reason(err)}") from None
    return loads(text, str(path))
