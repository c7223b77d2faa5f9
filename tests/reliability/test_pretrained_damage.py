"""Damaged weights: `pretrained(...)` directories whose safetensors, index or config files are
empty, truncated or edited are one error located at the `pretrained` call (they used to end in
struct.error, MemoryError or a JSON traceback), and `nexus generate` on a checkpoint whose
weights are not finite numbers is one line instead of torch's sampling error.

The model directories are a one-layer BERT made by transformers itself, then damaged."""

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nexusdsl
from tests.conftest import Run

LOCATED = re.compile(r"^(\S+):(\d+):(\d+): error: (.*)$", re.M)
WIDTH = 8
EXPERT = """model P {
  input x: float[B, T, 8]
  experts e = [SOURCE]
  output y = moe(x, e, router = topk(k = 1))
}
"""
CALL_COLUMN = EXPERT.splitlines()[2].index("[") + 2  # 1-based column of the pretrained call


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    config = BertConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, vocab_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def header_of(file: Path) -> tuple[int, dict, bytes]:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length]), data[8 + length:]


def with_header(file: Path, header: dict) -> None:
    _, _, tensors = header_of(file)
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + tensors)


def empty(d):
    (d / "model.safetensors").write_bytes(b"")
    return "it has 0 bytes, fewer than the 8 of a header length"


def four_bytes(d):
    (d / "model.safetensors").write_bytes(b"safe")
    return "it has 4 bytes, fewer than the 8 of a header length"


def truncated(d):
    file = d / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return "past the end of the data"


def huge_header_length(d):
    file = d / "model.safetensors"
    file.write_bytes(struct.pack("<Q", 2**62) + file.read_bytes()[8:])
    return "its header would be 4,611,686,018,427,387,904 bytes long"


def header_not_json(d):
    file = d / "model.safetensors"
    length, _, tensors = header_of(file)
    file.write_bytes(struct.pack("<Q", length) + b"{" * length + tensors)
    return "its header is not JSON"


def shape_edited(d):
    file = d / "model.safetensors"
    _, header, _ = header_of(file)
    name = next(k for k in header if k.endswith("intermediate.dense.weight"))
    header[name]["shape"] = [16, WIDTH * 2]  # twice the bytes its range holds
    with_header(file, header)
    return f"tensor `{name}` has 512 bytes for a F32 tensor of shape [16, 16]"


def config_not_json(d):
    (d / "config.json").write_text("{not json")
    return "config.json is not valid JSON (line 1, column 2)"


def config_empty(d):
    (d / "config.json").write_text("")
    return "config.json is not valid JSON (line 1, column 1)"


def index_not_json(d):
    (d / "model.safetensors.index.json").write_text("[1, 2")
    return "model.safetensors.index.json is not valid JSON"


def index_outside(d):
    _, header, _ = header_of(d / "model.safetensors")
    names = [k for k in header if k != "__metadata__"]
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../../../../etc/passwd" for k in names}}))
    return "which is not a .safetensors file of the model's directory"


def index_missing_shard(d):
    _, header, _ = header_of(d / "model.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00002.safetensors" for k in header if k != "__metadata__"}}))
    return "to model-00002.safetensors, which is missing"


DAMAGE = [empty, four_bytes, truncated, huge_header_length, header_not_json, shape_edited,
          config_not_json, config_empty, index_not_json, index_outside, index_missing_shard]


def check_expert(nexus, tmp_path, source: str) -> Run:
    path = tmp_path / "p.nx"
    path.write_text(EXPERT.replace("SOURCE", source))
    return nexus("check", path)


def test_the_undamaged_directory_checks_and_loads(nexus, bert, tmp_path):
    """The control: the same call on the intact directory passes, and the expert computes
    what transformers' own layer computes."""
    from transformers import BertModel

    source = f'pretrained("{bert}", module = "encoder.layer.0")'
    run = check_expert(nexus, tmp_path, source)
    assert run.code == 0, run.err
    model = nexusdsl.compile(nexusdsl.load(tmp_path / "p.nx")).eval()
    layer = BertModel.from_pretrained(bert, local_files_only=True).eval().encoder.layer[0]
    x = torch.randn(2, 5, WIDTH)
    with torch.no_grad():
        want = layer(x)
        want = want[0] if isinstance(want, tuple) else want  # tuples in older transformers
        torch.testing.assert_close(model.moe.experts[0](x), want)


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_damaged_directory_is_one_located_error(nexus, bert, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(bert, folder)
    message = damage(folder)
    run = check_expert(nexus, tmp_path, 'pretrained("model", module = "encoder.layer.0")')
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    errors = LOCATED.findall(run.err)
    assert len(errors) == 1, run.err
    assert errors[0][:3] == (str(tmp_path / "p.nx"), "3", str(CALL_COLUMN)), run.err
    assert errors[0][3].startswith("pretrained: ") and message in errors[0][3], run.err


def test_a_damaged_file_paired_with_a_block(nexus, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    run = check_expert(nexus, tmp_path, 'pretrained("w.safetensors", linear(out = 8))')
    assert run.code == 1 and "Traceback" not in run.err, run.err
    errors = LOCATED.findall(run.err)
    assert [e[:3] for e in errors] == [(str(tmp_path / "p.nx"), "3", str(CALL_COLUMN))], run.err
    assert "fewer than the 8 of a header length" in errors[0][3]


# ----------------------------------------------------------------------------- generate

BYTES_MODEL = """modality text = bytes(code = 0)

model Tiny(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + linear(relu(linear(x, 32)), dim)
  output logits = unembed(x, tie = tok)
}
"""


def nan_weight(tensors):
    tensors["linear.weight"][0, 0] = float("nan")
    return "the model's weights are not all finite numbers: linear.weight holds NaN or inf"


def overflowing(tensors):
    """Finite weights whose products overflow float32: the logits are inf and NaN."""
    tensors["tok.weight"].fill_(1e30)
    tensors["linear.weight"].fill_(1e30)
    return "the model's logits for byte 1 are not all finite numbers"


@pytest.mark.parametrize("damage", [nan_weight, overflowing], ids=["nan", "overflow"])
def test_generate_with_weights_that_are_not_finite(nexus, tmp_path, damage):
    source = tmp_path / "lm.nx"
    source.write_text(BYTES_MODEL)
    nexusdsl.train(source, steps=1, batch=2, context=16, eval_batches=1, threads=1,
                   out=tmp_path / "run")
    file = next((tmp_path / "run").glob("step-*")) / "model.safetensors"
    with safe_open(file, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    message = damage(tensors)
    save_file(tensors, file, metadata=metadata)
    run = nexus("generate", source, "-c", tmp_path / "run", "--max-bytes", 3)
    assert run.code == 1 and "Traceback" not in run.err, run.out + run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message), run.err
