"""scripts/benchmarking/processes.py: process trees without zombies, live pids, and the
ports a set of processes listens on."""

from __future__ import annotations

import os
import socket

from scripts.benchmarking.processes import alive, listening_ports, process_tree
from tests.support.process_trees import Tree


def test_the_tree_holds_the_root_and_its_live_children_not_zombies(tree: Tree) -> None:
    assert sorted(process_tree(tree.parent)) == sorted([tree.parent, tree.sleeper])
    assert process_tree(tree.sleeper) == [tree.sleeper]


def test_a_gone_or_zombie_root_has_no_tree(tree: Tree, gone_pid: int) -> None:
    assert process_tree(gone_pid) == []
    assert process_tree(tree.zombie) == []


def test_alive_drops_zombies_and_gone_processes(tree: Tree, gone_pid: int) -> None:
    pids = [tree.parent, tree.zombie, gone_pid, tree.sleeper]
    assert alive(pids) == [tree.parent, tree.sleeper]


def test_listening_ports_are_the_listeners_only() -> None:
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as listener6:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener6.bind(("::1", 0))
        listener6.listen()
        with socket.create_connection(listener.getsockname()) as client:
            ports = listening_ports([os.getpid()])
            assert listener.getsockname()[1] in ports
            assert listener6.getsockname()[1] in ports
            assert client.getsockname()[1] not in ports  # connected, not listening


def test_listening_ports_of_gone_processes_are_none(gone_pid: int) -> None:
    assert listening_ports([gone_pid]) == set()
