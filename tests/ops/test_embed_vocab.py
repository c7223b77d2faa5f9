"""embed(tokens, dim, vocab = V) on `int[B, T]` ids, as the families declare their tokens: a
table of V rows looked up as nn.Embedding does (a Llama's embed_tokens loads as it is), tied
heads, and the vocabulary checked against a modality's where the input has one."""

import pytest
import torch
from torch import nn

import nexusdsl

LM = """\
model LM(vocab = 50, dim = 16) {
  input tokens: int[B, T]
  x = embed(tokens, dim, vocab = vocab) as tok
  output logits = unembed(x, tie = tok)
}
"""


def test_int_ids_are_rows_of_a_table_of_vocab_rows_as_nn_embedding():
    model = nexusdsl.compile(nexusdsl.loads(LM, "lm.nx"), opt=0)
    reference = nn.Embedding(50, 16)
    with torch.no_grad():  # the tied head reads the same table
        model.get_parameter("tok.weight").copy_(reference.weight)
    tokens = torch.randint(0, 50, (3, 7))
    table = reference.weight.detach()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens) @ table.T)


def test_the_table_has_vocab_rows_initialised_as_a_modality_table():
    graph = nexusdsl.loads(LM, "lm.nx").elaborate("LM", vocab=1000)
    (node,) = [n for n in graph.nodes() if n.op == "embed"]
    spec = node.params["weight"]
    assert (spec.shape, spec.init, spec.std) == ((1000, 16), "normal", 0.02)
    assert node.attrs == {"dim": 16, "vocab": 1000, "kind": "ids", "options": None}
    assert node.outputs[0].dtype == "f32" and node.outputs[0].modality is None
    assert [a.name for a in node.outputs[0].axes] == ["B", "T", "dim"]


def test_a_modality_embedding_prints_and_hashes_as_before():
    text = "modality text = bytes(code = 0)\nmodel M {\n  input t: text[B, T]\n" \
           "  output y = embed(t, 8)\n}\n"
    graph = nexusdsl.loads(text, "m.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "embed"]
    assert node.attrs == {"dim": 8, "kind": "bytes", "options": None}


def test_a_vocab_equal_to_the_modalitys_is_accepted():
    text = "modality words = ids(vocab = 40, code = 0)\nmodel M {\n  input t: words[B, T]\n" \
           "  output y = embed(t, 8, vocab = 40)\n}\n"
    graph = nexusdsl.loads(text, "m.nx").elaborate()
    (node,) = [n for n in graph.nodes() if n.op == "embed"]
    assert node.params["weight"].shape == (40, 8)


@pytest.mark.parametrize("prelude,input_type,call,message", [
    ("", "int[B, T]", "embed(t, 8)",
     "embed: an int input has no modality to tell its vocabulary; give the table's rows: "
     "`embed(tokens, dim, vocab = 32000)`"),
    ("modality words = ids(vocab = 40, code = 0)", "words[B, T]", "embed(t, 8, vocab = 50)",
     "embed: vocab = 50, but modality words has a vocabulary of 40; leave vocab out, or make "
     "them agree"),
    ("modality text = bytes(code = 0)", "text[B, T]", "embed(t, 8, vocab = 300)",
     "embed: vocab = 300, but modality text has a vocabulary of 256"),
    ("modality image = patches(size = 2, channels = 1, code = 0)", "image[B, 1, 4, 4]",
     "embed(t, 8, vocab = 10)",
     "embed: `vocab` is the size of a table of ids, but modality image (patches) is "
     "continuous; leave it out"),
    ("", "float[B, T]", "embed(t, 8, vocab = 10)", "embed needs an input with a modality"),
    ("", "int[B, T]", "embed(t, 8, vocab = 0)", "`embed`: argument `vocab` should be greater "
                                                "than 0"),
])
def test_mistakes_are_located(prelude, input_type, call, message):
    text = f"{prelude}\nmodel M {{\n  input t: {input_type}\n  output y = {call}\n}}\n"
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.loads(text, "m.nx")
    (d,) = info.value.diagnostics
    assert d.message.startswith(message), d.message
    assert d.span.line == 4 and str(info.value).startswith("m.nx:4:")


def test_tie_shares_one_table_and_checks_it():
    text = """nexus 0.1
model M {
  input a: int[B, T]
  input b: int[B, S]
  x = embed(a, 8, vocab = 20) as tok
  output y = embed(b, 8, vocab = 20, tie = tok)
  output z = x
}
"""
    import nexusdsl

    m = nexusdsl.compile(nexusdsl.loads(text, "tie.nx"))
    assert len(list(m.parameters())) == 1
    b = torch.randint(0, 20, (2, 3))
    assert torch.equal(m(torch.zeros(2, 1, dtype=torch.long), b)["y"], m.tok.weight[b])
    with pytest.raises(nexusdsl.NexusError, match="tie.nx:6:.*has a table of \\[20, 8\\]"):
        nexusdsl.loads(text.replace("vocab = 20, tie", "vocab = 21, tie"), "tie.nx").elaborate()
