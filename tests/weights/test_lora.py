"""LoRA adapters in train sections, `nexus merge`, and the PEFT export, against references:
the adapted projections against W x + (alpha / rank) B A x computed by hand, a model whose
weights were changed by hand, the base weights before training (bit for bit), and `peft`
applying the exported adapter to the transformers model the weights came from."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import nexusdsl
from nexusdsl.elaborate.train_config import NO_SPAN, Call
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train import lora
from nexusdsl.train.lora_files import export_peft, merge_run
from tests.conftest import ROOT
from tests.train.models import FAST, TINY, write

GQA = """nexus 0.1
import std.nn

model Net(dim = 16) {
  input x: float[B, T, 16]
  h = x + attention(rmsnorm(x), heads = 4, kv_heads = 2, head_dim = 4, causal = true)
  output y = linear(h, 8) as proj
}
"""

MIXTRAL = """nexus 0.1
import std.families.mixtral

model Moe = mixtral.Mixtral(vocab = 50, dim = 16, depth = 1, heads = 4, kv_heads = 2,
                            head_dim = 4, n = 3, k = 2, hidden = 12)
"""


def randomise(adapters: dict, seed: int = 0) -> None:
    """B starts at zeros (the base model); give A and B values so the update shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a, b in adapters.values():
            a.copy_(torch.randn(a.shape, generator=gen))
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)


def attached(path, targets, rank=2, alpha=6.0):
    module = nexusdsl.compile(path).eval()
    base = {k: v.clone() for k, v in module.state_dict().items()}
    call = Call("lora", {"rank": rank, "alpha": alpha, "targets": targets})
    lora.attach(module, call, NO_SPAN)
    return module, base, alpha / rank


def test_a_lora_projection_is_w_x_plus_scaled_b_a_x(tmp_path):
    module, base, scale = attached(write(tmp_path, GQA), ["*.q", "*.v", "proj"])
    adapters = lora.adapters(module)
    assert sorted(adapters) == ["attention.q", "attention.v", "proj"]
    randomise(adapters)
    x = torch.randn(3, 5, 16)
    a, b = adapters["proj"]
    want = x @ base["proj.weight"].T + base["proj.bias"] + scale * (x @ a.T) @ b.T
    torch.testing.assert_close(module.proj(x), want, rtol=0, atol=1e-5)
    # the fused qkv rows: 4 query heads of 4 rows, then 2 key heads, then 2 value heads
    w = base["attention.qkv.weight"]
    got = F.linear(x, module.attention.qkv.weight)
    (aq, bq), (av, bv) = adapters["attention.q"], adapters["attention.v"]
    torch.testing.assert_close(got[..., :16], x @ w[:16].T + scale * (x @ aq.T) @ bq.T,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(got[..., 16:24], x @ w[16:24].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[..., 24:], x @ w[24:].T + scale * (x @ av.T) @ bv.T,
                               rtol=0, atol=1e-5)


def test_the_model_is_the_base_with_each_update_added_by_hand(tmp_path):
    path = write(tmp_path, GQA)
    module, base, scale = attached(path, ["*.q", "*.v", "proj"])
    randomise(lora.adapters(module))
    by_hand = dict(base)
    (aq, bq), (av, bv) = (lora.adapters(module)[k] for k in ("attention.q", "attention.v"))
    a, b = lora.adapters(module)["proj"]
    qkv = by_hand["attention.qkv.weight"].clone()
    qkv[:16] += scale * bq @ aq
    qkv[24:] += scale * bv @ av
    by_hand["attention.qkv.weight"] = qkv
    by_hand["proj.weight"] = base["proj.weight"] + scale * b @ a
    plain = nexusdsl.compile(path).eval()
    plain.load_state_dict(by_hand)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain(x), rtol=0, atol=1e-5)


def test_step_zero_is_the_base_model_exactly(tmp_path):
    path = write(tmp_path, GQA)
    module, _, _ = attached(path, ["*.q", "*.k", "*.v", "*.out", "proj"])
    a, b = lora.adapters(module)["proj"]
    assert b.abs().sum() == 0 and a.abs().sum() > 0
    bound = 1 / math.sqrt(16)  # kaiming-uniform with a = sqrt(5) over 16 inputs, as PEFT's
    assert a.abs().max() <= bound
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.equal(module(x), nexusdsl.compile(path).eval()(x))


