"""`NexusModule.generate` (compiler/lower/generate.py) against generation written out by hand
with the model's full forward: greedy sequences identical for every family and every shipped
example that decodes step by step, alone and in a padded batch of prompts of different
lengths; the cached step's logits equal to the full forward's in float32; sampling with
top-k and top-p as written out by hand, reproducible with a seed; stop ids, a sliding
window, recomputation (and its reason), the other inputs of a model held fixed, and the
mistakes said in one sentence."""

from __future__ import annotations

import pytest
import torch

import nexusdsl
from nexusdsl.compiler.lower.decode import Decoder
from nexusdsl.compiler.lower.generate import GenerationError, nucleus, recompute_reason
from tests.conftest import ROOT, family_program
from tests.generate.test_decode import FAMILIES

EXAMPLES = ["conv_lm.nx", "gpt.nx", "tiny_lm.nx"]  # the shipped examples that decode
PROMPT_LENGTHS = [7, 2, 4]
NEW = 6


def family(name: str, **extra):
    hyper = {**FAMILIES[name], **extra}
    return nexusdsl.compile(family_program(name), seed=3,
                            **hyper).eval(), hyper["vocab"]


def example(file: str):
    return nexusdsl.compile(ROOT / "examples" / file, seed=3).eval(), 256


def models():
    return [pytest.param(name, id=name) for name in sorted(FAMILIES) + EXAMPLES]


def build(name: str):
    return example(name) if name.endswith(".nx") else family(name)


def prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 4) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


@torch.no_grad()
def by_hand(forward, prompt: list[int], steps: int, pick, stop=()) -> list[int]:
    """Generation written out: the whole sequence through the model for every new id."""
    new: list[int] = []
    for _ in range(steps):
        logits = forward(torch.tensor([prompt + new]))[0, -1]
        new.append(pick(logits))
        if new[-1] in stop:
            break
    return new


def greedy(logits) -> int:
    return int(logits.argmax())


# ---------------------------------------------------------------------------- greedy, cached


@pytest.mark.parametrize("name", models())
def test_greedy_sequences_equal_generation_by_hand_alone_and_batched(name):
    model, vocab = build(name)
    rows = prompts(vocab)
    batched = model.generate(rows, NEW)
    alone = [model.generate([row], NEW)[0] for row in rows]
    want = [by_hand(model, row, NEW, greedy) for row in rows]
    assert batched == alone == want
    assert recompute_reason(model) is None  # these came from the cache


@pytest.mark.parametrize("name", models())
@torch.no_grad()
def test_cached_logits_equal_the_full_forward_in_float32(name):
    """Every position of every row of a padded batch, prompt then steps, to 1e-5 of the
    logits' magnitude."""
    model, vocab = build(name)
    rows = [row + more for row, more in zip(prompts(vocab), prompts(vocab, [NEW] * 3, 5))]
    width = max(PROMPT_LENGTHS)
    tokens = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for r, n in enumerate(PROMPT_LENGTHS):
        tokens[r, width - n:], mask[r, width - n:] = torch.tensor(rows[r][:n]), True
    with Decoder(model, batch=3, capacity=width + NEW) as decode:
        outs = [decode(tokens, mask)]
        for t in range(NEW):
            step = torch.tensor([row[n + t] for row, n in zip(rows, PROMPT_LENGTHS)])[:, None]
            outs.append(decode(step))
    for r, n in enumerate(PROMPT_LENGTHS):
        mine = torch.cat([outs[0][r, width - n:]] + [o[r] for o in outs[1:]])
        full = model(torch.tensor([rows[r]]))[0]
        assert ((mine - full).abs().max() / full.abs().max()).item() <= 1e-5


def test_t5_generates_its_decoder_tokens_against_a_fixed_encoder_input():
    model = nexusdsl.compile(family_program("t5"), seed=3, vocab=97, dim=32,
                             depth=2, decoder_depth=2, heads=4, head_dim=8, hidden=40, buckets=8,
                             max_distance=16).eval()
    gen = torch.Generator().manual_seed(6)
    encoder = torch.randint(0, 97, (2, 9), generator=gen)
    encoder_mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    rows = [[0], [0, 17, 33]]
    got = model.generate(rows, NEW, tokens=encoder, mask=encoder_mask)
    for r, row in enumerate(rows):
        def forward(ids, r=r):
            return model(encoder[r:r + 1], ids, encoder_mask[r:r + 1])

        assert got[r] == by_hand(forward, row, NEW, greedy)
    with pytest.raises(GenerationError, match="T5 also takes tokens: give it to generate"):
        model.generate(rows, NEW)


