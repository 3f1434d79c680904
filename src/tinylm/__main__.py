"""`python -m tinylm ...` (also what `torchrun -m tinylm` runs)."""

import sys

from tinylm.cli import main

sys.exit(main())
