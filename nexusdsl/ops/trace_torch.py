"""Whether a compiler is tracing the model: the one test the torch code of every op uses to
choose static shapes and to skip host syncs and caches while torch.compile, torch.export (the
MLIR and IREE targets) or TorchScript records the forward pass."""

from __future__ import annotations

import torch


def tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.jit.is_tracing())
