"""Damaged and edited checkpoints: random structural edits of state.json (keys deleted,
replaced, retyped or renamed at any depth; values of the wrong JSON type; bytes that are not
UTF-8; truncation), random byte flips and truncations of the safetensors files, and a damaged
`latest` either load or give one clean error: never a traceback, and never run code.

Both readers are checked on every example: the Python loader (`checkpoint.load` and the
session `nexus eval` builds from it, `session.from_checkpoint`) and `nexus eval` itself,
through its real entry point in this process. Hostile edits point the stored objective at a
reward module whose import would leave a marker file, and put code where names go (the
pruned checkpoint's IR, hyperparameters): the marker must never appear.
"""

import json
import shutil
import struct
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nexusdsl
from nexusdsl.train import checkpoint as ckpt
from nexusdsl.train.prune import prune_checkpoint
from nexusdsl.train.session import from_checkpoint
from tests.train.models import TINY, write

PAYLOAD_MODULE = "nexus_fuzz_payload"
# Python that would leave the marker if anything ran it (the path is filled in per run).
CODE = "__import__('pathlib').Path({marker!r}).touch()"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two real checkpoints of the tiny model (trained, and pruned: it stores its IR), the
    marker's path, and a module on sys.path whose import or call creates the marker."""
    tmp = tmp_path_factory.mktemp("fuzz")
    path = write(tmp, TINY)
    nexusdsl.train(str(path), steps=2, batch=4, context=16, eval_batches=1, threads=1,
                   out=tmp / "plain")
    prune_checkpoint(nexusdsl.load(path), tmp / "plain", 0.5, True, tmp / "pruned", batches=1)
    marker = tmp / "code-ran"
    (tmp / "payload").mkdir()
    (tmp / "payload" / f"{PAYLOAD_MODULE}.py").write_text(
        f"{CODE.format(marker=str(marker))}\n"
        f"def reward(batch, actions):\n    {CODE.format(marker=str(marker))}\n    return 0\n")
    sys.path.insert(0, str(tmp / "payload"))
    try:
        yield {"file": path, "plain": tmp / "plain", "pruned": tmp / "pruned",
               "marker": marker, "scratch": tmp}
    finally:
        sys.path.remove(str(tmp / "payload"))


# ----------------------------------------------------------------------------- edits


def hostile_strings(marker: str) -> list[str]:
    code = CODE.format(marker=marker)
    return [code, f"x={code}", f"tokens={code}", f"{PAYLOAD_MODULE}:reward", "os:system",
            "../../../../etc/passwd", "\x00", "step-99999999", "é" * 3]


def json_values(marker: str):
    scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
               | st.sampled_from(hostile_strings(marker)))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@st.composite
def location(draw, state):
    """A path into the JSON tree, stopping at any depth (each level equally likely to stop),
    so edits reach the top-level keys as often as a byte of an RNG state."""
    path, here = [], state
    while isinstance(here, (dict, list)) and here and draw(st.integers(0, 3)) > 0:
        key = draw(st.sampled_from(sorted(here) if isinstance(here, dict) else range(len(here))))
        path.append(key)
        here = here[key]
    return path


