"""``python -m regbench``: see :mod:`regbench.cli`."""

import sys

from .cli import main

sys.exit(main())
