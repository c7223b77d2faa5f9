"""Hostile input: a checkpoint whose stored IR names a node with Python code, a checkpoint
whose stored objective names a module to import as the reward, a reward module planted in the
working directory, and imports that reach files outside the project (environment variables,
secrets). Nothing runs, nothing secret is printed, and each is one error with exit status 1.

A payload would `touch` a marker file; every test asserts the marker never appears. Imports
run with a secret in the environment (and in files), which must never reach the output, also
through the language server.
"""

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path

import nexusdsl
from nexusdsl.ir.graph import Graph
from tests.conftest import ROOT, Run

SECRET = "hunter2-3f9c81d7"
LOCATED = re.compile(r"^(\S+):(\d+):(\d+): error: (.*)$", re.M)

BYTES_MODEL = """modality text = bytes(code = 0)

model Tiny(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + linear(relu(linear(x, 32)), dim)
  output logits = unembed(x, tie = tok)
}
"""
POLICY = """nexus 0.1
modality image = patches(size = 2, channels = 1, code = 1)
model Policy(dim = 8) {
  input pixels: image[B, 1, 8, 8]
  z = layout(embed(pixels, dim), "b n d -> b (n d)") |> gelu
  output logits = linear(z, 10)
  output value = linear(z, 1)
}
"""
POLICY_TRAIN = """train Policy {
  data = digits()
  objective = ppo(REWARD)
  batch = 4; steps = 1; eval_batches = 1; threads = 1
}
"""


def process(*args, cwd: Path = ROOT) -> Run:
    """`python -m nexusdsl.cli ARGS...` in `cwd`, with a secret in its environment."""
    env = {**os.environ, "NEXUS_TEST_SECRET": SECRET}
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=300)
    return Run(run.returncode, run.stdout, run.stderr)


def one_error(run: Run, message: str) -> None:
    """Exit 1, no traceback, one `error: ...` line saying `message`."""
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.err


