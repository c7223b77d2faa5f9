"""The op registry: importing this package registers every builtin op in `REGISTRY`.

Torch is imported only inside the ops' `lower` methods, so checking a file never imports it.
"""

from nexusdsl.ops import activations, axis, core, mixers, mnn, modality, recur, routing  # noqa: F401
from nexusdsl.ops import hyena  # noqa: F401  (the seeds' operators)
from nexusdsl.ops.base import REGISTRY, InferContext, Op, OpAttrs, OpError, get_op

__all__ = ["REGISTRY", "InferContext", "Op", "OpAttrs", "OpError", "get_op"]