def retyped(value):
    """The same content in another JSON type."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@st.composite
def state_edit(draw, state, marker):
    """One structural edit of a parsed state.json (changed in place)."""
    path = draw(location(state))
    kind = draw(st.sampled_from(["delete", "replace", "retype", "rename"]))
    if not path:
        if kind in ("replace", "retype"):
            return draw(json_values(marker)) if kind == "replace" else retyped(state)
        return state
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = draw(json_values(marker))
    elif kind == "retype":
        parent[key] = retyped(parent[key])
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6) | st.sampled_from(hostile_strings(marker)))] = \
            parent.pop(key)
    return state


def hostile_edit(draw, state, marker):
    """Edits aimed at running code: a reward entry point into the payload module, code as
    a node name of the stored IR or as a hyperparameter."""
    code = CODE.format(marker=marker)
    choice = draw(st.sampled_from(["reward", "reward-set", "ir-name", "hyper"]))
    if choice == "reward":
        state["config"]["objective"] = {"fn": "ppo", "args": [],
                                        "kwargs": {"reward": f"{PAYLOAD_MODULE}:reward"}}
    elif choice == "reward-set":
        state["config"]["reward"] = f"{PAYLOAD_MODULE}:reward"
    elif choice == "ir-name" and state.get("ir"):
        node = draw(st.sampled_from(state["ir"]["nodes"]))
        node["name"] = draw(st.sampled_from([f"tokens={code}", code, f"x; {code}"]))
    else:
        state["hyper"]["dim"] = code
        state["config"]["hyper"] = {"dim": code}
    return state


def raw_edit(draw, data: bytes) -> bytes:
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data)))]
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0


def tensor_edit(draw, data: bytes) -> bytes:
    """Flip bytes (half the time inside the 8-byte length or the JSON header) or truncate."""
    if not data:
        return data
    if draw(st.integers(0, 3)) == 0:
        return data[: draw(st.integers(0, len(data) - 1))]
    data = bytearray(data)
    header_end = max(min(8 + header_length(data), len(data)), 1)
    for _ in range(draw(st.integers(1, 4))):
        in_header = draw(st.booleans())
        at = draw(st.integers(0, header_end - 1) if in_header else st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def damaged(draw, world):
    """A copy of one of the checkpoints with one to three edits. Returns its run folder."""
    source = world[draw(st.sampled_from(["plain", "pruned"]))]
    run = Path(tempfile.mkdtemp(dir=world["scratch"]))
    shutil.copytree(source, run, dirs_exist_ok=True)
    step = run / ckpt.latest_name(run)
    marker = str(world["marker"])
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["state", "state", "state", "hostile", "state-bytes",
                                       "model", "optimizer", "latest"]))
        if target in ("state", "hostile"):
            try:
                state = json.loads((step / ckpt.STATE).read_text())
            except (ValueError, UnicodeDecodeError):
                continue  # an earlier raw edit broke it already
            if target == "hostile" and isinstance(state, dict) and isinstance(
                    state.get("config"), dict) and isinstance(state.get("hyper"), dict):
                state = hostile_edit(draw, state, marker)
            else:
                state = draw(state_edit(state, marker))
            (step / ckpt.STATE).write_text(json.dumps(state))
        elif target == "state-bytes":
            (step / ckpt.STATE).write_bytes(raw_edit(draw, (step / ckpt.STATE).read_bytes()))
        elif target == "latest":
            (run / ckpt.POINTER).write_bytes(draw(
                st.sampled_from([b"", b"\xff\xfe\n", b"../../etc\n", b"step-00000009\n",
                                 b"step-00000002/../..\n"]) | st.binary(max_size=12)))
        else:
            name = ckpt.MODEL if target == "model" else ckpt.OPTIMIZER
            (step / name).write_bytes(tensor_edit(draw, (step / name).read_bytes()))
    return run


# ----------------------------------------------------------------------------- readers


def python_loader(file: Path, run: Path) -> str | None:
    """None when the checkpoint loads (and a session builds from it); the error's one line
    otherwise. Anything but a NexusError propagates and fails the test."""
    try:
        ckpt.load(run)
        from_checkpoint(nexusdsl.load(file), None, run)
    except nexusdsl.NexusError as err:
        text = err.render()
        assert text.strip() and "Traceback" not in text
        return text
    return None


def nexus_eval(file: Path, run: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    from nexusdsl.cli import main

    monkeypatch.setattr(sys, "argv", ["nexus", "eval", str(file), "-c", str(run)])
    code, crash = 0, ""
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # what a real process would print as a traceback
        code, crash = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out, captured.err + crash


def check_both_readers(world, run, monkeypatch, capsys):
    loaded = python_loader(world["file"], run)
    code, out, err = nexus_eval(world["file"], run, monkeypatch, capsys)
    assert "Traceback" not in err, err
    if code == 0:
        assert out.startswith("step ") and "bpb" in out, out + err
    else:
        assert code == 1, (code, out, err)
        lines = err.strip().splitlines()
        # a checkpoint's damage has no source line: one `error:` line
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert (loaded is None) == (code == 0), (loaded, err)
    assert not world["marker"].exists(), "a checkpoint ran code"
    shutil.rmtree(run)


def test_the_undamaged_checkpoints_load(world, monkeypatch, capsys):
    for name in ("plain", "pruned"):
        run = world["scratch"] / f"copy-{name}"
        shutil.copytree(world[name], run)
        assert python_loader(world["file"], run) is None
        code, out, err = nexus_eval(world["file"], run, monkeypatch, capsys)
        assert code == 0 and out.startswith("step 2, ") and "bpb" in out, err


@pytest.mark.parametrize("pointer, message", [
    (b"\xff\xfe\n", "latest is damaged: it is not UTF-8 text"),
    (b"../../etc\n", "latest is damaged: it should name a step directory"),
    (b"step-00000009\n", "step-00000009 does not exist"),
])
def test_a_damaged_latest_pointer(world, monkeypatch, capsys, pointer, message):
    run = world["scratch"] / f"pointer-{len(pointer)}"
    shutil.copytree(world["plain"], run)
    (run / "latest").write_bytes(pointer)
    code, _, err = nexus_eval(world["file"], run, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and message in err, err


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_checkpoints_load_or_give_one_error(world, monkeypatch, capsys, data):
    run = data.draw(damaged(world))
    check_both_readers(world, run, monkeypatch, capsys)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_resuming_a_damaged_checkpoint_trains_on_or_gives_one_error(world, data):
    """`nexus train --resume` reads what eval does not: the optimizer state and the RNG."""
    run = data.draw(damaged(world))
    try:
        result = nexusdsl.train(str(world["file"]), steps=3, batch=4, context=16,
                                eval_batches=1, threads=1, out=run, resume=True)
    except nexusdsl.NexusError as err:
        assert err.render().strip() and "Traceback" not in err.render()
    else:
        assert result.steps == 3 and ckpt.latest_name(run) == "step-00000003"
    assert not world["marker"].exists(), "a checkpoint ran code"
    shutil.rmtree(run)
