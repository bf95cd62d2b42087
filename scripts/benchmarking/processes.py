"""Process trees, listening ports and orphans of the stacks being measured."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time
from collections.abc import Callable

import psutil


def become_subreaper() -> None:
    """Orphans of a stack (e.g. after SIGTERM to its first process) get reparented to us, so
    they can be counted and killed instead of leaking to init."""
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def is_live(process: psutil.Process) -> bool:
    """Exists and is not a zombie."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_tree(root: int) -> list[int]:
    """The root and all its live descendants (empty when the root is gone or a zombie); a
    process that exits while the tree is walked is left out."""
    try:
        process = psutil.Process(root)
        members = [process, *process.children(recursive=True)] if is_live(process) else []
    except psutil.NoSuchProcess:
        return []
    return [member.pid for member in members if is_live(member)]


def alive(pids: list[int]) -> list[int]:
    """The pids that exist and are not zombies."""
    live = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if is_live(psutil.Process(pid)):
                live.append(pid)
    return live


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports (IPv4 or IPv6) in LISTEN state owned by any of the given processes."""
    ports: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            ports.update(
                connection.laddr.port
                for connection in psutil.Process(pid).net_connections(kind="tcp")
                if connection.status == psutil.CONN_LISTEN
            )
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
