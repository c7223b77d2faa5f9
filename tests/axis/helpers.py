"""Shared helpers for the axis-wiring tests: compile a one-model `.nx` text, and read the
parameters of a single op node by their short names."""

from __future__ import annotations

import torch

import nexusdsl
from nexusdsl.compiler.summary import count_params


def program(body: str, inputs: str = "x: float[B, i=3, j=4, d=2]", name: str = "M"):
    """A model with one input and `y` as its output, around the statements in `body`."""
    text = f"model {name}() {{\n  input {inputs}\n{body}\n  output y = y\n}}\n"
    return nexusdsl.loads(text, "test.nx")


def compiled(body: str, inputs: str = "x: float[B, i=3, j=4, d=2]", dtype: str = "f64"):
    return nexusdsl.compile(program(body, inputs), dtype=dtype, seed=0)


def params_of(model, node: str = "mix") -> dict[str, torch.Tensor]:
    """{short name: parameter} of one node: `i.weight`, `weight`, ..."""
    prefix = node + "."
    return {k[len(prefix):]: v for k, v in model.named_parameters() if k.startswith(prefix)}


def param_count(body: str, inputs: str) -> int:
    return count_params(program(body, inputs).elaborate())["total"]


def error_text(body: str, inputs: str = "x: float[B, i=3, j=4, d=2]") -> str:
    try:
        program(body, inputs)
    except nexusdsl.NexusError as err:
        return str(err)
    raise AssertionError("no error")
