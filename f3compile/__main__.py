"""`python -m f3compile` (and `torchrun … -m f3compile`): the command line."""

import sys

from .cli import main

sys.exit(main())
