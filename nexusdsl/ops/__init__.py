"""The op registry: importing this package registers every builtin op in `REGISTRY`.

Every module of the package is imported here, so an op is registered by adding its file (an
`Op` subclass that sets `name` registers itself): no list of ops to keep in step. Modules named
`*_torch` hold torch code for the lowerings and are imported only by them, so checking a file
never imports torch; modules whose name starts with `_` are not op modules.
"""

import importlib
import pkgutil

from nexusdsl.ops.base import REGISTRY, InferContext, Op, OpAttrs, OpError, get_op


def import_op_modules() -> None:
    """Import every op module of the package (those already imported are left as they are)."""
    for module in pkgutil.iter_modules(__path__):
        if not (module.name.endswith("_torch") or module.name.startswith("_")):
            importlib.import_module(f"{__name__}.{module.name}")


import_op_modules()

__all__ = ["REGISTRY", "InferContext", "Op", "OpAttrs", "OpError", "get_op"]
