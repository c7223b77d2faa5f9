"""`objective = ppo(reward, clip = 0.2, kl = 0.05, vf = 0.5, entropy = 0.0, epochs = 4,
head = "value")`: reinforcement-learning fine-tuning with proximal policy optimisation
(Schulman et al. 2017), as THANN's design fine-tunes its classifier.

The policy is the model's output of logits ([B, A]: one action per example, or [B, T, A]: one
per position); the value head is the model's output named `head` (`output value =
linear(z, 1)`: [B, 1] or [B], [B, T, 1] or [B, T]). The other objectives ignore an output named
`value`, so one model serves contrastive pretraining, classification and PPO.

A rollout samples actions from the current policy (no gradient), asks the reward for them, and
keeps their log-probabilities and advantages `reward - value` (normalised over the rollout).
Each rollout serves `epochs` consecutive optimizer steps, so from its second step on the policy
has moved and the clipped ratio matters. The loss is

    -mean(min(r A, clip(r, 1 - clip, 1 + clip) A)) + vf * mean((V - reward)^2)
      + kl * mean(KL(pi || pi_start)) - entropy * mean(H(pi))

with r = pi(a) / pi_rollout(a) and pi_start the policy as the run started (its weights are kept
when the first step runs: a resumed run anchors the penalty where it resumes).

The reward is Python, never text from the file evaluated: a callable given to
`nexusdsl.train(..., reward=fn)`, or an entry point `"package.module:function"` named in the
train section or on the command line (`--set reward=nexusdsl.train.ppo:match_label`), imported
with importlib. A checkpoint records the entry point for its reader but never chooses what is
imported: `nexus eval` takes the reward from the file (train/session.py). It is called as
`reward(batch, actions)` with the batch's tensors (`label`, `bytes`, `image`, ...) and the
sampled actions, and returns rewards shaped like the actions (or [B]: one reward per example,
shared by its positions).
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nexusdsl.train.objectives import Objective, first_output

VALUE_HEAD = "value"
DEFAULTS = {"clip": 0.2, "kl": 0.05, "vf": 0.5, "entropy": 0.0, "epochs": 4, "head": VALUE_HEAD}


def match_label(batch: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
    """A reward for classifiers: 1 when the action is the example's label, else 0."""
    return (actions == batch["label"].view(-1, *([1] * (actions.dim() - 1)))).float()


def entry_point(fn: Any) -> str:
    """How a reward is written in a checkpoint: its entry point `module:qualified name`."""
    return fn if isinstance(fn, str) else f"{fn.__module__}:{fn.__qualname__}"


class RewardError(ValueError):
    pass


