"""A small process tree to point process and memory readers at: a parent with a sleeping
child and a zombie one."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

# The parent starts a sleeping child and one that exits at once and is never waited for (a
# zombie), prints their pids, and sleeps until killed.
TREE_PARENT = """\
import subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
zombie = subprocess.Popen([sys.executable, "-c", "pass"])
print(sleeper.pid, zombie.pid, flush=True)
time.sleep(120)
"""


@dataclass
class Tree:
    parent: int
    sleeper: int
    zombie: int


@contextmanager
def running_tree() -> Iterator[Tree]:
    """The tree, once its short-lived child is a zombie; killed on the way out."""
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        sleeper, zombie = (int(pid) for pid in parent.stdout.readline().split())
        deadline = time.monotonic() + 10
        while psutil.Process(zombie).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the short-lived child never exited"
            time.sleep(0.02)
        yield Tree(parent.pid, sleeper, zombie)
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
