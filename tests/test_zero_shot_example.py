"""examples/zero_shot/digits.nx: a frozen all-MiniLM-L6-v2 (the real open weights the dev extra
installs) and a trainable image tower, trained a few contrastive steps on the digits with
sentence captions; benchmarks/zero_shot.py's zero-shot classification checked by hand."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import nexusdsl
from benchmarks.zero_shot import (
    EXAMPLE,
    MODEL_LINK,
    heldout,
    image_embeddings,
    link_minilm,
    prompts,
    text_embeddings,
    zero_shot_accuracy,
)
from nexusdsl.train.data import DIGIT_NAMES, caption_ids
from nexusdsl.weights.tokenizer import open_tokenizer

# Sentences of different lengths, so that padding, the mask and the pooling's shares count.
UNEVEN = ["a handwritten seven", "seven", "an untidy, slanted handwritten seven with a bar"]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The example as a fresh clone has it, with the link benchmarks/zero_shot.py makes."""
    folder = tmp_path_factory.mktemp("zero_shot")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    link_minilm(folder / MODEL_LINK.relative_to(EXAMPLE.parent))
    return folder / EXAMPLE.name


@pytest.fixture(scope="module")
def minilm(example) -> Path:
    return example.parent / MODEL_LINK.relative_to(EXAMPLE.parent)


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return open_tokenizer(str(minilm))


@pytest.fixture(scope="module")
def trained(example, tmp_path_factory):
    untrained = {k: v.clone() for k, v in nexusdsl.compile(example).state_dict().items()}
    result = nexusdsl.train(example, steps=3, batch=16, eval_batches=1,
                            out=tmp_path_factory.mktemp("run"))
    return untrained, result.model.eval()


def transformers_sentences(minilm, texts: list[str]) -> torch.Tensor:
    """sentence-transformers' pooling of all-MiniLM-L6-v2 done by hand over transformers'
    BertModel: the mean of the real tokens' last hidden states (before unit length)."""
    tokens = transformers.AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    batch = tokens(texts, padding=True, return_tensors="pt")
    bert = transformers.BertModel.from_pretrained(minilm, local_files_only=True).eval()
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_training_leaves_minilm_bit_for_bit_and_moves_the_image_tower(minilm, trained):
    untrained, model = trained
    published = load_file(minilm / "model.safetensors")
    del published["embeddings.position_ids"]  # the constant 0, 1, 2, ...: not a weight
    state = model.state_dict()
    frozen = {k: v for k, v in state.items() if k.startswith("minilm.") and k[7:] in published}
    assert len(frozen) == len(published)  # every tensor of the checkpoint, as its parameters
    for name, value in frozen.items():
        assert torch.equal(value, published[name[7:]]), name
    tower = [k for k in state if not k.startswith("minilm.")]
    assert tower and all(p.requires_grad for n, p in model.named_parameters()
                         if not n.startswith("minilm."))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("minilm."))
    assert any(not torch.equal(state[k], untrained[k]) for k in tower)  # it did train


def test_text_embeddings_are_minilm_sentence_embeddings(minilm, tokenizer, trained):
    _, model = trained
    want = transformers_sentences(minilm, prompts())
    got = text_embeddings(model, tokenizer)
    assert got.shape == (10, 384)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5

    rows = {k: torch.from_numpy(v) for k, v in caption_ids(UNEVEN, tokenizer).items()}
    assert not rows["caption_mask"].all()  # padded: the mask and the shares decide the mean
    with torch.no_grad():
        uneven = model(pixels=torch.zeros(len(UNEVEN), 1, 8, 8), **rows)["text_embedding"]
    want = transformers_sentences(minilm, UNEVEN)
    assert ((uneven - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_digit_captions_are_their_sentences_through_minilms_tokenizer(minilm, tokenizer):
    batch = {k: v[:30] for k, v in heldout(tokenizer).items()}
    reference = transformers.AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    for ids, mask, share, label in zip(batch["caption"], batch["caption_mask"],
                                       batch["caption_share"], batch["label"]):
        sentence = f"a handwritten {DIGIT_NAMES[label]}"
        assert ids[mask].tolist() == reference(sentence)["input_ids"]
        assert share.sum().item() == pytest.approx(len(share))  # a mean over T: real tokens'
    assert len(set(batch["label"].tolist())) > 5


def test_zero_shot_accuracy_agrees_with_brute_force(tokenizer, trained):
    _, model = trained
    batch = {k: v[:24] for k, v in heldout(tokenizer).items()}
    images = image_embeddings(model, batch).tolist()
    texts = text_embeddings(model, tokenizer).tolist()

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a)
                                                           * sum(y * y for y in b))

    hits = 0
    for image, label in zip(images, batch["label"].tolist()):
        scores = [cosine(image, text) for text in texts]
        hits += scores.index(max(scores)) == label
    got = zero_shot_accuracy(torch.tensor(images), torch.tensor(texts), batch["label"])
    assert got == pytest.approx(hits / len(images), abs=1e-9)

    # a case whose answer is known: each image its class's prompt embedding, shuffled
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    exact = torch.tensor(texts)[labels] * 2.5
    assert zero_shot_accuracy(exact, torch.tensor(texts), labels) == 1.0
    assert zero_shot_accuracy(exact, torch.tensor(texts), (labels + 1) % 10) == 0.0
