"""The passes price their choices for the device the model will run on (PassOptions.device):
a decision that one CPU core makes one way flips on a GPU where the GPU's balance says it
should, the device kind is read from the GPU's name, and a measured decision for a device this
process cannot reach falls back to the cost model and says so."""

from __future__ import annotations

import pytest

from nexusdsl.compiler.passes.axis_fusion import AxisFusion
from nexusdsl.compiler.passes.base import PassOptions
from nexusdsl.compiler.passes.cost import DEVICE_PROFILES, device_kind, machine_for
from nexusdsl.compiler.passes.sparsity_pruning import SparsityPruning
from nexusdsl.compiler.pipeline import options_for
from nexusdsl.ops.axis import Mix, axial_costs
from tests.passes.helpers import graph_of, run, source

# A small grid (3 x 3) over many columns (64 x 1024): the dense Kronecker matrix reads and
# writes the activations once instead of once per axis, but takes about twenty kernels (the
# Kronecker products and their backward) where the products take two.
SHAPE = (1, 3, 3, 1024, 64)
TEXT = source("  output y = mix(x, axes = [i, j])", "x: float[B, i=3, j=3, T, d=64]")


def strategy(device: str) -> str:
    after = run(graph_of(TEXT), AxisFusion, options=PassOptions(context=1024, device=device))
    (node,) = [n for n in after.nodes() if n.op == "axial_mix"]
    return node.attrs["strategy"]


def roofline(flops: float, nbytes: float, kernels: float, device: str) -> float:
    """Seconds on a device's data-sheet limits, written out: launches + compute + traffic."""
    m = DEVICE_PROFILES[device]
    return kernels * m.launch + flops / m.flops + nbytes / m.bandwidth


def test_axial_strategy_flips_from_fewer_bytes_on_a_cpu_to_fewer_kernels_on_a_gpu():
    mix = Mix.Attrs(axes=[1, 2], to=[3, 3], order="parallel", share=["axis", "axis"],
                    bias=False)
    costs = axial_costs(SHAPE, mix)
    dense, products = costs["dense"], costs["products"]
    assert dense.bytes < products.bytes and dense.kernels > 5 * products.kernels
    for device in ("cpu", "a100"):  # what each device's limits say, by hand
        t_dense = roofline(dense.flops, dense.bytes, dense.kernels, device)
        t_products = roofline(products.flops, products.bytes, products.kernels, device)
        want = "dense" if t_dense < t_products else "products"
        assert want == ("dense" if device == "cpu" else "products")
    assert strategy("cpu") == "dense"
    p = AxisFusion(PassOptions(context=1024, device="cuda"))
    p(graph_of(TEXT))
    gpu_ms = roofline(products.flops, products.bytes, products.kernels, "a100") * 1e3
    assert f"products {products}".rsplit(", ~", 1)[0] + f", ~{gpu_ms:,.3g} ms" in p.notes[0]
    assert strategy("cuda") == "products"  # no GPU visible: the default GPU, an A100
    assert strategy("cuda:1") == "products"


@pytest.mark.parametrize("name,kind", [("NVIDIA A100-SXM4-80GB", "a100"),
                                       ("NVIDIA H100 80GB HBM3", "h100"),
                                       ("Tesla T4", "t4"), ("Tesla V100-SXM2-16GB", "v100"),
                                       ("NVIDIA L4", "l4"), ("NVIDIA A10", "a10"),
                                       ("NVIDIA GeForce RTX 4090", "a100")])
def test_the_device_kind_is_read_from_the_gpu_name(name, kind):
    assert device_kind("cuda:0", name) == kind
    assert machine_for("cuda", name) is DEVICE_PROFILES[kind]
    assert device_kind("cpu", name) == "cpu"


def test_every_gpu_profile_does_more_work_per_launch_than_the_cpu():
    cpu = DEVICE_PROFILES["cpu"]
    for kind, m in DEVICE_PROFILES.items():
        if kind != "cpu":
            assert m.flops * m.launch > 100 * cpu.flops * cpu.launch, kind
            assert m.bandwidth > 10 * cpu.bandwidth, kind


def test_nexus_compile_hands_its_device_to_the_passes():
    assert options_for("torch", device="cuda:0").device == "cuda:0"
    assert PassOptions().device == "cpu"


def test_a_measured_choice_for_an_unreachable_gpu_is_priced_and_says_so():
    text = source("  output y = mix(x, axes = [i, j], wiring = random(density = 0.1, seed = 3))",
                  "x: float[B, i=8, j=6, d=3]")
    p = SparsityPruning(PassOptions(measure=True, device="cuda"))
    p(graph_of(text))
    (note,) = p.notes
    assert "priced for cuda (not measured: no such device here)" in note
    here = SparsityPruning(PassOptions(measure=True))
    here(graph_of(text))
    assert "measured csr" in here.notes[0] and here.notes[0].endswith(" ms on cpu)")
