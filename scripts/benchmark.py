#!/usr/bin/env python3
"""Benchmark our tracking-server entrypoint against the 2021 blog recipe, side by side
(docs/benchmark.md). The code is in the scripts/benchmarking package; ``--help`` lists the
options. ``python -m scripts.benchmarking`` runs the same."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts scripts/ on the path, not the repository the package lives in.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.benchmarking.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
