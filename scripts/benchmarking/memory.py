"""PSS of a stack's whole process tree: once, or sampled in the background for its peak."""

from __future__ import annotations

import contextlib
import threading

import psutil

from scripts.benchmarking.processes import process_tree

MB = 1024 * 1024


def tree_pss_mb(root: int) -> tuple[float, int]:
    """PSS summed over every live process of the tree, in MiB, and the number of processes
    (one gone or unreadable while it is read counts 0 MiB)."""
    tree = process_tree(root)
    total = 0
    for pid in tree:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_full_info().pss
    return total / MB, len(tree)


class PeakSampler:
    """Samples the tree's PSS every `interval` seconds in a background thread, and once more
    on the way out; keeps the maximum."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, tree_pss_mb(self.root)[0])

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, tree_pss_mb(self.root)[0])
