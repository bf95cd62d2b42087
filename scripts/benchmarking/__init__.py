"""The parts of scripts/benchmark.py: our tracking-server image against the 2021 blog recipe,
side by side on this machine (docs/benchmark.md).

- ``cli``: options and the run (``main``), one stack after the other.
- ``measure``: everything measured for one stack (start, memory, load, stop).
- ``stacks``: how each contender is launched and stopped (ours and the recipe).
- ``load``: the log-metric load generator and its statistics, and the MLflow-client mix.
- ``memory``: PSS of a process tree, once or sampled for its peak.
- ``processes``: process trees, listening ports, reaping orphans.
- ``database``: the shared PostgreSQL and the latency proxy in front of it.
- ``machine``: facts about the machine the report names.
- ``report``: the results, written as JSON and as a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The image's runtime package, imported the way image/entrypoint.py does, so the report names
# the defaults and the hash it measured.
if str(REPO / "image") not in sys.path:
    sys.path.insert(0, str(REPO / "image"))
