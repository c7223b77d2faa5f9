"""`nexus export --hf` and the inverse of bind rules (nexusdsl/weights/export.py): every
transform run backwards gives the checkpoint's tensors back exactly, `exported_names` says where
each element goes (checked against the forward binding of numbered tensors), copies that
training made differ and keys only partly given back are refused, and a trained run exports
to a directory transformers loads with the run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

import nexusdsl
from nexusdsl.weights.export import ExportError, exported_names, to_checkpoint
from tests.weights.tiny_checkpoints import TINY, inputs, nexus, ours, save, theirs

MODEL = """nexus 0.1
model M {
  input x: float[B, 6]
  h = linear(x, 8) as a
  h = linear(h, 8) as c
  h = linear(h, 8) as d
  output y = linear(h, 4, bias = false) as b
}
"""
SHAPES = {"q": (3, 6), "k": (5, 6), "stack": (3, 8), "fused": (16, 8), "flat": (32,),
          "r": (8, 6), "v": (24,), "p": (8, 2, 4), "t": (8, 8), "w1": (4, 3), "w2": (4, 5),
          "e": (2, 4, 8)}
CASES = {  # every transform, each key read whole by the rules together
    "concat select split reshape": """
  "a.weight" <- concat("q", "k")
  "a.bias" <- select("stack", 0)
  "c.bias" <- select("stack", 1)
  "d.bias" <- select("stack", 2)
  "c.weight" <- split("fused", 2, 0)
  "d.weight" <- split("fused", 2, 1)
  "b.weight" <- reshape("flat", [4, 8])
""",
    "rotary slice permute transpose concat by columns": """
  "a.weight" <- rotary_halves("r", 2)
  "a.bias" <- slice("v", 0, 8)
  "c.bias" <- slice("v", 8, 16)
  "d.bias" <- slice("v", 16, 24)
  "c.weight" <- reshape(permute("p", [1, 2, 0]), [8, 8])
  "d.weight" <- transpose("t")
  "b.weight" <- concat("w1", "w2", axis = 1)
""",
}


def numbered(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint whose every element is its own number (exact in float32)."""
    folder.mkdir(parents=True)
    tensors, start = {}, 0
    for key, shape in SHAPES.items():
        count = int(torch.tensor(shape).prod())
        tensors[key] = torch.arange(start, start + count, dtype=torch.float32).reshape(shape)
        start += count
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    return tensors


def bound(tmp_path: Path, rules: str):
    path = tmp_path / "m.nx"
    path.write_text(MODEL + f'bind M from "ck" {{{rules}  ignore "*"\n}}\n')
    program = nexusdsl.load(path)
    module = nexusdsl.compile(program)
    values = dict(module.named_parameters())
    return program.binding().plan, values


@pytest.mark.parametrize("case", list(CASES))
def test_rules_run_backwards_give_the_checkpoint_back(tmp_path, case):
    tensors = numbered(tmp_path / "ck")
    plan, values = bound(tmp_path, CASES[case])
    back = to_checkpoint(plan, values)
    read = {info.key for tree in plan.values() for _, info in tree.reads()}
    assert set(back) == read
    for key in read:
        assert torch.equal(back[key], tensors[key]), key


@pytest.mark.parametrize("case", list(CASES))
def test_exported_names_say_where_every_element_goes(tmp_path, case):
    tensors = numbered(tmp_path / "ck")
    plan, values = bound(tmp_path, CASES[case])
    parts = exported_names(plan)
    assert set(parts) == set(plan)
    for param, found in parts.items():
        value = values[param].detach()
        for part in found:
            key = tensors[part.key]
            assert part.key_shape == tuple(key.shape)
            if not part.exact:  # a reshape or rotary_halves between: whole tensors, same numbers
                assert part.key_region == tuple((0, s) for s in key.shape)
                assert set(value.flatten().tolist()) <= set(key.flatten().tolist())
                continue
            piece = key[tuple(slice(lo, hi) for lo, hi in part.key_region)]
            kept = [j for j, a in enumerate(part.param_axes) if a is not None]
            piece = piece.reshape([piece.shape[j] for j in kept])  # drop the selected axes
            order = sorted(range(len(kept)), key=lambda j: part.param_axes[kept[j]])
            expected = value[tuple(slice(lo, hi) for lo, hi in part.param_region)]
            assert torch.equal(piece.permute(*order), expected), (param, part)
    a_parts = {p.key: p for p in parts["a.weight"]}
    if "q" in a_parts:  # the fused rows of a concatenation, as an adapter needs them
        assert a_parts["k"].param_region == ((3, 8), (0, 6))
        assert a_parts["k"].param_axes == (0, 1) and not a_parts["k"].transposed
    else:
        assert {p.key: p.transposed for p in parts["d.weight"]} == {"t": True}


