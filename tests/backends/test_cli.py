"""`nexus compile --emit mlir-* / --target iree-*` and `nexus run`, as a user runs them.

Most run the typer app in-process (a fresh interpreter costs seconds of imports); one runs
the real `python -m nexusdsl.cli`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import nexusdsl
from nexusdsl.cli import app
from tests.backends.cases import ROOT

CONV = "examples/conv_lm.nx"  # small and quick to compile


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def nexus(*args) -> Run:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen
    return Run(result.exit_code, result.stdout, result.stderr)


def test_python_m_nexusdsl_cli_has_the_run_command():
    run = subprocess.run([sys.executable, "-m", "nexusdsl.cli", "run", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "--backend" in run.stdout and "iree-cpu" in run.stdout


def test_emit_linalg_writes_mlir_with_the_chosen_shapes(tmp_path):
    out = tmp_path / "conv.mlir"
    run = nexus("compile", CONV, "--set", "depth=1", "--emit", "mlir-linalg", "--size", "B=2",
                "--size", "T=12", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "inputs tokens: i64[2, 12]" in run.stdout
    text = out.read_text()
    assert "linalg.generic" in text and "torch.aten" not in text
    assert "tensor<2x12xi64>" in text


def test_emit_stablehlo_to_stdout_with_a_dynamic_batch():
    run = nexus("compile", CONV, "--set", "depth=1", "--emit", "mlir-stablehlo", "--dynamic",
                "B")
    assert run.returncode == 0, run.stderr
    assert "stablehlo." in run.stdout and "tensor<?x16xi64>" in run.stdout
    assert "Warning" not in run.stderr, run.stderr


def test_target_iree_cuda_writes_a_vmfb_and_says_it_is_sm_80(tmp_path):
    out = tmp_path / "conv.vmfb"
    run = nexus("compile", CONV, "--set", "depth=1", "--target", "iree-cuda", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 10_000
    assert "IREE cuda for sm_80" in run.stdout
    assert "sm_80 is the default" in run.stdout
    if not torch.cuda.is_available():
        assert "compiled only: this machine has no CUDA device" in run.stdout


def test_run_iree_cpu_on_given_inputs_matches_eager(tmp_path):
    x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    save_file({"tokens": x}, str(tmp_path / "in.safetensors"))
    run = nexus("run", CONV, "--set", "depth=1", "--backend", "iree-cpu", "--inputs",
                str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "out.safetensors"),
                "--check", "--seed", "3")
    assert run.returncode == 0, run.stderr
    assert "logits: (2, 9, 256)" in run.stdout and "(ok, tolerance 0.0001)" in run.stdout
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    model = nexusdsl.compile(CONV, depth=1, seed=3).eval()
    with torch.no_grad():
        want = model(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_run_with_torch_compile_backend_checks_against_eager(tmp_path):
    # Inductor generates C++ for real here: a small model keeps that quick.
    (tmp_path / "small.nx").write_text("nexus 0.1\nmodel S() {\n  input x: float[B, 8]\n"
                                       "  output y = linear(x, 4) |> gelu\n}\n")
    run = nexus("run", str(tmp_path / "small.nx"), "--backend", "compile", "--size", "B=3",
                "--check", "--repeat", "1")
    assert run.returncode == 0, run.stderr
    assert "y: (3, 4)" in run.stdout and "ok, tolerance" in run.stdout


@pytest.mark.parametrize("args,message", [
    (["compile", CONV, "--target", "iree-cpu"], "error: --target iree-cpu writes a vmfb: give -o"),
    (["compile", CONV, "--emit", "mlir-torch", "--size", "C=3"],
     "error: no input of model ConvLM has a symbolic axis C (its symbolic axes: B, T)"),
    (["compile", CONV, "--emit", "mlir-torch", "--size", "T=0"],
     "error: --size T=0: a size is a positive integer"),
    (["compile", CONV, "--target", "iree-cpu", "--via", "mlir-tosa", "-o", "x.vmfb"],
     "error: IREE 3.13 cannot parse torch-mlir's TOSA output"),
    (["compile", CONV, "--target", "tpu"], "error: unknown target tpu"),
    (["run", CONV, "--inputs", "missing.safetensors"], "error: cannot read inputs from"),
])
def test_backend_mistakes_are_one_error_line(args, message):
    run = nexus(*args)
    assert run.returncode == 1
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_run_rejects_inputs_of_the_wrong_shape(tmp_path):
    save_file({"pixels": torch.zeros(2, 1, 7, 8)}, str(tmp_path / "in.safetensors"))
    run = nexus("run", "examples/digits.nx", "--inputs", str(tmp_path / "in.safetensors"))
    assert run.returncode == 1
    assert ("error: input `pixels` in " in run.stderr
            and "has shape (2, 1, 7, 8), but the model declares image[B, 1, 8, 8]" in run.stderr)


def test_run_on_cuda_needs_a_gpu():
    run = nexus("run", CONV, "--set", "depth=1", "--device", "cuda", "--repeat", "1")
    if torch.cuda.is_available():
        assert run.returncode == 0, run.stderr
    else:
        assert run.returncode == 1
        assert "error: --device cuda was asked for, but no CUDA device is available" in run.stderr
