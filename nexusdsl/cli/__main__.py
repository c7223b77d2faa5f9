"""`python -m nexusdsl.cli` (torchrun uses it: `torchrun ... -m nexusdsl.cli train ...`)."""

from nexusdsl.cli import main

main()
