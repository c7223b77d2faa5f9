"""`nexusdsl.train` is callable before and after its subpackage is imported; importing
nexusdsl (or the training package) does not import torch."""

import subprocess
import sys

from tests.conftest import ROOT

CODE = """
import sys, nexusdsl
assert callable(nexusdsl.train) and "torch" not in sys.modules
import nexusdsl.train  # the subpackage replaces the attribute: it must stay callable
assert callable(nexusdsl.train) and "torch" not in sys.modules
r = nexusdsl.train("examples/tiny_lm.nx", steps=1, batch=2, context=8, eval_batches=1,
                   dim=16, depth=1, heads=2, threads=1)
print(r.steps, sorted(r.after))
"""


def test_train_is_callable_and_lazy():
    run = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1 ['bpb', 'loss']"
