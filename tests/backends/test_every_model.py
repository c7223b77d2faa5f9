"""Every example, every stdlib block and every zoo model through every backend, against eager.

Backends: torch.compile (backend="eager": dynamo's tracing, fast), torch-dialect MLIR -> IREE
llvm-cpu, linalg MLIR -> IREE llvm-cpu. Outputs must agree within 1e-4 of each output's
largest magnitude. The StableHLO and TOSA emissions of the examples and the zoo models (which
hold every op) are checked for their dialect's ops.

Where a model holds an op that does not declare a backend, the test instead checks that
asking for that backend is a located error naming the op: never a crash inside MLIR.

Speed: each model's exported program and MLIR are made once and shared (module-scoped), and
its two IREE compilations start as soon as its MLIR exists, in a worker thread running
iree-compile (a subprocess, so on the other core) while the tests go on.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from nexusdsl.compiler import backends
from nexusdsl.compiler.backends import BackendError
from nexusdsl.compiler.lower import mlir
from nexusdsl.compiler.lower.fx import lower
from nexusdsl.compiler.lower.iree import IreeRunner, compile_vmfb
from nexusdsl.compiler.pipeline import optimize
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.ops import REGISTRY
from tests.backends.cases import SIZES, SYMBOLIC, all_cases

TOLERANCE = 1e-4
CASES = {case.id: case for case in all_cases()}
ORDER = list(CASES)
ROUTES = ("mlir-torch", "mlir-linalg")
# StableHLO and TOSA are emitted (not run) for the models that between them hold every op.
EMITTED = [c for c in ORDER if not c.startswith("stdlib:")]
DIALECT_OPS = {"mlir-torch": "torch.aten.", "mlir-linalg": "linalg.",
               "mlir-stablehlo": "stablehlo.", "mlir-tosa": "tosa."}


class Suite:
    """Per-model artifacts, built on first use and shared by the tests of this module (and
    dropped with it: the fixture is module-scoped)."""

    def __init__(self):
        self._memo: dict[tuple, object] = {}
        self._compiler = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self._compiler.shutdown(cancel_futures=True)

    def _once(self, key: tuple, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def graph(self, case_id: str):
        case = CASES[case_id]
        return self._once(("graph", case_id), lambda: optimize(
            case.load().elaborate(case.model, **case.hyper), 1))

    def module(self, case_id: str):
        return self._once(("module", case_id), lambda: lower(self.graph(case_id), seed=0).eval())

    def reference(self, case_id: str):
        """(inputs, eager outputs as a dict) at small sizes, weights from seed 0."""
        return self._once(("reference", case_id), lambda: self._reference(case_id))

    def _reference(self, case_id: str):
        graph = self.graph(case_id)
        names = mlir.symbolic_axes(graph)
        shapes = mlir.input_shapes(graph, {n: SIZES.get(n, SYMBOLIC) for n in names})
        inputs = mlir.example_inputs(shapes, seed=1)
        with torch.no_grad():
            return inputs, as_dict(graph, self.module(case_id)(*inputs))

    def program(self, case_id: str):
        def export():
            inputs, _ = self.reference(case_id)
            return mlir.export_program(self.module(case_id), [], inputs)

        return self._once(("program", case_id), export)

    def text(self, case_id: str, dialect: str) -> str:
        return self._once(("text", case_id, dialect),
                          lambda: mlir.import_program(self.program(case_id), dialect))

    def vmfb(self, case_id: str, route: str) -> Future:
        return self._once(("vmfb", case_id, route), lambda: self._compiler.submit(
            compile_vmfb, self.text(case_id, route), "iree-cpu", route))

    def ahead(self, case_id: str, count: int = 2) -> None:
        """Start the IREE compilations of this model and the next ones, so that they run
        while other tests do. A failure here is left for the model's own IREE test."""
        start = ORDER.index(case_id)
        for later in ORDER[start:start + count]:
            for route in ROUTES:
                if not missing_backends(self.graph(later), "iree-cpu", route):
                    try:
                        self.vmfb(later, route)
                    except (BackendError, NexusError):
                        pass


