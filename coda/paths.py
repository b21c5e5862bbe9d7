"""Where coda keeps files it derives once and reuses (converted weights, ...)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CODA_CACHE if set, else ~/.cache/coda. Not created here; writers create what they need."""
    configured = os.environ.get("CODA_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "coda"
