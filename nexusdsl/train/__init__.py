"""Training `.nx` models: `nexusdsl.train(program_or_path, model=None, **settings)`.

`nexusdsl.train` is both this package and the function: the package's module object is
callable (importing a subpackage replaces the parent's attribute of the same name, so the
function defined in `nexusdsl/__init__.py` and this package must behave alike). Calling it
runs `nexusdsl.train.api.train`; see that function for the arguments. Importing this package
does not import torch.

Modules: config (the `train` section, checked), data, objectives, trainee (freeze, prompt
tuning), optim, session, loop, checkpoint, distributed, progress, generate, api.
"""

from __future__ import annotations

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from nexusdsl.train.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
