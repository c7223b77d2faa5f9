"""The thread count chosen for training."""

import os

import torch

from nexusdsl.train import threads


def test_a_busy_machine_trains_on_one_thread(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 6.4)
    assert threads.choose(0, distributed=False) == (1, "the machine is busy (load 6.4 on 2 cores)")
    assert threads.choose(2, distributed=False) == (2, "as set")
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.3)
    assert threads.choose(0, distributed=False)[0] == torch.get_num_threads()
    assert threads.choose(0, distributed=True) == (torch.get_num_threads(), "as the launcher set")
