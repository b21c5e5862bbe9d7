"""The prepare stage: image folders (paper scale) or the bundled photos (demo) to a prepared folder."""

from .demo import prepare_demo
from .folder import prepare_folder

__all__ = ["prepare_demo", "prepare_folder"]
