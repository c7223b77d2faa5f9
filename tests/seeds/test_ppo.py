"""`objective = ppo(...)`: the loss against the PPO formula written out, rollouts reused for
`epochs` steps, the KL anchor, rewards as callables or entry points (never evaluated text),
located mistakes, and a classifier that learns from rewards alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nexusdsl
from nexusdsl.elaborate.train_config import NO_SPAN, Call, build_config
from nexusdsl.train.data import digits_dataset
from nexusdsl.train.objective_table import make_objective
from nexusdsl.train.ppo import load_reward, match_label

SOURCE = """nexus 0.1
modality image = patches(size = 2, channels = 1, code = 1)
model Policy(dim = 16) {
  input pixels: image[B, 1, 8, 8]
  z = layout(embed(pixels, dim), "b n d -> b (n d)") |> gelu    # [B, 16 * dim]
  output logits = linear(z, 10)
  output value = linear(z, 1)
}
"""
DATA = digits_dataset()


def objective(model, **options):
    call = Call("ppo", {"reward": match_label, **options})
    return make_objective(call, NO_SPAN, model.graph, DATA)


def batch(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return DATA.train.sample(n, 1, gen), gen


def model(seed=0):
    return nexusdsl.compile(nexusdsl.loads(SOURCE, "policy.nx"), seed=seed)


def test_loss_is_the_clipped_surrogate_with_value_and_kl():
    m = model()
    obj = objective(m, clip=0.2, kl=0.1, vf=0.5, entropy=0.01, epochs=3)
    b, gen = batch()
    b = obj.prepare(b, gen)
    obj.loss(m, b)  # first step: rollout sampled, start weights kept
    r = obj.rollout
    with torch.no_grad():  # move the policy so that ratios leave [0.8, 1.2]
        m.linear.weight.add_(0.5 * torch.randn_like(m.linear.weight))
    got = obj.loss(m, b)
    assert obj.rollout is r  # the second step reuses the rollout
    out = m(b["image"])
    logp = F.log_softmax(out["logits"], -1)
    ratio = torch.exp(logp.gather(-1, r.actions[:, None])[:, 0] - r.logp)
    surrogate = torch.min(ratio * r.advantages, ratio.clamp(0.8, 1.2) * r.advantages)
    value = out["value"][:, 0]
    start = F.log_softmax(torch.func.functional_call(m, obj.start, (b["image"],))["logits"], -1)
    kl = (logp.exp() * (logp - start)).sum(-1).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    want = -surrogate.mean() + 0.5 * (value - r.rewards).square().mean() + 0.1 * kl \
        - 0.01 * entropy
    assert ratio.min() < 0.8 or ratio.max() > 1.2  # the clip is exercised
    assert torch.allclose(got, want, atol=1e-6)


def test_rollout_rewards_and_advantages():
    m = model()
    obj = objective(m)
    b, gen = batch(16)
    r = obj._sample(m, obj.prepare(b, gen))
    assert torch.equal(r.rewards, (r.actions == b["label"]).float())
    with torch.no_grad():
        value = m(b["image"])["value"][:, 0]
    adv = r.rewards - value
    assert torch.allclose(r.advantages, (adv - adv.mean()) / (adv.std() + 1e-8), atol=1e-6)


def test_a_rollout_serves_epochs_steps():
    m = model()
    obj = objective(m, epochs=2)
    seen = []
    for step in range(5):
        b, gen = batch(seed=step)
        obj.loss(m, obj.prepare(b, gen))
        seen.append(id(obj.rollout))
    assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4]


def test_kl_penalty_is_zero_until_the_policy_moves():
    m = model()
    obj = objective(m, kl=1.0, vf=0.0, entropy=0.0, epochs=1)
    b, gen = batch()
    b = obj.prepare(b, gen)
    first = obj.loss(m, b)
    free = objective(m, kl=0.0, vf=0.0, entropy=0.0, epochs=1)
    free.rollout = None
    assert torch.allclose(first, free._loss(m, obj.rollout), atol=1e-7)


def test_a_classifier_learns_from_rewards_alone():
    r = nexusdsl.train(nexusdsl.loads(SOURCE, "policy.nx"), data="digits", objective="ppo",
                       reward=match_label, steps=100, batch=32, lr=2e-2, eval_batches=4,
                       save_every=0)
    assert r.before["reward"] < 0.2 and r.after["reward"] > r.before["reward"] + 0.15, r.after


# ---------------------------------------------------------------------------- rewards


def test_rewards_are_callables_or_entry_points():
    assert load_reward(match_label) is match_label
    assert load_reward("nexusdsl.train.ppo:match_label") is match_label
    for bad, message in [("len(1)", "entry point"), ("os.path:nope", "has no nope"),
                         ("no_such_module_x:fn", "cannot import"),
                         ("nexusdsl.train.ppo:VALUE_HEAD", "not callable")]:
        with pytest.raises(ValueError, match=message):
            load_reward(bad)


def test_reward_flag_goes_into_the_ppo_objective():
    config = build_config({}, [], {"reward": "pkg.mod:fn", "objective": "ppo"})
    assert config.objective.kwargs == {"reward": "pkg.mod:fn"}
    with pytest.raises(nexusdsl.NexusError, match="reward is a setting of objective ppo"):
        build_config({}, [], {"reward": "pkg.mod:fn"})


def test_a_callable_reward_is_saved_as_its_entry_point():
    config = build_config({}, [], {"objective": "ppo", "reward": match_label})
    saved = config.to_json()["objective"]["kwargs"]["reward"]
    assert saved == "nexusdsl.train.ppo:match_label"


def located(train: str) -> str:
    src = SOURCE + f"train Policy {{\n  data = digits()\n  {train}\n}}\n"
    with pytest.raises(nexusdsl.NexusError) as err:
        nexusdsl.train(nexusdsl.loads(src, "policy.nx"), steps=1, save_every=0)
    return str(err.value)


@pytest.mark.parametrize("setting,message", [
    ('objective = ppo(reward = "no_such_module_x:fn")', "cannot import no_such_module_x"),
    ("objective = ppo", "needs a reward"),
    ('objective = ppo(reward = "os:getcwd", clip = 2)', "clip"),
])
def test_mistakes_are_located_at_the_objective(setting, message):
    text = located(setting)
    assert text.startswith("policy.nx:11:") and message in text, text


def test_ppo_needs_a_value_head():
    src = SOURCE.replace("  output value = linear(z, 1)\n", "")
    with pytest.raises(nexusdsl.NexusError, match="a value head named value"):
        nexusdsl.train(nexusdsl.loads(src, "p.nx"), data="digits", objective="ppo",
                       reward=match_label, steps=1, save_every=0)


def test_other_objectives_ignore_the_value_head():
    r = nexusdsl.train(nexusdsl.loads(SOURCE, "policy.nx"), data="digits",
                       objective="classify", steps=2, batch=4, eval_batches=1, save_every=0)
    assert "accuracy" in r.after
