"""The op registry: importing this package registers every builtin op in `REGISTRY`.

Torch is imported only inside the ops' `lower` methods, so checking a file never imports it.
"""

from nexusdsl.ops import (  # noqa: F401
    activations,
    axis,
    core,
    fused,
    hyena,
    mixers,
    mnn,
    modality,
    recur,
    routing,
    swarm,
    tokenize,
)
from nexusdsl.ops.base import REGISTRY, InferContext, Op, OpAttrs, OpError, get_op

__all__ = ["REGISTRY", "InferContext", "Op", "OpAttrs", "OpError", "get_op"]
