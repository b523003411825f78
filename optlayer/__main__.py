"""``python -m optlayer``: the same command line as ``optlayer``."""

import sys

from optlayer.cli import main

sys.exit(main())
