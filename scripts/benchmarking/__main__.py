"""``python -m scripts.benchmarking``: the same as ``python scripts/benchmark.py``."""

from __future__ import annotations

import sys

from scripts.benchmarking.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
