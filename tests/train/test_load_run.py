"""Using a trained model: `nexusdsl.load_run` (the model as trained, with its weights) and
`nexus run --checkpoint`, against `nexus eval` and a held-out computation written here."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write

# A train section that trains another width than the file's default (16, not 32).
SECTION = "\ntrain Tiny {\n  dim = 16\n}\n"


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load_run")
    path = write(tmp, TINY, train=SECTION)
    nexusdsl.train(str(path), steps=6, out=tmp / "run", **FAST)
    return path, tmp / "run"


def heldout_bits_per_byte(model, context: int, batch: int, batches: int) -> float:
    """Bits per byte on the default corpus's held-out tenth, as docs/decisions.md
    ("Training") defines them: CPython's documentation topics joined in key order, the last
    10% held out, windows of context + 1 bytes overlapping by one, the first batch x batches
    of them, mean cross-entropy over every next byte / ln 2."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
    held = torch.tensor(list(text[len(text) - int(len(text) * 0.1):]))
    starts = range(0, len(held) - (context + 1) + 1, context)
    windows = torch.stack([held[s: s + context + 1] for s in list(starts)[: batch * batches]])
    with torch.no_grad():
        logits = model(windows[:, :-1])
        nats = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum")
    return float(nats) / windows[:, 1:].numel() / math.log(2)


def test_load_run_gives_the_held_out_bits_per_byte_nexus_eval_reports(trained):
    path, run = trained
    evaluated = nexus("eval", path, "--checkpoint", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    reported = json.loads(evaluated.stdout)["bpb"]
    loaded = nexusdsl.load_run(run)
    ours = heldout_bits_per_byte(loaded.model, FAST["context"], FAST["batch"],
                                 FAST["eval_batches"])
    assert ours == pytest.approx(reported, abs=1e-4)
    assert loaded.metrics["bpb"] == pytest.approx(reported, abs=1e-4)


def test_load_run_builds_the_trained_size_with_its_weights_tied_again(trained):
    path, run = trained
    loaded = nexusdsl.load_run(run)
    saved = load_file(run / "step-00000006" / "model.safetensors")
    assert loaded.step == 6 and loaded.config.hyper == {"dim": 16}
    assert loaded.model.graph.hyper["dim"] == 16 and not loaded.model.training
    assert loaded.model.unembed.weight is loaded.model.tok.weight  # tied, as trained
    state = loaded.model.state_dict()
    assert set(state) == set(saved) | {"unembed.weight"}
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # a plain load_state_dict into the file's default model cannot take these weights
    with pytest.raises(RuntimeError, match="size mismatch"):
        nexusdsl.compile(str(path)).load_state_dict(state)
    assert [r["step"] for r in loaded.history() if r["split"] == "heldout"] == [0, 6]


def test_the_source_file_is_found_from_the_checkpoint_or_given(trained, tmp_path):
    path, run = trained
    moved = tmp_path / "elsewhere.nx"
    shutil.copy(path, moved)
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    state_file = copy / "step-00000006" / "state.json"
    state = json.loads(state_file.read_text())
    state["source"] = {**state["source"], "file": "gone.nx", "path": str(tmp_path / "gone.nx")}
    state_file.write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError, match="give the .nx file"):
        nexusdsl.load_run(copy)
    assert nexusdsl.load_run(copy, moved).step == 6


def test_a_prompt_tuned_run_loads_with_its_prefix(tmp_path):
    path = write(tmp_path, TINY)
    nexusdsl.train(str(path), steps=2, out=tmp_path / "run", prefix=3, **FAST)
    loaded = nexusdsl.load_run(tmp_path / "run")
    saved = load_file(tmp_path / "run" / "step-00000002" / "model.safetensors")
    assert torch.equal(loaded.model.prefix, saved["@prefix"])
    tokens = torch.randint(0, 256, (2, 10))
    assert loaded.model(tokens).shape == (2, 10, 256)  # the prefix's positions dropped


@pytest.mark.parametrize("opt", ["0", "2"])
def test_nexus_run_checkpoint_runs_the_trained_weights(trained, tmp_path, opt):
    path, run = trained
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    save_file({"tokens": tokens}, str(tmp_path / "in.safetensors"))
    done = nexus("run", path, "--checkpoint", run, "-O", opt, "--inputs",
                 tmp_path / "in.safetensors", "-o", tmp_path / "out.safetensors", "--repeat", 1)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = nexusdsl.load_run(run).model(tokens)
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["logits"], expected)


def test_nexus_run_checkpoint_refuses_set(trained):
    path, run = trained
    done = nexus("run", path, "--checkpoint", run, "--set", "dim=32")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --set cannot be used with --checkpoint")
