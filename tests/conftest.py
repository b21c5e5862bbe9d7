from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """Released checkpoint layouts and golden vectors computed with the authors' code (tests/data/compat/README.md)."""
    return DATA / "compat"
