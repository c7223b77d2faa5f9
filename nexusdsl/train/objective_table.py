"""The objectives a `train` section can name, and the one that builds them.

Kept apart from `objectives.py` so that PPO (`ppo.py`), which builds on the `Objective` base
class, and the supervised objectives are imported by this table, not by each other."""

from __future__ import annotations

from nexusdsl.elaborate.train_config import Call
from nexusdsl.ir.graph import Graph
from nexusdsl.lang.diagnostics import Span
from nexusdsl.train.data import Dataset
from nexusdsl.train.objectives import (
    Classify,
    Contrastive,
    Denoise,
    NextToken,
    Objective,
    defaulted,
    ports,
)
from nexusdsl.train.ppo import Ppo

OBJECTIVES: dict[str, type[Objective]] = {
    "next_token": NextToken, "denoise": Denoise, "classify": Classify,
    "contrastive": Contrastive, "ppo": Ppo}


def make_objective(call: Call, span: Span, graph: Graph, data: Dataset) -> Objective:
    inputs, outputs = ports(graph)
    if call.fn != "ppo" and len(outputs) > 1:  # PPO's value head is for PPO only (train/ppo.py)
        outputs = [o for o in outputs if o.name != "value"]
    return OBJECTIVES[call.fn](call, span, graph.name, inputs, outputs, data,
                               defaulted(graph))
