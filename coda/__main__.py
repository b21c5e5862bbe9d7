"""`python -m coda <command>`: the same entry as the `coda` script (`torchrun ... -m coda train` trains data-parallel)."""
import sys

from .cli import main

sys.exit(main())