def test_prompts_as_a_tensor_with_a_mask_are_the_rows_it_marks():
    model, vocab = family("llama")
    rows = prompts(vocab)
    right_padded = torch.full((3, 7), 5)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for r, row in enumerate(rows):
        right_padded[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), True
    assert model.generate(right_padded, NEW, mask=mask) == model.generate(rows, NEW)


# ---------------------------------------------------------------------------- sampling


def filtered_by_hand(logits, temperature: float, top_k: int, top_p: float):
    """The distribution sampling draws from, written out: softmax of logits / temperature
    over the top_k likeliest ids, then over the likeliest ids until their sum reaches p."""
    logits = logits.float() / temperature
    ranked = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    keep = set(ranked[:top_k] if top_k else ranked)
    probs = torch.softmax(logits.masked_fill(
        torch.tensor([i not in keep for i in range(len(logits))]), float("-inf")), -1)
    total, nucleus_ids = 0.0, set()
    for i in ranked:
        if i not in keep or total >= top_p:
            break
        nucleus_ids.add(i)
        total += float(probs[i])
    return probs * torch.tensor([float(i in nucleus_ids) for i in range(len(logits))])


@pytest.mark.parametrize("top_k,top_p", [(0, 0.7), (12, 1.0), (12, 0.5), (0, 1.0)])
def test_sampling_draws_what_written_out_sampling_draws(top_k, top_p):
    model, vocab = family("llama")
    row = prompts(vocab)[0]
    gen = torch.Generator().manual_seed(11)

    def draw(logits):
        probs = filtered_by_hand(logits, 0.9, top_k, top_p)
        return int(torch.multinomial(probs, 1, generator=gen))

    got = model.generate([row], 12, temperature=0.9, top_k=top_k, top_p=top_p, seed=11)
    assert got == [by_hand(model, row, 12, draw)]


def test_nucleus_keeps_the_fewest_likeliest_ids_that_reach_p():
    probs = torch.softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(2)), -1)
    for p in (0.05, 0.3, 0.9, 0.999):
        kept = nucleus(probs, p) > 0
        for row, mine in zip(probs, kept):
            # id i stays exactly when the ids likelier than it hold less than p
            likelier = (row[None, :] > row[:, None]).float() @ row
            assert torch.equal(mine, likelier < p)
            assert row[mine].sum() >= p and row[mine].sum() - row[mine].min() < p


def test_sampling_is_reproducible_with_a_seed():
    model, vocab = family("mistral")
    rows = prompts(vocab)
    first, again, other = (model.generate(rows, 10, temperature=1.0, seed=s) for s in (7, 7, 8))
    assert first == again and first != other
    assert all(len(row) == 10 for row in first)


# ---------------------------------------------------------------------------- stop, window


def test_a_row_ends_at_its_stop_id_while_the_others_go_on():
    model, vocab = family("qwen3")
    rows = prompts(vocab)
    free = model.generate(rows, 8)
    at = next(i for i in range(1, 8) if free[1][i] not in free[1][:i])  # a new id of row 1
    stop = free[1][at]
    got = model.generate(rows, 8, stop=stop)
    for r, row in enumerate(rows):
        assert got[r] == by_hand(model, row, 8, greedy, stop={stop})
    assert got[1] == free[1][:at + 1]
    assert any(len(g) == 8 for g in got)  # a row without it ran to the end


def test_a_sliding_window_sees_only_the_last_context_ids():
    """The cache serves while the window holds the row; past it, each step runs the last
    `context` ids (as `nexus generate` always has)."""
    model, vocab = example("gpt.nx")
    rows = prompts(vocab, [9, 3])
    got = model.generate(rows, 10, context=8)
    for r, row in enumerate(rows):
        assert got[r] == by_hand(lambda ids: model(ids[:, -8:]), row, 10, greedy)


# ---------------------------------------------------------------------------- recomputation


LOOKS_BACK_AT_ALL = """nexus 0.1
modality text = bytes(code = 0)
model Pooled(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(x, heads = 2, causal = true)
  output logits = unembed(x + mean(x, axis = T) as pool, tie = tok)
}
"""


def test_a_model_that_cannot_decode_recomputes_and_says_which_op():
    model = nexusdsl.compile(nexusdsl.loads(LOOKS_BACK_AT_ALL, "pooled.nx"), seed=1).eval()
    assert recompute_reason(model) == "mean at pool cannot decode step by step"
    rows = prompts(256, [5, 2])
    assert model.generate(rows, 5) == [by_hand(model, row, 5, greedy) for row in rows]