def test_dropout_drops_whole_input_features_of_the_update_while_training(tmp_path):
    """Documented in train/lora.py: a weight cannot see its input, so training drops columns
    of A (kept ones scaled by 1 / (1 - p)); evaluation has no dropout."""
    module = nexusdsl.compile(write(tmp_path, GQA))
    base = module.proj.weight.detach().clone()
    lora.attach(module, Call("lora", {"rank": 2, "alpha": 2, "dropout": 0.5,
                                      "targets": ["proj"]}), NO_SPAN)
    randomise(lora.adapters(module))
    a, b = lora.adapters(module)["proj"]
    full = (b @ a).detach()
    module.train()
    torch.manual_seed(0)
    delta = (module.proj.weight - base).detach()
    kept = [j for j in range(16) if delta[:, j].abs().sum() > 0]
    assert 0 < len(kept) < 16
    for j in range(16):
        want = full[:, j] / 0.5 if j in kept else torch.zeros(8)
        torch.testing.assert_close(delta[:, j], want, rtol=0, atol=1e-6)
    module.eval()
    torch.testing.assert_close(module.proj.weight - base, full, rtol=0, atol=1e-6)


def test_lora_reaches_every_expert_of_a_moe(tmp_path):
    path = write(tmp_path, MIXTRAL)
    module, base, scale = attached(path, ["*.moe.experts.*.swiglu.linear", "*.v"])
    adapters = lora.adapters(module)
    experts = [f"blocks.0.moe_layer.moe.experts.{e}.swiglu.linear" for e in range(3)]
    assert sorted(adapters) == ["blocks.0.moe_layer.attention.v", *experts]
    randomise(adapters)
    by_hand = dict(base)
    for name in experts:
        a, b = adapters[name]
        by_hand[f"{name}.weight"] = base[f"{name}.weight"] + scale * b @ a
    a, b = adapters["blocks.0.moe_layer.attention.v"]
    qkv = base["blocks.0.moe_layer.attention.qkv.weight"].clone()
    qkv[24:] += scale * b @ a  # rows: 16 query, 8 key, 8 value
    by_hand["blocks.0.moe_layer.attention.qkv.weight"] = qkv
    plain = nexusdsl.compile(path).eval()
    plain.load_state_dict(by_hand)
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = module(tokens), plain(tokens)
        assert (got - nexusdsl.compile(path).eval()(tokens)).abs().max() > 1e-3  # it adapts
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- a LoRA run

LORA_TINY = TINY + """
train Tiny {
  lora = lora(rank = 4, alpha = 8, dropout = 0.05, targets = ["*.q", "*.v", "mlp.linear"])
}
"""
ADAPTERS = {f"lora.{t}.{m}" for t in ("attention.q", "attention.v", "mlp.linear")
            for m in "AB"}


def base_of(module, name: str) -> torch.Tensor:
    """A weight as the model holds it before its LoRA update (the parametrized original)."""
    owner, _, attr = name.rpartition(".")
    sub = module.get_submodule(owner)
    if torch.nn.utils.parametrize.is_parametrized(sub, attr):
        return sub.parametrizations[attr].original
    return getattr(sub, attr)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    path = write(tmp, LORA_TINY)
    before = {k: v.clone() for k, v in nexusdsl.compile(path).state_dict().items()}
    result = nexusdsl.train(str(path), steps=4, lr=3e-2, out=tmp / "run", **FAST)
    return path, tmp, before, result


def test_training_changes_the_adapters_only_and_saves_only_them(lora_run):
    path, tmp, before, result = lora_run
    for name, value in before.items():
        assert torch.equal(base_of(result.model, name), value), f"{name} changed"
    adapters = lora.adapters(result.model)
    assert all(b.abs().sum() > 0 for _, b in adapters.values())  # trained from zeros
    step = tmp / "run" / "step-00000004"
    saved = load_file(step / "model.safetensors")
    assert saved.keys() == ADAPTERS
    for name, (a, b) in adapters.items():
        assert torch.equal(saved[f"lora.{name}.A"], a.detach())
        assert torch.equal(saved[f"lora.{name}.B"], b.detach())
    slots = load_file(step / "optimizer.safetensors")
    assert {k.rpartition("/")[0] for k in slots} == ADAPTERS
    state = json.loads((step / "state.json").read_text())
    assert state["aliases"] == {}  # tok and unembed are tied, but neither is saved
    assert state["lora"]["base_sha256"] == lora.base_hash(nexusdsl.compile(path))
    assert result.after["loss"] < result.before["loss"]


def test_a_saved_lora_run_loads_as_trained(lora_run):
    path, tmp, _, result = lora_run
    run = nexusdsl.load_run(tmp / "run")
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(run.model(x), result.model(x))


