"""Data: byte streams read through memory maps, splits, digits, labelled folders."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from nexusdsl.elaborate.train_config import Call
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.data import DIGIT_NAMES, default_corpus, open_data
from tests.conftest import ROOT


def text(path):
    return open_data(Call("text", {"path": str(path)}))


def test_default_corpus_is_cpythons_documentation_split_90_10():
    from pydoc_data.topics import topics

    raw = default_corpus().tobytes()
    assert raw == "\n\n".join(topics[k] for k in sorted(topics)).encode()
    assert len(raw) > 400_000 and b"assert" in raw
    data = open_data(Call("default", {}))
    assert len(data.train) + len(data.heldout) == len(raw)
    assert len(data.heldout) == int(len(raw) * 0.1)
    tail = data.heldout.windows([0], 50)[0]
    assert bytes(tail.tolist()) == raw[len(data.train): len(data.train) + 50]


def test_folder_is_one_stream_and_windows_cross_files(tmp_path):
    parts = [b"alpha " * 30, b"", b"beta " * 40, b"gamma " * 20]
    for i, part in enumerate(parts):
        (tmp_path / f"{i}.txt").write_bytes(part)
    (tmp_path / ".hidden").write_bytes(b"never")
    whole = b"".join(parts)
    data = text(tmp_path)
    assert len(data.train) + len(data.heldout) == len(whole)
    starts = list(range(0, len(data.train) - 64, 17))
    got = data.train.windows(starts, 64)
    expected = np.stack([np.frombuffer(whole[s: s + 64], np.uint8) for s in starts])
    assert torch.equal(got, torch.from_numpy(expected.astype(np.int64)))


def test_samples_depend_only_on_the_generator(tmp_path):
    (tmp_path / "a.txt").write_bytes(bytes(range(256)) * 20)
    data = text(tmp_path / "a.txt")
    a = data.train.sample(4, 9, torch.Generator().manual_seed(3))["bytes"]
    b = data.train.sample(4, 9, torch.Generator().manual_seed(3))["bytes"]
    assert torch.equal(a, b)
    # consecutive bytes of the file: every row counts up by one (mod 256)
    assert torch.equal((a[:, 1:] - a[:, :-1]) % 256, torch.ones(4, 8, dtype=torch.int64))


def test_eval_windows_cover_the_heldout_part_once(tmp_path):
    raw = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    (tmp_path / "r.bin").write_bytes(raw)
    data = text(tmp_path / "r.bin")
    rows = torch.cat([b["bytes"] for b in data.heldout.eval_batches(3, 11, 1000)])
    targets = b"".join(bytes(r[1:].tolist()) for r in rows)  # next-token targets
    held = raw[len(data.train):]
    assert targets == held[1: 1 + len(targets)] and len(held) - 1 - len(targets) < 10


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "empty.txt").write_bytes(b"") and None or p / "empty.txt", "is empty"),
    (lambda p: (p / "d").mkdir() or p / "d", "holds no files"),
])
def test_unreadable_data_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(NexusError) as info:
        text(make(tmp_path))
    assert message in info.value.diagnostics[0].message


def test_digits_are_real_scans_with_every_class_held_out():
    from sklearn.datasets import load_digits

    data = open_data(Call("digits", {}))
    assert len(data.train) + len(data.heldout) == 1797
    batch = next(data.heldout.eval_batches(len(data.heldout), 0, 1))
    assert batch["image"].shape == (len(data.heldout), 1, 8, 8)
    assert set(batch["label"].tolist()) == set(range(10))
    reference = load_digits()
    first = batch["image"][0, 0].numpy() * 16
    label = int(batch["label"][0])
    matches = [i for i in range(1797) if np.array_equal(reference.images[i], first)]
    assert matches and all(reference.target[i] == label for i in matches)
    names = [bytes(c.tolist()).decode().strip() for c in batch["caption"][:5]]
    assert names == [DIGIT_NAMES[i] for i in batch["label"][:5].tolist()]


def test_labelled_folder(tmp_path):
    for cls, word in (("neg", b"bad awful "), ("pos", b"good great ")):
        (tmp_path / cls).mkdir()
        for i in range(10):
            (tmp_path / cls / f"{i}.txt").write_bytes(word * (i + 1))
    data = open_data(Call("folder", {"path": str(tmp_path)}))
    assert data.classes == 2 and len(data.train) == 18 and len(data.heldout) == 2
    batch = next(data.heldout.eval_batches(2, 12, 1))
    assert batch["label"].tolist() == [0, 1]
    assert bytes(batch["bytes"][1].tolist()) == (b"good great " * 10)[:12]


def test_a_file_larger_than_memory_trains(tmp_path):
    """A sparse file bigger than this machine's RAM: training reads only the windows it
    samples, so the process stays small."""
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.write(b"The quick brown fox jumps over the lazy dog. " * 100)
        f.truncate(ram + (1 << 30))  # sparse: no disk blocks for the zeros
        f.seek(ram)
        f.write(b"held-out text " * 100)
    code = ("import resource, nexusdsl; from tests.train.models import TINY; "
            f"open({str(tmp_path / 'm.nx')!r}, 'w').write(TINY); "
            f"r = nexusdsl.train({str(tmp_path / 'm.nx')!r}, data={str(big)!r}, steps=2, batch=4, "
            "context=16, eval_batches=1); "
            "print(r.steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    steps, max_rss_kb = map(int, run.stdout.split())
    # The file is RAM + 1 GiB: reading it whole could not stay under a quarter of RAM. (A
    # tighter 2 GiB cap held at about 0.5 GB in isolation, but one full-suite run peaked at
    # 2.7 GB, unexplained so far; the bound kept is the property this test names.)
    assert steps == 2 and max_rss_kb * 1024 < ram // 4
