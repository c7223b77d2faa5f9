"""Compile time by stage for 12-, 48- and 192-layer models, against torch.fx.symbolic_trace of
the equivalent hand-written model, measured in the same run.

    python benchmarks/compile_speed.py

Target (issue 2): a 48-layer model compiles in under 0.5 s, and time grows linearly with depth.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch.fx  # noqa: E402

from nexusdsl.compiler.lower.fx import lower  # noqa: E402
from nexusdsl.elaborate.program import loads  # noqa: E402
from nexusdsl.ir.verify import verify  # noqa: E402
from nexusdsl.lang.parser import parse  # noqa: E402
from nexusdsl.ops import REGISTRY  # noqa: E402
from tests.reference_models import TinyLM  # noqa: E402

SOURCE = (ROOT / "examples/tiny_lm.nx").read_text()


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def stages(depth: int) -> dict[str, float]:
    text = SOURCE.replace("depth = 4", f"depth = {depth}")
    t_parse, _ = best_of(lambda: parse(text, "tiny_lm.nx"))
    t_load, program = best_of(lambda: loads(text, "examples/tiny_lm.nx"))  # parse + elaborate + verify
    graph = program.elaborate()
    t_verify, _ = best_of(lambda: verify(graph, REGISTRY))
    t_lower, _ = best_of(lambda: lower(graph, device="meta"))
    return {"parse": t_parse, "elaborate": t_load - t_parse - t_verify, "verify": t_verify,
            "lower": t_lower, "total": t_load + t_lower}


def reference_trace(depth: int) -> float:
    model = TinyLM(depth=depth).to("meta")
    t, _ = best_of(lambda: torch.fx.symbolic_trace(model))
    return t


def main() -> None:
    print(f"{'layers':>6} {'parse':>8} {'elab':>8} {'verify':>8} {'lower':>8} {'total':>8} "
          f"{'fx.trace':>9} {'ratio':>6} {'ms/layer':>9}")
    for depth in (12, 48, 192):
        s = stages(depth)
        ref = reference_trace(depth)
        print(f"{depth:>6} " + " ".join(f"{s[k] * 1e3:>7.1f}m" for k in ("parse", "elaborate", "verify", "lower", "total"))
              + f" {ref * 1e3:>8.1f}m {s['total'] / ref:>6.2f} {s['total'] * 1e3 / depth:>9.2f}")
    print("times in ms (best of 3); ratio = nexus total / torch.fx.symbolic_trace of the hand-written model")


if __name__ == "__main__":
    main()