@pytest.fixture(scope="module")
def suite():
    s = Suite()
    yield s
    s.close()


def as_dict(graph, outputs) -> dict:
    return outputs if isinstance(outputs, dict) else {next(iter(graph.outputs)): outputs}


def assert_close(graph, got, want: dict) -> None:
    got = as_dict(graph, got)
    assert list(got) == list(want), f"outputs {list(got)}, expected {list(want)}"
    for name, ref in want.items():
        value = got[name]
        assert value.shape == ref.shape, f"{name}: shape {tuple(value.shape)} != {tuple(ref.shape)}"
        scale = float(ref.abs().max())
        error = float((value.to(ref.dtype) - ref).abs().max())
        assert error <= TOLERANCE * max(scale, 1e-6), (
            f"{name}: largest difference {error:.3g} is above {TOLERANCE:g} of its largest "
            f"magnitude {scale:.3g}")


def missing_backends(graph, target: str, route: str = "mlir-torch") -> list:
    return [(n, b) for b in backends.required_backends(target, route)
            for n in backends.unsupported(graph, b)]


def expect_unsupported(suite, case_id: str, target: str, route: str = "mlir-torch") -> bool:
    """If some op of the model does not declare a backend the target needs, check that the
    target is refused with a located error naming that op and backend, and return True."""
    graph = suite.graph(case_id)
    missing = missing_backends(graph, target, route)
    if not missing:
        return False
    with pytest.raises(NexusError) as caught:
        backends.check_backend(graph, target, route)
    node, backend = missing[0]
    message = str(caught.value)
    assert f"op `{node.op}`" in message and backend in message, message
    assert ":" in message.splitlines()[0] and "<unknown>" not in message, message
    return True


@pytest.mark.parametrize("case_id", ORDER)
def test_torch_compile_matches_eager(suite, case_id):
    from nexusdsl.compiler.lower.compile import compile_module

    suite.ahead(case_id)
    if expect_unsupported(suite, case_id, "torch.compile"):
        return
    inputs, want = suite.reference(case_id)
    module = compile_module(lower(suite.graph(case_id), seed=0).eval(), backend="eager")
    with torch.no_grad():
        assert_close(suite.graph(case_id), module(*inputs), want)


@pytest.mark.parametrize("case_id,route", [(c, r) for c in ORDER for r in ROUTES])
def test_iree_cpu_matches_eager(suite, case_id, route):
    suite.ahead(case_id)
    if expect_unsupported(suite, case_id, "iree-cpu", route):
        return
    inputs, want = suite.reference(case_id)
    assert DIALECT_OPS[route] in suite.text(case_id, route)
    outputs = IreeRunner(suite.vmfb(case_id, route).result(), "iree-cpu")(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert_close(suite.graph(case_id), dict(zip(want, outputs)), want)


@pytest.mark.parametrize("case_id,dialect",
                         [(c, d) for c in EMITTED for d in ("mlir-stablehlo", "mlir-tosa")])
def test_mlir_emission_has_the_dialect_ops(suite, case_id, dialect):
    if expect_unsupported(suite, case_id, dialect):
        return
    text = suite.text(case_id, dialect)
    assert DIALECT_OPS[dialect] in text
    assert "torch.aten." not in text, "ops left in the torch dialect"


def test_the_emitted_models_hold_every_op_that_claims_stablehlo_or_tosa(suite):
    def ops(graph):
        found = set()
        for node in graph.nodes():
            found |= {node.op}.union(*(ops(r) for r in node.regions))
        return found

    held = set().union(*(ops(suite.graph(c)) for c in EMITTED))
    claims = {n for n, op in REGISTRY.items()
              if {"mlir-stablehlo", "mlir-tosa"} & set(op.backends)}
    # identity lowers to no operation at all (its output is its input tensor), and -O1 folds it
    # away, so no dialect text can show it.
    missing = sorted(claims - held - {"pretrained_module", "identity"})
    assert not missing, (f"ops {missing} claim StableHLO or TOSA but no example or zoo model "
                         "holds them: add them to tests/backends/zoo.nx")
