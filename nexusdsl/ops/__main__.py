"""`python -m nexusdsl.ops -o docs/ops.md`: write the op reference (ops/reference.py); without
`-o`, print it."""

from __future__ import annotations

import argparse
from pathlib import Path

from nexusdsl.ops.reference import reference


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m nexusdsl.ops", description=__doc__)
    parser.add_argument("-o", "--output", type=Path, help="write the page here")
    args = parser.parse_args()
    text = reference()
    if args.output is None:
        print(text, end="")
    else:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