def payload_module(folder: Path, marker: Path) -> None:
    """payload.py: importing it touches `marker` (as would any code a checkpoint could run)."""
    (folder / "payload.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                                       "def fn(batch, actions):\n    return actions * 0\n")


def edit_state(step: Path, change) -> None:
    state = json.loads((step / "state.json").read_text())
    change(state)
    (step / "state.json").write_text(json.dumps(state))


def hash_like_the_loader(ir: dict) -> str:
    """The graph hash an attacker recomputes for an edited IR (sha256 of its canonical JSON
    without source positions), so that only the name check stands in the way."""
    def strip(graph):
        nodes = []
        for node in graph["nodes"]:
            node = {k: v for k, v in node.items() if k != "span"}
            if "regions" in node:
                node["regions"] = [strip(r) for r in node["regions"]]
            nodes.append(node)
        return {**graph, "nodes": nodes}

    blob = json.dumps(strip(ir), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- stored IR


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A byte model trained two steps and pruned: its checkpoint stores the IR."""
    folder = tmp_path_factory.mktemp("pruned")
    source = folder / "lm.nx"
    source.write_text(BYTES_MODEL)
    nexusdsl.train(source, steps=2, batch=2, context=16, eval_batches=1, threads=1,
                   out=folder / "run")
    from nexusdsl.cli import main

    argv = sys.argv
    sys.argv = ["nexus", "prune", str(source), "-c", str(folder / "run"), "--amount", "0.5",
                "--structured", "--batches", "1", "--out", str(folder / "pruned")]
    try:
        main()
    except SystemExit as stop:
        assert not stop.code
    finally:
        sys.argv = argv
    step = next((folder / "pruned").glob("step-*"))
    assert "ir" in json.loads((step / "state.json").read_text())
    return source, folder / "pruned"


CODE_NAMES = [
    ("input", "name", "tokens=__import__('os').system('touch {marker}')"),
    ("linear", "name", "linear\")+__import__('os').system('touch {marker}')#"),
    ("linear_1", "shares", "linear\");__import__('os').system('touch {marker}');(\""),
]


@pytest.mark.parametrize("node,field,name", CODE_NAMES, ids=["argument", "attribute", "shares"])
@pytest.mark.parametrize("command", ["eval", "generate", "prune"])
def test_a_stored_node_name_never_runs(nexus, pruned, tmp_path, node, field, name, command):
    source, run = pruned
    copy = tmp_path / "ckpt"
    shutil.copytree(run, copy)
    marker = tmp_path / "MARKER"
    step = next(copy.glob("step-*"))

    def inject(state):
        target = next(n for n in state["ir"]["nodes"] if n["name"] == node or n["op"] == node)
        target[field] = name.format(marker=marker)
        state["graph_hash"] = hash_like_the_loader(state["ir"])

    edit_state(step, inject)
    extra = ["--out", tmp_path / "again"] if command == "prune" else []
    result = nexus(command, source, "-c", copy, *extra)
    assert not marker.exists(), "the stored name ran as code"
    one_error(result, f"checkpoint {step}")


def test_lowering_refuses_a_name_that_is_not_an_identifier_path(tmp_path):
    """Defense in depth: a node renamed around the IR's validator is refused where torch.fx
    would write it into code."""
    from nexusdsl.compiler.lower.fx import lower

    marker = tmp_path / "MARKER"
    graph = nexusdsl.loads(BYTES_MODEL, "lm.nx").elaborate()
    for node_name, bad in (("tokens", f"tokens=__import__('os').system('touch {marker}')"),
                           ("linear", f"x\"); __import__('os').system('touch {marker}'); (\"")):
        copy = Graph.from_json(graph.to_json())
        node = copy.by_name(node_name)
        copy.replace(node, node.model_copy(update={"name": bad}))  # model_copy: no validation
        with pytest.raises(nexusdsl.NexusError, match="is not identifiers joined by dots"):
            lower(copy)
        assert not marker.exists()


def test_reading_stored_ir_validates_names():
    graph = nexusdsl.loads(BYTES_MODEL, "lm.nx").elaborate()
    data = graph.to_dict()
    assert Graph.from_dict(data).content_hash() == graph.content_hash()  # real names pass
    for bad in ("a b", "x=1", "", "blocks..0", "0.blocks", "a.b-c", "tok\n"):
        data["nodes"][1]["name"] = bad
        with pytest.raises(ValueError, match="a node name is identifiers joined by dots"):
            Graph.from_dict(data)


# ----------------------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory):
    """A PPO run of a small policy whose train section names its reward."""
    folder = tmp_path_factory.mktemp("ppo")
    source = folder / "policy.nx"
    source.write_text(POLICY + POLICY_TRAIN.replace("REWARD", 'reward = "nexusdsl.train.ppo:'
                                                             'match_label"'))
    nexusdsl.train(source, out=folder / "run")
    return source, folder / "run"


def test_a_checkpoint_cannot_choose_the_reward_module(policy_run, tmp_path):
    """state.json names payload:fn as the reward and payload.py lies in the working directory:
    `python -m nexusdsl.cli eval` uses the reward of the file's train section instead, and
    with none there it is one error."""
    source, run = policy_run
    marker = tmp_path / "MARKER"
    payload_module(tmp_path, marker)
    shutil.copytree(run, tmp_path / "run")
    step = next((tmp_path / "run").glob("step-*"))
    assert json.loads((step / "state.json").read_text())["config"]["objective"]["kwargs"] == {
        "reward": "nexusdsl.train.ppo:match_label"}

    def plant(state):
        state["config"]["objective"]["kwargs"]["reward"] = "payload:fn"

    edit_state(step, plant)
    with_reward = process("eval", source, "-c", tmp_path / "run", cwd=tmp_path)
    assert with_reward.code == 0 and "reward" in with_reward.out, with_reward.err
    assert not marker.exists(), "the checkpoint's reward module was imported"

    bare = tmp_path / "bare.nx"
    bare.write_text(POLICY)  # the same model, no train section: no reward anywhere but there
    one_error(process("eval", bare, "-c", tmp_path / "run", cwd=tmp_path), "needs a reward")
    assert not marker.exists(), "the checkpoint's reward module was imported"


def test_python_m_does_not_import_a_reward_from_the_working_directory(tmp_path):
    marker = tmp_path / "MARKER"
    payload_module(tmp_path, marker)
    source = tmp_path / "policy.nx"
    source.write_text(POLICY + POLICY_TRAIN.replace("REWARD", 'reward = "payload:fn"'))
    run = process("train", source, "--out", tmp_path / "out", "-q", cwd=tmp_path)
    assert not marker.exists(), "a module of the working directory was imported"
    assert run.code == 1 and "Traceback" not in run.err, run.err
    errors = LOCATED.findall(run.err)
    assert [e[:3] for e in errors] == [(str(source), "11", "3")], run.err
    assert "cannot import payload" in errors[0][3]


# ----------------------------------------------------------------------------- imports


@pytest.fixture
def project(tmp_path):
    """project/ with main.nx's model, a secret file beside it, and one outside the folder
    (a `.nx` file whose first word is the secret: any echo of it would show)."""
    folder = tmp_path / "project"
    (folder / "lib").mkdir(parents=True)
    (folder / "secret.txt").write_text(f"{SECRET} is the password\n")
    (tmp_path / "outside.nx").write_text(f"{SECRET} = 1\n")
    (folder / "link.nx").symlink_to(tmp_path / "outside.nx")
    (folder / "lib" / "blocks.nx").write_text("block twice(x: [*, d]) -> [*, d] {\n"
                                              "  return x + x\n}\n")
    return folder


MAIN = 'IMPORT\nmodel M {\n  input x: float[B, 4]\n  output y = x\n}\n'
REFUSED = [
    ('import "/proc/self/environ" as e', "only .nx files can be imported"),
    ('import "secret.txt" as s', "only .nx files can be imported"),
    ('import "../outside.nx" as o', "an import names a file in this file's folder or below it"),
    ('import "OUTSIDE" as o', "an import names a file in this file's folder or below it"),
    ('import "lib/../../outside.nx" as o', "in this file's folder or below it"),
    ('import "link.nx" as o', "it is a link to a file outside this file's folder"),
]


@pytest.mark.parametrize("line,message", REFUSED,
                         ids=["environ", "txt", "dotdot", "absolute", "escaping", "symlink"])
def test_an_import_outside_the_project_is_refused_without_its_content(project, line, message):
    main = project / "main.nx"
    main.write_text(MAIN.replace("IMPORT", line.replace("OUTSIDE", str(project.parent /
                                                                       "outside.nx"))))
    run = process("check", main)
    assert SECRET not in run.out + run.err
    assert run.code == 1 and "Traceback" not in run.err, run.err
    errors = LOCATED.findall(run.err)
    assert len(errors) == 1 and errors[0][:3] == (str(main), "1", "1"), run.err
    assert message in errors[0][3], run.err


def test_imports_inside_the_folder_still_work(project):
    main = project / "main.nx"
    for path in ("lib/blocks.nx", "lib/../lib/blocks.nx", "./lib/blocks.nx"):
        main.write_text(MAIN.replace("IMPORT", f'import "{path}" as b')
                        .replace("= x\n", "= b.twice(x)\n"))
        graph = nexusdsl.load(main).elaborate()
        assert [n.op for n in graph.nodes()] == ["input", "add"]


async def _lsp_diagnostics(path: Path, text: str) -> list[types.Diagnostic]:
    """The diagnostics the language server publishes for `text` opened as `path`."""
    client = LanguageClient("nexus-test", "0")
    published: asyncio.Queue = asyncio.Queue()

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params):
        published.put_nowait(params)

    await client.start_io(sys.executable, "-m", "nexusdsl.cli", "lsp", cwd=str(ROOT))
    try:
        await asyncio.wait_for(client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(path.parent)))),
            60)
        client.initialized(types.InitializedParams())
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=from_fs_path(str(path)), language_id="nx",
                                                 version=1, text=text)))
        params = await asyncio.wait_for(published.get(), 60)
        await asyncio.wait_for(client.shutdown_async(None), 60)
        client.exit(None)
    finally:
        await asyncio.wait_for(client.stop(), 60)
    return list(params.diagnostics)


def test_the_language_server_does_not_echo_imported_secrets(project, monkeypatch):
    monkeypatch.setenv("NEXUS_TEST_SECRET", SECRET)  # the server inherits this environment
    main = project / "main.nx"
    text = MAIN.replace("IMPORT", 'import "/proc/self/environ" as e\nimport "secret.txt" as s\n'
                                  'import "../outside.nx" as o')
    main.write_text(text)
    diagnostics = asyncio.run(_lsp_diagnostics(main, text))
    shown = [d.message for d in diagnostics]
    shown += [r.message for d in diagnostics for r in d.related_information or ()]
    assert not any(SECRET in m for m in shown), shown
    assert [d.message.split(": ", 1)[1] for d in diagnostics] == [
        "only .nx files can be imported", "only .nx files can be imported",
        f"an import names a file in this file's folder or below it ({project.resolve()}), "
        "relative to the folder"], shown


def test_python_m_imports_nothing_from_the_working_directory(tmp_path):
    """`python -m nexusdsl.cli` puts the working directory first on sys.path; a module there
    named like one torch imports must not be run when a command loads torch."""
    marker = tmp_path / "ran"
    (tmp_path / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                       "raise SystemExit('shadowing numpy was imported')\n")
    run = process("compile", str(ROOT / "examples" / "tiny_lm.nx"), cwd=tmp_path)
    assert run.code == 0, run.err
    assert not marker.exists()
