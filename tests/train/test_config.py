"""The `train` section: fields checked and located, flags overriding the file."""

import pytest

import nexusdsl
from nexusdsl.elaborate.train_config import TrainConfig
from nexusdsl.train.session import configure
from tests.train.models import TINY

SECTION = """
train Tiny {
  data = text("corpus.txt")
  objective = denoise(mask = 0.2)
  optimizer = adamw(lr = 3e-4, weight_decay = 0.05)
  schedule = cosine(warmup = 7, final = 0.2)
  batch = 4; context = 16; steps = 30
  freeze = [tok]
  dim = 48
}
"""


def config_of(text, **overrides):
    program = nexusdsl.loads(text, "t.nx")
    return configure(program, None, overrides)


def test_section_fields_become_the_config():
    c = config_of(TINY + SECTION)
    assert (c.data.fn, c.data.kwargs) == ("text", {"path": "corpus.txt"})
    assert (c.objective.fn, c.objective.kwargs) == ("denoise", {"mask": 0.2})
    assert c.optimizer.kwargs == {"lr": 3e-4, "weight_decay": 0.05}
    assert c.schedule.kwargs == {"warmup": 7, "final": 0.2}
    assert (c.batch, c.context, c.steps, c.freeze) == (4, 16, 30, ["tok"])
    assert c.hyper == {"dim": 48}  # a model hyperparameter set by the section


def test_flags_override_the_file():
    c = config_of(TINY + SECTION, steps=5, lr=0.01, data="other.txt", dim=64, objective="next_token")
    assert c.steps == 5 and c.optimizer.kwargs == {"lr": 0.01, "weight_decay": 0.05}
    assert c.data.kwargs == {"path": "other.txt"} and c.hyper == {"dim": 64}
    assert c.objective.fn == "next_token"


def test_defaults_without_a_section():
    c = config_of(TINY)
    assert (c.data.fn, c.objective.fn, c.optimizer.fn, c.schedule.fn) == (
        "default", "next_token", "adamw", "cosine")


def test_config_json_round_trip():
    c = config_of(TINY + SECTION)
    again = TrainConfig.from_json(c.to_json())
    assert again.to_json() == c.to_json()


@pytest.mark.parametrize("field, message", [
    ("optimizer = adamw(lr = -1)", "train setting `optimizer`: `adamw(lr = ...)` must be a "
     "positive number, got -1"),
    ("optimizer = adamw(momentum = 0.9)", "`adamw` has no option `momentum`"),
    ("objective = predict", "unknown objective `predict` (choose one of next_token, denoise, "
     "contrastive, classify, ppo)"),
    ("steps = 2.5", "steps must be a whole number >= 1, got 2.5"),
    ("epochs = 3", "unknown training setting `epochs`"),
    ("data = text()", "`text` needs a path"),
    ("freeze = [1]", "freeze lists node names"),
])
def test_mistakes_are_located_at_the_field(field, message):
    text = TINY + "\ntrain Tiny {\n  batch = 4\n  " + field + "\n}\n"
    line = text.splitlines().index("  " + field) + 1
    with pytest.raises(nexusdsl.NexusError) as info:
        config_of(text)
    rendered = info.value.render()
    assert rendered.startswith(f"t.nx:{line}:3: error: "), rendered
    assert message in rendered
    assert field in rendered  # the source line is shown


def test_every_field_mistake_is_reported_by_check(tmp_path):
    path = tmp_path / "t.nx"
    path.write_text(TINY + "\ntrain Tiny { objective = next_tokens; batch = -1 }\n")
    line = TINY.count("\n") + 2
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load(path)  # what `nexus check` runs: no data, no torch
    rendered = info.value.render()
    assert f"t.nx:{line}:14: error: train setting `objective`: unknown objective `next_tokens`" \
        in rendered
    assert f"t.nx:{line}:39: error: train setting `batch`: batch must be a whole number >= 1, " \
        "got -1" in rendered


def test_freezing_a_node_the_model_lacks_is_reported_by_check(tmp_path):
    path = tmp_path / "t.nx"
    path.write_text(TINY + '\ntrain Tiny { freeze = [tok, "attention.qkv", atention] }\n')
    line = TINY.count("\n") + 2
    with pytest.raises(nexusdsl.NexusError) as info:
        nexusdsl.load(path)
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (line, 14)
    assert d.message.startswith("freeze: Tiny has no node `atention` (nodes with parameters: ")
    assert "attention, mlp" in d.message
    path.write_text(TINY + '\ntrain Tiny { freeze = [tok, "attention.qkv"] }\n')
    nexusdsl.load(path)  # a part of a node is fine


def test_flag_mistakes_are_one_line():
    with pytest.raises(nexusdsl.NexusError) as info:
        config_of(TINY, steps=0)
    (d,) = info.value.diagnostics
    assert d.span.line == 0 and d.message == "--steps: steps must be a whole number >= 1, got 0"


def test_check_reports_a_missing_data_file_next_to_the_nx_file(tmp_path):
    path = tmp_path / "t.nx"
    path.write_text(TINY + '\ntrain Tiny {\n  data = text("corpus.txt")\n}\n')
    program = nexusdsl.load(path)  # loading does not need the data: it may live elsewhere
    with pytest.raises(nexusdsl.NexusError) as info:
        program.check_data_paths()  # `nexus check` asks
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (TINY.count("\n") + 3, 3)
    assert d.message == f"data path {tmp_path / 'corpus.txt'} does not exist"
    (tmp_path / "corpus.txt").write_text("some text")
    program.check_data_paths()
