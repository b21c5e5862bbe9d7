import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data folder (sibling of the repository); CODA_SHARED overrides it."""
    return Path(os.environ.get("CODA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
