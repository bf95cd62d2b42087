"""scripts/benchmarking/memory.py: PSS of a whole process tree, and its sampled peak."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from scripts.benchmarking.memory import PeakSampler, tree_pss_mb
from tests.support.process_trees import Tree

HOLD_MB = 64
# Writes HOLD_MB of real pages (a zero-filled allocation would not be resident), says so,
# holds them for a while, frees them and sleeps on.
HOLDER = f"""\
import time
block = b"x" * ({HOLD_MB} * 1024 * 1024)
print("holding", flush=True)
time.sleep(1.0)
del block
print("freed", flush=True)
time.sleep(120)
"""


def test_the_tree_sums_every_live_member(tree: Tree) -> None:
    total, processes = tree_pss_mb(tree.parent)
    parent_alone = psutil.Process(tree.parent).memory_full_info().pss / 1024**2
    sleeper_alone = psutil.Process(tree.sleeper).memory_full_info().pss / 1024**2
    assert processes == 2  # the zombie is not counted
    assert total > parent_alone
    assert abs(total - (parent_alone + sleeper_alone)) < 2


def test_a_gone_tree_weighs_nothing(gone_pid: int) -> None:
    assert tree_pss_mb(gone_pid) == (0.0, 0)


def test_the_sampler_keeps_the_peak_after_memory_is_freed() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        with PeakSampler(holder.pid, interval=0.05) as sampler:
            assert holder.stdout.readline().strip() == "holding"
            assert holder.stdout.readline().strip() == "freed"
            time.sleep(0.2)
        assert sampler.peak >= HOLD_MB
        assert tree_pss_mb(holder.pid)[0] < HOLD_MB / 2
    finally:
        holder.kill()
        holder.wait()