def test_nexus_generates_text_by_recomputation_with_its_image_and_sound_fixed():
    model = nexusdsl.compile(ROOT / "examples" / "nexus.nx", seed=2).eval()
    assert recompute_reason(model) == "tag at tag_2 cannot decode step by step"
    gen = torch.Generator().manual_seed(3)
    pixels, sound = torch.rand(2, 1, 8, 8, generator=gen), torch.randn(2, 512, generator=gen)
    rows = prompts(256, [4, 2])
    got = model.generate(rows, 5, pixels=pixels, sound=sound)
    for r, row in enumerate(rows):
        def forward(ids, r=r):
            return model(pixels[r:r + 1], sound[r:r + 1], ids)["logits"]

        assert got[r] == by_hand(forward, row, 5, greedy)


# ---------------------------------------------------------------------------- mistakes


POSITIONS = """nexus 0.1
modality text = bytes(code = 0)
model Short(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + position(x, max = 12) as where
  output logits = unembed(x + attention(x, heads = 2, causal = true), tie = tok)
}
"""


def test_a_row_may_not_outgrow_the_models_positions():
    model = nexusdsl.compile(nexusdsl.loads(POSITIONS, "short.nx")).eval()
    assert len(model.generate([[1, 2, 3, 4]], 9)[0]) == 9  # 12 positions: the 9th id is not fed
    with pytest.raises(GenerationError) as err:
        model.generate([[1, 2, 3, 4]], 10)
    assert str(err.value) == ("10 new tokens after a prompt of 4 need 13 positions, but Short "
                              "has 12 (position(max = 12) at where): at most 9 new tokens fit")
    assert len(model.generate([[1, 2, 3, 4]], 30, context=12)[0]) == 30  # a window slides


@pytest.mark.parametrize("kwargs,message", [
    ({"top_p": 0.0}, "top_p = 0.0: give a probability in (0, 1]"),
    ({"top_p": 1.5}, "top_p = 1.5: give a probability in (0, 1]"),
    ({"temperature": -1.0}, "temperature = -1.0: give a finite number >= 0"),
    ({"top_k": -2}, "top_k = -2: give 0 (every id) or a positive count"),
    ({"max_new_tokens": 0}, "max_new_tokens = 0: give a whole number of at least 1"),
    ({"prompts": [[1], []]}, "prompt 1 is empty: give it at least one id"),
    ({"prompts": [[1, 97]]}, "prompt 0 holds id 97, outside the model's vocabulary of 97 ids"),
    ({"prompts": []}, "no prompts: give at least one"),
])
def test_arguments_generation_cannot_take(kwargs, message):
    model, _ = family("llama")
    arguments = {"prompts": [[1, 2]], "max_new_tokens": 3, **kwargs}
    with pytest.raises(GenerationError) as err:
        model.generate(**arguments)
    assert str(err.value).startswith(message)


def test_models_generation_cannot_grow():
    digits = nexusdsl.compile(ROOT / "examples" / "digits.nx")
    with pytest.raises(GenerationError, match="generate needs a model of one token input"):
        digits.generate([[1]], 2)
    graph = nexusdsl.load(ROOT / "examples" / "mnn.nx").elaborate()
    from nexusdsl.compiler.lower.generate import token_model

    with pytest.raises(GenerationError, match="it takes exactly 4096 tokens"):
        token_model(graph)


@pytest.mark.parametrize("name", ["llama", "gpt.nx"])
@torch.no_grad()
def test_a_prompt_fed_for_its_last_position_gives_the_full_forward_there(name):
    """`last_only` (what generate asks of a prompt): the logits of each row's last prompt
    token alone, [B, 1, vocab], equal to the full forward's there, and the steps after it
    unchanged."""
    model, vocab = build(name)
    rows = prompts(vocab)
    width = max(PROMPT_LENGTHS)
    tokens = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for r, row in enumerate(rows):
        tokens[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), True
    with Decoder(model, batch=3, capacity=width + 1) as decode:
        last = decode(tokens, mask, last_only=True)
        step = decode(torch.tensor([[5], [6], [7]]))
    assert last.shape == (3, 1, vocab)
    for r, row in enumerate(rows):
        full = model(torch.tensor([row + [5 + r]]))[0]
        for mine, want in [(last[r, 0], full[-2]), (step[r, 0], full[-1])]:
            assert ((mine - want).abs().max() / want.abs().max()).item() <= 1e-5
