"""`python -m hyperlight`: the `hyperlight` command (see `hyperlight.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