def test_copies_that_differ_and_keys_partly_given_back_are_refused(tmp_path):
    numbered(tmp_path / "ck")
    plan, values = bound(tmp_path, '\n  "c.weight" <- "t"\n  "d.weight" <- "t"\n')
    assert torch.equal(to_checkpoint(plan, values)["t"], values["c.weight"])  # equal copies: one
    with torch.no_grad():
        values["d.weight"][2, 3] += 1.0  # as training would
    with pytest.raises(ExportError, match=r"t is read by several parameters \(c.weight, "
                                          r"d.weight\), whose values differ now"):
        to_checkpoint(plan, values)
    plan, values = bound(tmp_path, '\n  "b.weight" <- select("e", 1)\n')
    with pytest.raises(ExportError, match="e: 32 of its 64 values come from no parameter"):
        to_checkpoint(plan, values)


VOCAB256 = dict(TINY, vocab_size=256)  # the default training data is bytes


def test_a_trained_run_exports_with_its_trained_weights(tmp_path):
    config = transformers.LlamaConfig(**VOCAB256, tie_word_embeddings=False)
    torch.manual_seed(0)
    original = transformers.LlamaForCausalLM(config).eval()
    save(original, tmp_path / "llama")
    assert nexus("import", tmp_path / "llama", "-o", tmp_path / "m.nx")[0] == 0
    result = nexusdsl.train(tmp_path / "m.nx", steps=2, batch=2, context=8, time=0, lr=1e-2,
                            out=tmp_path / "run", eval_every=0, log_every=1)
    trained = result.model.eval()

    code, stdout, stderr = nexus("export", tmp_path / "m.nx", "--checkpoint", tmp_path / "run",
                                 "--hf", tmp_path / "out")
    assert code == 0, stderr
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    given = inputs("causal", config)
    want = ours(trained, given)
    got = theirs(back, "causal", given)
    mask = given["attention_mask"].bool()
    error = (got["logits"] - want["logits"])[mask].abs().max() / want["logits"][mask].abs().max()
    assert error <= 1e-5
    before = theirs(original, "causal", given)["logits"]
    assert (before - got["logits"])[mask].abs().max() > 1e-3  # the trained weights, not the old
    assert (tmp_path / "out" / "generation_config.json").is_file()  # the source's files beside
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["eos_token_id"] == config.eos_token_id  # kept from the source's config


def test_export_mistakes_are_one_line(tmp_path):
    numbered(tmp_path / "ck")
    (tmp_path / "plain.nx").write_text(MODEL + 'bind M from "ck" {\n  "c.weight" <- "t"\n'
                                       '  ignore "*"\n}\n')
    code, _, stderr = nexus("export", tmp_path / "plain.nx", "--hf", tmp_path / "out")
    assert code == 1 and stderr.startswith("error: model M is none of the families")

    alias = ("nexus 0.1\nimport std.families.llama\n\nmodel Tiny = llama.Llama(vocab = 97, "
             "dim = 32, depth = 1, heads = 4, kv_heads = 2, head_dim = 8, hidden = 48)\n")
    (tmp_path / "unbound.nx").write_text(alias)
    code, _, stderr = nexus("export", tmp_path / "unbound.nx", "--hf", tmp_path / "out")
    assert code == 1 and "model Tiny has no bind section" in stderr

    (tmp_path / "head.nx").write_text(alias.replace("hidden = 48)", "hidden = 48)\n") +
                                      'bind Tiny from "llama" {\n  use llama.hf_layers\n'
                                      '  ignore "lm_head.weight"\n}\n')
    save(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **dict(TINY, num_hidden_layers=1), tie_word_embeddings=False)), tmp_path / "llama")
    code, _, stderr = nexus("export", tmp_path / "head.nx", "--hf", tmp_path / "out")
    assert code == 1 and "1 parameters of Tiny are bound by no rule" in stderr
    assert "head.weight" in stderr

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    code, _, stderr = nexus("export", tmp_path / "unbound.nx", "--hf", tmp_path / "taken")
    assert code == 1 and "exists and is not an empty directory" in stderr
    code, _, stderr = nexus("export", tmp_path / "unbound.nx", "--hf", tmp_path / "out",
                            "--max-shard-size", "lots")
    assert code == 1 and "is not a size" in stderr and stderr.count("\n") == 1
