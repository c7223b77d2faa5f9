"""`python -m nexusdsl.cli` (torchrun uses it: `torchrun ... -m nexusdsl.cli train ...`)."""

import os
import sys

# `python -m` puts the working directory first on the import path, so a stray `numpy.py` or
# `torch.py` there would be imported instead of the real one when a command loads torch. The
# command needs nothing from that folder (nexusdsl itself is already imported by now).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from nexusdsl.cli import main  # noqa: E402

main()
