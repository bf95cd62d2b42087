"""tests/resilience/helpers.py's process checks: group members, live pids, children and
command lines, zombies and gone processes included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.resilience.helpers import (
    children_of,
    command_line,
    group_members,
    live_pids,
    orphans_after_exit,
)
from tests.support.process_trees import gone_pid, running_tree


def test_live_pids_drop_zombies_and_gone_processes() -> None:
    gone = gone_pid()
    with running_tree() as tree:
        assert live_pids([tree.parent, tree.zombie, gone, tree.sleeper]) == [
            tree.parent,
            tree.sleeper,
        ]


def test_children_are_the_direct_ones_zombies_included() -> None:
    with running_tree() as tree:
        assert sorted(children_of(tree.parent)) == sorted([tree.sleeper, tree.zombie])
        assert children_of(tree.sleeper) == []
    assert children_of(gone_pid()) == []


def test_command_line_is_the_argv_joined() -> None:
    assert command_line(os.getpid()) == " ".join(psutil.Process().cmdline())
    assert command_line(gone_pid()) == ""


def test_group_members_are_the_live_processes_of_the_group() -> None:
    """A leader in its own group with a child: both listed by pid and command line; once both
    are gone, nothing is (an orphan would be)."""
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(['sleep', '60']);"
         " time.sleep(60)"],
        start_new_session=True,
    )  # fmt: skip
    try:
        members: list[str] = []
        deadline = time.monotonic() + 10
        while len(members) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            members = group_members(leader.pid)
        assert len(members) == 2, members
        assert any(member.startswith(f"{leader.pid}: {sys.executable} -c ") for member in members)
        assert any(member.endswith(": sleep 60") for member in members)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert orphans_after_exit(leader.pid, timeout=5) == []
