"""Objectives against hand-written references, and models that do not fit them."""

import math

import numpy as np
import pytest
import torch

import nexusdsl
from nexusdsl.elaborate.train_config import Call
from nexusdsl.train.data import open_data
from nexusdsl.train.objective_table import make_objective
from nexusdsl.train.objectives import info_nce
from tests.train.models import FAST, PAIRED, TINY, write


def objective(text, fn, data=Call("default", {}), **kwargs):
    module = nexusdsl.compile(nexusdsl.loads(text, "t.nx"))
    return module, make_objective(Call(fn, kwargs), None, module.graph, open_data(data))


def log_softmax_ref(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def test_next_token_is_cross_entropy_of_the_following_byte():
    module, obj = objective(TINY, "next_token")
    module.eval()
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = module(x[:, :-1]).numpy()
        got = obj.eval_sums(module, {"bytes": x})
    ref = -sum(log_softmax_ref(logits[b, t])[x[b, t + 1]] for b in range(2) for t in range(8))
    assert got["count"] == 16 and got["loss"] == pytest.approx(ref, rel=1e-5)
    assert obj.summarize(got)["bpb"] == pytest.approx(ref / 16 / math.log(2), rel=1e-5)


def test_denoise_corrupts_the_asked_fraction_and_scores_only_those():
    module, obj = objective(TINY, "denoise", mask=0.25, noise=0.1)
    module.eval()
    x = torch.randint(1, 256, (64, 64), generator=torch.Generator().manual_seed(1))
    batch = obj.prepare({"bytes": x}, torch.Generator().manual_seed(2))
    corrupt = batch["corrupt"]
    assert (batch["input"] == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert corrupt.float().mean().item() == pytest.approx(0.35, abs=0.02)
    assert torch.equal(batch["input"][~corrupt], x[~corrupt])  # the rest is untouched
    small = {k: v[:2, :8] for k, v in batch.items()}
    with torch.no_grad():
        logits = module(small["input"]).numpy()
        got = obj.eval_sums(module, small)
    picks = [(b, t) for b in range(2) for t in range(8) if small["corrupt"][b, t]]
    ref = -sum(log_softmax_ref(logits[b, t])[small["bytes"][b, t]] for b, t in picks)
    assert got["count"] == len(picks) and got["loss"] == pytest.approx(ref, rel=1e-5)


def test_info_nce_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    an = a.numpy() / np.linalg.norm(a.numpy(), axis=1, keepdims=True)
    bn = b.numpy() / np.linalg.norm(b.numpy(), axis=1, keepdims=True)
    sim = an @ bn.T / 0.1
    rows = -np.mean([log_softmax_ref(sim[i])[i] for i in range(5)])
    cols = -np.mean([log_softmax_ref(sim[:, i])[i] for i in range(5)])
    assert info_nce(a, b, 0.1).item() == pytest.approx((rows + cols) / 2, rel=1e-5)


def test_classify_learns_the_digits():
    r = nexusdsl.train("examples/digits.nx", data="digits", objective="classify", steps=150,
                       batch=64, lr=1e-2, eval_batches=4, dim=32, depth=1)
    # chance is 0.1; a linear classifier on raw pixels gets about 0.95 with enough steps
    assert r.before["accuracy"] < 0.3 and r.after["accuracy"] > 0.6, (r.before, r.after)


def test_contrastive_pairs_digits_with_their_names(tmp_path):
    path = write(tmp_path, PAIRED)
    r = nexusdsl.train(str(path), data="digits", objective="contrastive", steps=150, batch=32,
                       lr=1e-2, eval_batches=4)
    # retrieval: an image picks its own caption or one of its class; chance is about 0.13
    assert r.after["loss"] < r.before["loss"] - 0.3
    assert r.before["retrieval_accuracy"] < 0.2 and r.after["retrieval_accuracy"] > 0.3, r.after


def test_contrastive_views_of_one_output():
    r = nexusdsl.train(nexusdsl.loads(TINY, "t.nx"), objective="contrastive", steps=3, **FAST)
    assert r.steps == 3 and set(r.after) == {"loss", "retrieval_accuracy"}


@pytest.mark.parametrize("text, fn, data, message", [
    ("examples/digits.nx", "next_token", "default",
     "has nothing to feed input pixels: image[B, 1, 8, 8]"),
    ("examples/digits.nx", "next_token", "digits", "needs a model with one token input"),
    (TINY, "classify", "default", "needs labelled data"),
    ("examples/captioner.nx", "denoise", "default", "has nothing to feed input pixels"),
    (PAIRED, "classify", "digits", "needs a model with one output"),
])
def test_models_that_do_not_fit_the_objective(text, fn, data, message):
    if text.endswith(".nx"):
        text = open(text).read()
    with pytest.raises(nexusdsl.NexusError) as info:
        objective(text, fn, Call(data, {}))
    assert message in info.value.diagnostics[0].message