def test_merged_weights_give_the_adapted_outputs(lora_run):
    path, tmp, before, _ = lora_run
    merged_path = merge_run(tmp / "run", tmp / "merged")
    merged = nexusdsl.load_run(tmp / "merged")
    assert merged_path == tmp / "merged" / "step-00000004"
    assert not lora.adapters(merged.model) and merged.config.lora is None
    saved = load_file(tmp / "run" / "step-00000004" / "model.safetensors")
    weights = merged.model.state_dict()
    scale = 8 / 4
    qkv = before["attention.qkv.weight"].clone()
    qkv[:32] += scale * saved["lora.attention.q.B"] @ saved["lora.attention.q.A"]
    qkv[64:] += scale * saved["lora.attention.v.B"] @ saved["lora.attention.v.A"]
    torch.testing.assert_close(weights["attention.qkv.weight"], qkv, rtol=0, atol=1e-6)
    linear = before["mlp.linear.weight"] + scale * (saved["lora.mlp.linear.B"] @
                                                    saved["lora.mlp.linear.A"])
    torch.testing.assert_close(weights["mlp.linear.weight"], linear, rtol=0, atol=1e-6)
    for name in ("tok.weight", "attention.out.weight", "mlp.linear_1.weight"):
        assert torch.equal(weights[name], before[name])
    adapted = nexusdsl.load_run(tmp / "run")
    x = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), adapted.model(x), rtol=0, atol=1e-6)
    file = tmp / "merged.safetensors"
    merge_run(tmp / "run", file)
    tensors = load_file(file)
    assert set(tensors) == set(weights) - {"unembed.weight"}  # tied: saved once
    torch.testing.assert_close(tensors["mlp.linear.weight"], linear, rtol=0, atol=1e-6)


def nexus(*args):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def one_error(run, message):
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        run.stderr


def test_nexus_merge_writes_a_run_that_nexus_eval_reads(lora_run):
    path, tmp, _, result = lora_run
    done = nexus("merge", path, "--checkpoint", tmp / "run", "-o", tmp / "cli-merged")
    assert done.returncode == 0, done.stderr
    evaluated = nexus("eval", path, "--checkpoint", tmp / "cli-merged", "--json",
                      "--batch", 8, "--context", 32, "--batches", 2)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] == pytest.approx(result.after["loss"],
                                                                 rel=1e-5)
    one_error(nexus("merge", path, "--checkpoint", tmp / "run", "-o", tmp / "cli-merged"),
              "already holds a checkpoint")
    one_error(nexus("merge", path, "--checkpoint", tmp / "cli-merged", "-o", tmp / "again"),
              "is not a LoRA run")


def test_a_changed_base_is_refused_on_resume_and_load(lora_run, tmp_path):
    path, tmp, _, _ = lora_run
    with pytest.raises(ckpt.CheckpointError, match="trained on other base weights"):
        nexusdsl.train(str(path), steps=6, seed=1, out=tmp / "run", resume=True, **FAST)
    state = tmp / "run" / "step-00000004" / "state.json"
    edited = tmp_path / "step-00000004"
    edited.mkdir()
    for f in ("model.safetensors", "optimizer.safetensors"):
        (edited / f).write_bytes((tmp / "run" / "step-00000004" / f).read_bytes())
    record = json.loads(state.read_text())
    record["lora"]["base_sha256"] = "0" * 64
    (edited / "state.json").write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointError, match="trained on other base weights"):
        nexusdsl.load_run(edited, path)
    one_error(nexus("eval", path, "--checkpoint", edited), "trained on other base weights")


@pytest.mark.parametrize("setting, message", [
    ('lora = lora(targets = ["*.qq"])', "lora: target `*.qq` matches no projection of Tiny "
     "(its projections: attention.qkv, attention.q, attention.k, attention.v, attention.out, "
     "mlp.linear, mlp.linear_1)"),
    ('lora = lora(targets = ["*.q", "*.qkv"])', "lora: the targets take `attention.q` and "
     "`attention.qkv`, which adapt the same rows of attention.qkv.weight"),
    ('lora = lora(rank = 0)', "`lora(rank = ...)` must be a whole number >= 1, got 0"),
    ('lora = lora(targets = [])', "`lora(targets = ...)` must be a list of name globs"),
])
def test_lora_mistakes_are_located_at_the_setting(tmp_path, setting, message):
    path = write(tmp_path, TINY, train=f"\ntrain Tiny {{\n  {setting}\n}}\n")
    line = TINY.count("\n") + 3
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load(path)  # what `nexus check` runs
    rendered = info.value.render()
    assert rendered.startswith(f"{path}:{line}:3: error: "), rendered
    assert message in rendered


def test_lora_trains_alone(tmp_path):
    path = write(tmp_path, TINY, train='\ntrain Tiny {\n  lora = lora\n  freeze = [tok]\n}\n')
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load(path)
    assert "a LoRA run trains its adapters only, every weight of the model frozen; leave out " \
        "freeze" in info.value.render()


