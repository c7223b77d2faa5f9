"""examples/mnn.nx: a 4096-byte context as a [16, 16, 16] grid of 64-wide tokens, then
knn-routed experts. It is causal (a next-byte model), and it learns on real text (the built-in
English corpus)."""

import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params

PATH = "examples/mnn.nx"


def test_the_context_becomes_a_16_cubed_grid_of_64_wide_tokens():
    graph = nexusdsl.load(PATH).elaborate()
    grids = [n for n in graph.nodes() if n.op == "layout" and "->" in n.attrs["pattern"]
             and n.outputs[0].rank == 5]
    assert grids and all(str(n.outputs[0]) == "f32[B, i=16, j=16, k=16, d=64]" for n in grids)
    mixes = [n for n in graph.nodes() if n.op == "mix"]
    assert len(mixes) == 4 and all(n.params["i.weight"].shape == (16, 16) for n in mixes)
    grid_layers = 87_872  # embedding, 4 x (conv, norms, 3 axis matrices, mlp), final norm
    experts = 8 * (64 * 128 + 128 + 128 * 64 + 64)  # mlp(mult = 2), widths match: no adapters
    router = 64 * 8 + 8 * 8  # tokens' coordinate projection, the experts' own coordinates
    assert count_params(graph)["total"] == grid_layers + experts + 64 + router  # + its rmsnorm
    moe = [n for n in graph.nodes() if n.op == "moe"]
    assert len(moe) == 1 and moe[0].attrs["router"]["fn"] == "knn"


def test_it_never_looks_ahead():
    model = nexusdsl.compile(PATH, depth=2)
    tokens = torch.randint(0, 256, (1, 4096))
    changed = tokens.clone()
    changed[:, 3000:] = torch.randint(0, 256, (1, 1096))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :3000], b[:, :3000])
    assert not torch.allclose(a[:, 3000:], b[:, 3000:])


def test_it_learns_on_real_text():
    result = nexusdsl.train(PATH, steps=25, batch=1, depth=2, eval_batches=2, seed=0)
    assert result.before["bpb"] > 7.5
    assert result.after["bpb"] < 6.0, result.after
