"""Checkpoints that cannot be imported, and imported files whose bindings do not fit: one
`error:` line for a command's SOURCE, a located diagnostic for a bind rule, never a traceback,
nothing downloaded and no code of a checkpoint run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.weights.families import FAMILIES
from tests.weights.tiny_checkpoints import CASES, nexus, reference, save

LOCATED = re.compile(r"^\S+\.nx:\d+:\d+: error: ", re.MULTILINE)


def one_line_error(code: int, stderr: str) -> str:
    assert code == 1
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """A tiny sharded Llama checkpoint (read only: tests copy it to change it)."""
    return save(reference(CASES["llama"]), tmp_path_factory.mktemp("ck") / "llama")


def imported(llama: Path, folder: Path) -> Path:
    """`nexus import` of the Llama checkpoint into folder/m.nx."""
    code, _, stderr = nexus("import", llama, "-o", folder / "m.nx")
    assert code == 0, stderr
    return folder / "m.nx"


def compile_error(path: Path) -> str:
    with pytest.raises(NexusError) as e:
        nexusdsl.compile(path)
    rendered = e.value.render()
    assert LOCATED.search(rendered) and "Traceback" not in rendered, rendered
    return rendered


def minimal(folder: Path, config: dict, tensors: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, folder / "model.safetensors")
    return folder


def test_an_architecture_without_a_family_is_one_line_naming_the_families(tmp_path):
    source = minimal(tmp_path / "falcon", {"model_type": "falcon",
                                           "architectures": ["FalconForCausalLM"]},
                     {"w": torch.zeros(2)})
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "import", str(source), "-o",
                          str(tmp_path / "m.nx")], capture_output=True, text=True, timeout=300)
    stderr = one_line_error(run.returncode, run.stderr)  # the real command, its exit status
    assert "FalconForCausalLM (model_type falcon) has no family" in stderr
    for family in FAMILIES.values():
        assert f"{family.model_type} ({family.architecture})" in stderr
    assert not (tmp_path / "m.nx").exists()


def test_a_setting_the_family_does_not_compute_is_one_line(tmp_path):
    config = dict(CASES["qwen3_moe"].config.to_dict(), norm_topk_prob=False)
    source = minimal(tmp_path / "qwen", config, {"w": torch.zeros(2)})
    stderr = one_line_error(*nexus("import", source, "-o", tmp_path / "m.nx")[::2])
    assert "norm_topk_prob = False" in stderr and "qwen3_moe family" in stderr


def test_another_class_of_a_family_is_one_line(tmp_path):
    config = dict(CASES["bert"].config.to_dict(), architectures=["BertForMaskedLM"])
    source = minimal(tmp_path / "mlm", config, {"bert.pooler.dense.bias": torch.zeros(48)})
    stderr = one_line_error(*nexus("import", source, "-o", tmp_path / "m.nx")[::2])
    assert "BertForMaskedLM: the bert family is transformers' BertModel" in stderr


def test_a_pickle_only_checkpoint_is_refused_unread(tmp_path, llama):
    source = minimal(tmp_path / "pickled", json.loads((llama / "config.json").read_text()))
    (source / "pytorch_model.bin").write_bytes(b"never unpickled")
    stderr = one_line_error(*nexus("import", source, "-o", tmp_path / "m.nx")[::2])
    assert "only pickled weights (pytorch_model.bin)" in stderr
    stderr = one_line_error(*nexus("verify", imported(llama, tmp_path), "--against",
                                   source)[::2])
    assert "only pickled weights" in stderr
    text = re.sub(r'bind Llama from "[^"]*"', 'bind Llama from "pickled"',
                  (tmp_path / "m.nx").read_text())
    (tmp_path / "m.nx").write_text(text)
    assert "only pickled weights" in compile_error(tmp_path / "m.nx")


def test_a_config_asking_for_remote_code_runs_nothing(tmp_path, llama):
    marker = tmp_path / "ran"
    config = dict(json.loads((llama / "config.json").read_text()),
                  auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    source = minimal(tmp_path / "remote", config, load_file(next(llama.glob("*.safetensors"))))
    (source / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    stderr = one_line_error(*nexus("import", source, "-o", tmp_path / "m.nx")[::2])
    assert "asks for code shipped with the model (auto_map)" in stderr
    stderr = one_line_error(*nexus("verify", imported(llama, tmp_path), "--against",
                                   source)[::2])
    assert "auto_map" in stderr
    assert not marker.exists()


def rewrite(llama: Path, to: Path, change) -> Path:
    """A copy of the checkpoint with `change(tensors)` applied to every shard's tensors."""
    to.mkdir()
    for file in llama.iterdir():
        if file.suffix == ".safetensors":
            tensors = load_file(file)
            change(tensors)
            save_file(tensors, to / file.name, metadata={"format": "pt"})
        else:
            (to / file.name).write_bytes(file.read_bytes())
    index = json.loads((to / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: f.name for f in sorted(to.glob("*.safetensors"))
                           for k in load_file(f)}
    (to / "model.safetensors.index.json").write_text(json.dumps(index))
    return to


def test_a_missing_tensor_is_located_at_the_rule_that_reads_it(tmp_path, llama):
    key = "model.layers.1.mlp.up_proj.weight"
    source = rewrite(llama, tmp_path / "ck", lambda t: t.pop(key, None))
    code, _, stderr = nexus("import", source, "-o", tmp_path / "m.nx")
    assert code == 1 and LOCATED.search(stderr), stderr
    assert f"has no tensor {key}" in stderr and "llama.nx:" in stderr


def test_tensors_no_rule_uses_are_located_at_the_bind_section(tmp_path, llama):
    def extra(tensors):
        if "model.norm.weight" in tensors:
            tensors["model.extra_scale"] = torch.ones(3)
    source = rewrite(llama, tmp_path / "ck", extra)
    code, _, stderr = nexus("import", source, "-o", tmp_path / "m.nx")
    assert code == 1 and "1 tensors of" in stderr and "model.extra_scale" in stderr
    assert re.search(r"m\.nx:\d+:1: error: ", stderr), stderr  # the written file's bind line
    assert (tmp_path / "m.nx").exists()  # written, to be fixed by hand (an `ignore`)


def edited(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_a_shape_mismatch_names_both_sides(tmp_path, llama):
    path = edited(imported(llama, tmp_path), "hidden = 48", "hidden = 40")
    message = compile_error(path)
    assert ("blocks.0.decoder_layer.swiglu.linear.weight is [40, 32], but the rule gives "
            "[48, 32]: model.layers.0.mlp.gate_proj.weight [48, 32]") in message


@pytest.mark.parametrize("rules,expected", [
    ('  use llama.hf_layers\n  "head.weight" <- transpose("lm_head.weight")\n',
     "head.weight is [97, 32], but the rule gives [32, 97]: transpose(lm_head.weight [97, 32])"),
    ('  use llama.hf_layers\n  "head.weight" <- split("lm_head.weight", 2, 0)\n',
     "97 does not split into 2 equal parts"),
    ('  use llama.hf\n  "head.bias" <- "lm_head.weight"\n', "`head.bias` names no parameter"),
    ('  use llama.hf\n  "norm.weight" <- "model.norm.weight"\n', "norm.weight is bound twice"),
], ids=["wrong transform", "transform that does not fit", "a rule binding nothing",
        "bound twice"])
def test_bad_rules_in_an_imported_file_are_located(tmp_path, llama, rules, expected):
    path = edited(imported(llama, tmp_path), "  use llama.hf\n", rules)
    assert expected in compile_error(path)
