"""The prepare stage: image folders (paper scale) or the bundled photos (demo) to a prepared folder.

- ``folder``: ``prepare_folder`` (ImageNet-style folders); ``demo``: ``prepare_demo``.
- ``images``: a file to RGB or ``BadImage``; ``bad_images``: reasons, policy, the report.
- ``crops``: ``center_crop``, ``adm_crop``, ``train_crop``; ``photos``: the bundled photographs.
- ``layout``: the prepared folder's file names and writers; ``datasets``: torch Datasets over it.
"""

from .demo import prepare_demo
from .folder import prepare_folder

__all__ = ["prepare_demo", "prepare_folder"]