def load_reward(spec: Any):
    """A callable, or the callable an entry point `package.module:function` names."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise RewardError(f"reward must be a Python callable or an entry point "
                          f"\"package.module:function\", got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        with _without_script_folder():
            target = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardError(f"reward {spec}: cannot import {module_name} ({err})") from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise RewardError(f"reward {spec}: {module_name} has no {attr}")
    if not callable(target):
        raise RewardError(f"reward {spec} is not callable")
    return target


@contextmanager
def _without_script_folder():
    """Import as the `nexus` command does. `python -m nexusdsl.cli` (and torchrun, which runs
    it so) puts the working directory first on sys.path, where the `nexus` script puts its own
    folder: a file there named like the reward's module would be run. That first entry is left
    out while the reward is imported; a folder the user puts on PYTHONPATH stays."""
    first = sys.path[0] if sys.path else None
    implicit = (first is not None and not sys.flags.safe_path
                and os.path.abspath(first or os.curdir) == os.getcwd())
    if implicit:
        del sys.path[0]
    try:
        yield
    finally:
        if implicit:
            sys.path.insert(0, first)


@dataclass
class Rollout:
    batch: dict[str, torch.Tensor]
    actions: torch.Tensor  # (B[, T])
    logp: torch.Tensor  # log-probabilities of the actions under the sampling policy
    rewards: torch.Tensor  # shaped like actions
    advantages: torch.Tensor


class Ppo(Objective):
    """See the module docstring."""

    unit = "ex"

    def check(self):
        self.settings = {**DEFAULTS, **{k: v for k, v in self.options.items() if k != "reward"}}
        if "reward" not in self.options:
            self.fail("needs a reward: `ppo(reward = \"package.module:function\")`, "
                      "--set reward=package.module:function, or reward=callable from Python")
        try:
            self.reward = load_reward(self.options["reward"])
        except RewardError as err:
            self.fail(str(err))
        self.policy, self.value = self._heads()
        self.rollout: Rollout | None = None
        self.uses = 0
        self.start: dict[str, torch.Tensor] | None = None

    def _heads(self):
        head = self.settings["head"]
        value = next((o for o in self.outputs if o.name == head), None)
        others = [o for o in self.outputs if o.name != head]
        if value is None or len(others) != 1:
            self.fail(f"needs two outputs, the policy's logits and a value head named {head} "
                      f"(e.g. `output {head} = linear(z, 1)`); {self._signature()}")
        policy = others[0]
        lead = policy.type.sizes[:-1]
        sizes = value.type.sizes
        if policy.type.rank < 2 or sizes not in (lead, (*lead, 1)):
            self.fail(f"the value head {value} must have the policy's shape without its last "
                      f"axis (optionally with a last axis of 1); the policy is {policy}")
        return policy, value

    # -- running ------------------------------------------------------------------------
    def prepare(self, batch, gen):
        """One sampling seed per example, consecutive: a process's (or a micro-batch's) slice
        of the batch starts with its own, and one process samples as before from the first."""
        seed = torch.randint(0, 2**62, (1,), generator=gen)
        rows = next(iter(batch.values())).shape[0]
        return {**batch, "ppo_seed": seed + torch.arange(rows)}

    def _forward(self, model, batch):
        out = model(*self.feed(batch))
        logits = first_output(out, self.policy.name).float()
        value = out[self.value.name].float().reshape(logits.shape[:-1])
        return logits, value

    def _rewards(self, batch, actions):
        given = self.reward(batch, actions)
        try:  # the reward is the user's code: what it returns is checked like their input
            rewards = torch.as_tensor(given, dtype=torch.float32, device=actions.device)
        except (TypeError, ValueError, RuntimeError):
            self.fail(f"the reward returned {type(given).__name__}, not numbers: it must "
                      f"return rewards shaped like the actions {tuple(actions.shape)} (or "
                      f"one per example)")
        if rewards.shape == actions.shape[:1] and actions.dim() > 1:
            rewards = rewards.view(-1, *([1] * (actions.dim() - 1))).expand_as(actions)
        if rewards.shape != actions.shape:
            self.fail(f"the reward gave shape {tuple(rewards.shape)} for actions of shape "
                      f"{tuple(actions.shape)}")
        return rewards

    def _sample(self, model, batch) -> Rollout:
        with torch.no_grad():
            logits, value = self._forward(model, batch)
            gen = torch.Generator().manual_seed(int(batch["ppo_seed"][0]))
            probs = F.softmax(logits, dim=-1).flatten(0, -2).cpu()
            actions = torch.multinomial(probs, 1, generator=gen).view(logits.shape[:-1])
            actions = actions.to(logits.device)
            logp = F.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            rewards = self._rewards(batch, actions)
            adv = rewards - value
            if adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return Rollout(batch, actions, logp, rewards, adv)

    def _anchor(self, model) -> None:
        """Keep the starting policy's weights (for the KL penalty) when training starts."""
        if self.start is None:
            net = getattr(model, "module", model)
            self.start = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def _start_logits(self, model, batch) -> torch.Tensor:
        net = getattr(model, "module", model)
        with torch.no_grad():
            out = torch.func.functional_call(net, self.start, tuple(self.feed(batch)))
        return first_output(out, self.policy.name).float()

    def loss(self, model, batch):
        if not torch.is_grad_enabled():  # a check run (no training step): no rollout kept
            return self._loss(model, self._sample(model, batch))
        self._anchor(model)
        if self.rollout is None or self.uses >= int(self.settings["epochs"]):
            self.rollout, self.uses = self._sample(model, batch), 0
        self.uses += 1
        return self._loss(model, self.rollout)

    def _loss(self, model, r: Rollout):
        s = self.settings
        logits, value = self._forward(model, r.batch)
        logp_all = F.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, r.actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - r.logp)
        clipped = ratio.clamp(1 - s["clip"], 1 + s["clip"])
        policy = -torch.min(ratio * r.advantages, clipped * r.advantages).mean()
        total = policy + s["vf"] * (value - r.rewards).square().mean()
        probs = logp_all.exp()
        if s["kl"] and self.start is not None:
            start = F.log_softmax(self._start_logits(model, r.batch), dim=-1)
            total = total + s["kl"] * (probs * (logp_all - start)).sum(-1).mean()
        if s["entropy"]:
            total = total - s["entropy"] * -(probs * logp_all).sum(-1).mean()
        return total

    def count(self, batch):
        return self.feed(batch)[0].shape[0]

    def eval_sums(self, model, batch):
        """Held-out: the mean reward of the greedy actions and of sampled ones."""
        logits, _ = self._forward(model, batch)
        greedy = self._rewards(batch, logits.argmax(-1))
        sampled = self._sample(model, batch).rewards
        n = greedy.numel()
        return {"reward": greedy.sum().item(), "sampled": sampled.sum().item(), "count": n}

    def summarize(self, sums):
        n = max(sums["count"], 1)
        reward = sums["reward"] / n
        return {"loss": -reward, "reward": reward, "sampled_reward": sums["sampled"] / n}