# ----------------------------------------------------------------------------- PEFT

LLAMA = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
             tie_word_embeddings=False)
BOUND = """nexus 0.1
import std.families.llama

model Tiny = llama.Llama(vocab = 256, dim = 32, depth = 2, heads = 4, kv_heads = 2,
                         head_dim = 8, hidden = 48, theta = 10000.0, factor = 1.0)

bind Tiny from "llama" {
  use llama.hf
}

train Tiny {
  lora = lora(rank = 4, alpha = 8, dropout = 0.05,
              targets = ["*.q", "*.v", "*.swiglu.linear_2", "tok", "head"])
}
"""


def save_llama(folder, seed: int) -> None:
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    model.save_pretrained(folder, max_shard_size="50KB")


def llama(folder):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def bound_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft")
    save_llama(tmp / "llama", seed=0)
    path = write(tmp, BOUND)
    nexusdsl.train(str(path), steps=4, lr=1e-2, out=tmp / "run", **FAST)
    return path, tmp


def test_the_peft_export_gives_the_same_outputs_under_peft(bound_run):
    import peft

    path, tmp = bound_run
    done = nexus("export", path, "--checkpoint", tmp / "run", "--peft", tmp / "adapter")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8, "CAUSAL_LM")
    assert config["target_modules"] == ["down_proj", "embed_tokens", "lm_head", "q_proj",
                                        "v_proj"]
    tensors = load_file(tmp / "adapter" / "adapter_model.safetensors")
    q = "base_model.model.model.layers.1.self_attn.q_proj"
    assert tensors[f"{q}.lora_A.weight"].shape == (4, 32)
    assert tensors[f"{q}.lora_B.weight"].shape == (32, 4)
    assert tensors["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (4, 256)
    adapted = peft.PeftModel.from_pretrained(llama(tmp / "llama"), tmp / "adapter").eval()
    ours = nexusdsl.load_run(tmp / "run").model
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = adapted(tokens).logits, ours(tokens)
        base = llama(tmp / "llama")(tokens).logits
    scale = want.abs().max()
    assert (got - base).abs().max() / scale > 1e-2  # the adapters changed the model
    assert (got - want).abs().max() / scale < 1e-5


def test_export_hf_of_a_lora_run_writes_the_merged_model(bound_run):
    path, tmp = bound_run
    done = nexus("export", path, "--checkpoint", tmp / "run", "--hf", tmp / "merged-hf")
    assert done.returncode == 0, done.stderr
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = nexusdsl.load_run(tmp / "run").model(tokens)
        got = llama(tmp / "merged-hf")(tokens).logits
    assert (got - want).abs().max() / want.abs().max() < 1e-5


def test_pruning_a_lora_run_asks_for_a_merge_first(lora_run):
    path, tmp, _, _ = lora_run
    one_error(nexus("prune", path, "--checkpoint", tmp / "run", "--out", tmp / "pruned"),
              "is a LoRA run: merge it first")


def test_peft_target_modules_name_the_adapted_modules(bound_run):
    from nexusdsl.train.lora_files import target_modules
    from nexusdsl.weights.checkpoints import open_source

    _, tmp = bound_run
    source = open_source(tmp / "llama")
    q = "model.layers.{}.self_attn.q_proj"
    assert target_modules({q.format(0), q.format(1)}, source) == ["q_proj"]
    assert target_modules({q.format(1), "lm_head"}, source) == ["lm_head", q.format(1)]


def test_a_changed_bound_checkpoint_is_refused(bound_run, tmp_path):
    import shutil

    path, tmp = bound_run
    shutil.copytree(tmp / "run", tmp_path / "run")
    shutil.copy(path, tmp_path / "model.nx")
    save_llama(tmp_path / "llama", seed=0)
    nexusdsl.load_run(tmp_path / "run", tmp_path / "model.nx")  # the same weights load
    shutil.rmtree(tmp_path / "llama")
    save_llama(tmp_path / "llama", seed=1)
    with pytest.raises(ckpt.CheckpointError, match="trained on other base weights"):
        nexusdsl.load_run(tmp_path / "run", tmp_path / "model.nx")
    one_error(nexus("merge", tmp_path / "model.nx", "--checkpoint", tmp_path / "run", "-o",
                    tmp_path / "merged"), "trained on other base weights")


def test_a_lora_run_of_an_unbound_model_has_no_peft_form(lora_run, tmp_path):
    path, tmp, _, _ = lora_run
    with pytest.raises(ckpt.CheckpointError, match="has no bind section"):
        export_peft(tmp / "run", tmp_path / "adapter", path)
