"""``python -m llamahome``: the same command line as the ``llamahome`` console script."""

from __future__ import annotations

import sys

from llamahome.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
