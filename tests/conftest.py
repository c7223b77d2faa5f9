import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nx"))
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Paths in diagnostics are printed as given: tests give them relative to the repo root."""
    monkeypatch.chdir(ROOT)


def check_golden(path: Path, actual: str) -> None:
    """Compare with a golden file; `UPDATE_GOLDEN=1 pytest` rewrites them after a reviewed change."""
    if UPDATE_GOLDEN or not path.exists():
        path.write_text(actual)
    assert actual == path.read_text(), f"{path.name} differs from its golden file"
