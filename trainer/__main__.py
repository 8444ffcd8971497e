"""`python -m trainer ...` is `genretagger train ...` (same options, same exit codes)."""

from __future__ import annotations

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    main()
