"""`bind` sections: checkpoint tensors into a model's parameters, against references computed
here with torch (every transform), transformers (a sharded Llama), and the formulas of a
mixture of experts upcycled from one dense MLP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError


def checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
               shards: int = 1) -> Path:
    """A checkpoint directory: config.json and safetensors (sharded with an index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "test"}))
    keys = sorted(tensors)
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in keys}, folder / "model.safetensors")
        return folder
    index = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: tensors[k].contiguous() for k in part}, folder / name)
        index |= {k: name for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return folder


def compile_text(tmp_path: Path, text: str, **hyper):
    path = tmp_path / "model.nx"
    path.write_text("nexus 0.1\n" + text)
    return nexusdsl.compile(path, **hyper)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(NexusError) as e:
        compile_text(tmp_path, text)
    return e.value.render()


MODEL = """model M {
  input x: float[B, 6]
  h = linear(x, 8) as a
  output y = linear(h, 4, bias = false) as b
}
"""


def test_every_transform_against_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = {name: torch.randn(*shape, generator=g) for name, shape in {
        "q": (3, 6), "k": (5, 6), "fused": (16, 6), "t": (6, 8), "p": (6, 2, 4), "flat": (48,),
        "wide": (6, 10), "stack": (3, 8), "rows": (4, 8), "e": (2, 4, 8)}.items()}
    checkpoint(tmp_path / "ck", t, shards=3)
    cases = {
        'concat("q", "k")': torch.cat([t["q"], t["k"]]),
        'split("fused", 2, 1)': t["fused"][8:],
        'transpose("t")': t["t"].T,
        'permute("p", [1, 2, 0])': t["p"].permute(1, 2, 0).reshape(8, 6),
        'reshape("flat", [8, 6])': t["flat"].reshape(8, 6),
        'slice(transpose("wide"), 2, 10, 0)': t["wide"].T[2:10],
    }
    for i, (expr, expected) in enumerate(cases.items()):
        if "permute" in expr:
            expr = f"reshape({expr}, [8, 6])"
        text = MODEL + f'\nbind M from "ck" {{\n  "a.weight" <- {expr}\n  "a.bias" <- select("stack", 1)\n' \
            '  "b.weight" <- select("e", 1)\n  ignore "*"\n}\n'
        (tmp_path / f"case{i}").mkdir()
        (tmp_path / f"case{i}" / "ck").symlink_to(tmp_path / "ck")
        m = compile_text(tmp_path / f"case{i}", text)
        assert torch.equal(m.a.weight, expected), expr
        assert torch.equal(m.a.bias, t["stack"][1])
        assert torch.equal(m.b.weight, t["e"][1])


def test_rotary_halves_is_metas_permutation():
    from nexusdsl.weights.transforms import _rotary

    heads, size, width = 2, 6, 3
    w = torch.arange(heads * size * width, dtype=torch.float32).reshape(heads * size, width)
    # transformers' conversion of Meta's weights: view(heads, size/2, 2, w).transpose(1, 2)
    expected = w.view(heads, size // 2, 2, width).transpose(1, 2).reshape(heads * size, width)
    assert torch.equal(_rotary(w, heads), expected)


def test_offsets_choose_other_layers(tmp_path):
    layers = {f"layers.{i}.w": torch.full((4, 4), float(i)) for i in range(8)}
    checkpoint(tmp_path / "ck", layers)
    text = """model M {
  input x: float[B, 4]
  repeat 2 {
    x = linear(x, 4, bias = false)
  }
  output y = x
}
bind M from "ck" {
  "blocks.{i}.linear.weight" <- "layers.{i * 2 + 6 - 6 + 3}.w"
  ignore "layers.*"
}
"""
    m = compile_text(tmp_path, text)
    assert m.get_parameter("blocks.0.linear.weight").unique().item() == 3.0
    assert m.get_parameter("blocks.1.linear.weight").unique().item() == 5.0


def test_a_sharded_transformers_llama_through_the_family_rules(tmp_path):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path / "llama", max_shard_size="20KB")
    assert len(list((tmp_path / "llama").glob("*.safetensors"))) > 2
    text = """import std.families.llama
model Tiny = llama.Llama(vocab = 97, dim = 32, depth = 2, heads = 4, kv_heads = 2,
                        head_dim = 8, hidden = 48, eps = 1e-6, theta = 10000.0, factor = 1.0)
bind Tiny from "llama" {
  use llama.hf
}
"""
    m = compile_text(tmp_path, text).eval()
    tokens = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert torch.allclose(m(tokens), reference(tokens).logits, rtol=0, atol=1e-5)


DENSE = {"gate": (8, 6), "up": (8, 6), "down": (6, 8)}


def test_experts_upcycled_from_one_dense_mlp_compute_the_dense_mlp(tmp_path):
    g = torch.Generator().manual_seed(1)
    checkpoint(tmp_path / "ck", {k: torch.randn(*s, generator=g) for k, s in DENSE.items()})
    rules = """  "{p}linear.weight" <- "gate"
  "{p}linear_1.weight" <- "up"
  "{p}linear_2.weight" <- "down"
"""
    text = f"""import std.nn
model Dense {{
  input x: float[B, T, 6]
  output y = swiglu(x, hidden = 8)
}}
model Moe {{
  input x: float[B, T, 6]
  experts ffn = 4 of swiglu(hidden = 8)
  output y = moe(x, ffn, router = topk(k = 2, normalize = true), capacity = 0, balance = 0)
}}
bind Dense from "ck" {{
{rules.replace("{p}", "swiglu.")}}}
bind Moe from "ck" {{
{rules.replace("{p}", "moe.experts.{e}.swiglu.")}}}
"""
    path = tmp_path / "model.nx"
    path.write_text("nexus 0.1\n" + text)
    program = nexusdsl.load(path)
    dense, moe = nexusdsl.compile(program, "Dense"), nexusdsl.compile(program, "Moe")
    experts = [moe.get_parameter(f"moe.experts.{e}.swiglu.linear.weight") for e in range(4)]
    assert all(torch.equal(w, experts[0]) for w in experts)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        assert torch.allclose(moe(x), dense(x), atol=1e-6)


def test_layers_of_two_checkpoints_as_frozen_experts_stay_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(2)
    a = {f"model.layers.{i}.mlp.{k}": torch.randn(*s, generator=g) for i in range(3)
         for k, s in DENSE.items()}
    b = {f"h.{i}.{k}": torch.randn(*s, generator=g) for i in range(2) for k, s in DENSE.items()}
    checkpoint(tmp_path / "a", a)
    checkpoint(tmp_path / "b", b)
    text = """import std.nn
modality text = bytes(code = 0)
model Mixed {
  input tokens: text[B, T]
  x = linear(embed(tokens, 6), 6)
  experts ffn = 2 of swiglu(hidden = 8)
  h = moe(x, ffn, router = topk(k = 1), capacity = 0, balance = 0)
  output logits = unembed(h)
}
bind Mixed from a = "a", b = "b" frozen {
  "moe.experts.0.swiglu.linear.weight" <- a["model.layers.2.mlp.gate"]
  "moe.experts.0.swiglu.linear_1.weight" <- a["model.layers.2.mlp.up"]
  "moe.experts.0.swiglu.linear_2.weight" <- a["model.layers.2.mlp.down"]
  "moe.experts.1.swiglu.linear.weight" <- b["h.1.gate"]
  "moe.experts.1.swiglu.linear_1.weight" <- b["h.1.up"]
  "moe.experts.1.swiglu.linear_2.weight" <- b["h.1.down"]
  ignore "*" from a
  ignore "*" from b
}
"""
    path = tmp_path / "mixed.nx"
    path.write_text("nexus 0.1\n" + text)
    result = nexusdsl.train(path, steps=3, batch=2, context=8, time=0, log_every=1,
                            eval_every=0, lr=1e-2)
    model = result.model
    assert torch.equal(model.get_parameter("moe.experts.0.swiglu.linear.weight"), a["model.layers.2.mlp.gate"])
    assert torch.equal(model.get_parameter("moe.experts.1.swiglu.linear_2.weight"), b["h.1.down"])
    assert not model.get_parameter("moe.experts.1.swiglu.linear_2.weight").requires_grad
    fresh = nexusdsl.compile(path)
    assert not torch.equal(model.linear.weight, fresh.linear.weight)  # the rest trained


def test_a_bf16_checkpoint_makes_a_bf16_model(tmp_path):
    checkpoint(tmp_path / "ck", {"w": torch.randn(8, 6).bfloat16(), "b": torch.randn(8).bfloat16(),
                                 "w2": torch.randn(4, 8).bfloat16()})
    text = MODEL + 'bind M from "ck" {\n  "a.weight" <- "w"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"\n}\n'
    m = compile_text(tmp_path, text)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert compile_text(tmp_path, text, dtype="f32").a.weight.dtype == torch.float32


def test_a_hub_id_resolves_in_the_local_cache_only(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    checkpoint(snapshot, {"w": torch.randn(8, 6), "b": torch.randn(8), "w2": torch.randn(4, 8)})
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rules = '{\n  "a.weight" <- "w"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"\n}\n'
    m = compile_text(tmp_path / "hub", MODEL + 'bind M from "org/tiny" ' + rules)
    assert m.a.weight.shape == (8, 6)
    message = error_of(tmp_path / "hub", MODEL + 'bind M from "org/absent" ' + rules)
    assert "nothing is downloaded" in message


@pytest.mark.parametrize("rules,message", [
    ('"a.weight" <- "w2"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "a.weight is [8, 6], but the rule gives [4, 8]: w2 [4, 8]"),
    ('"a.weight" <- "nope"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"', "has no tensor nope"),
    ('"a.weight" <- "w"\n  "b.weight" <- "w2"', "1 tensors of"),
    ('"a.weight" <- shuffle("w")\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "no transform `shuffle`"),
    ('"a.weight" <- split("w", 3, 0)\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "8 does not split into 3 equal parts"),
    ('"c.weight" <- "w"\n  "a.weight" <- "w"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "`c.weight` names no parameter"),
    ('"a.weight" <- "w"\n  "a.{x}" <- "b"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "names no parameter"),
    ('"a.weight" <- "w"\n  "a.weight" <- "w"\n  "a.bias" <- "b"\n  "b.weight" <- "w2"',
     "a.weight is bound twice"),
])
def test_bad_rules_are_located(tmp_path, rules, message):
    checkpoint(tmp_path / "ck", {"w": torch.randn(8, 6), "b": torch.randn(8), "w2": torch.randn(4, 8)})
    text = MODEL + f'bind M from "ck" {{\n  {rules}\n}}\n'
    rendered = error_of(tmp_path, text)
    assert message in rendered and "model.nx:" in rendered and "Traceback" not in rendered


def test_pickles_and_remote_code_are_refused_before_reading(tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    text = MODEL + 'bind M from "pickled" {\n  "a.weight" <- "w"\n}\n'
    assert "only pickled weights" in error_of(tmp_path, text)
    remote = checkpoint(tmp_path / "remote", {"w": torch.randn(8, 6)},
                        config={"auto_map": {"AutoModel": "modeling_x.X"}})
    (remote / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    text = MODEL + 'bind M from "remote" {\n  "a.weight" <- "w"\n}\n'
    assert "asks for code shipped with the model" in error_of(tmp_path, text)


def test_a_bind_of_no_model_and_a_frozen_bind_in_the_summary(tmp_path):
    checkpoint(tmp_path / "ck", {"w": torch.randn(8, 6), "b": torch.randn(8)})
    text = MODEL + 'bind N from "ck" {\n  "a.weight" <- "w"\n}\n'
    assert "no model named N" in error_of(tmp_path, text)
    text = MODEL + 'bind M from "ck" frozen {\n  "a.weight" <- "w"\n  "a.bias" <- "b"\n}\n'
    m = compile_text(tmp_path, text)
    assert not m.a.weight.requires_grad and m.b.weight.requires_grad
    from nexusdsl.compiler.summary import summarize

    program = nexusdsl.load(tmp_path / "model.nx")
    info = summarize(program.elaborate(), bound=set(program.binding().plan))
    assert info["params"]["frozen"] == info["params"]["bound"] == 8 * 6 + 8
