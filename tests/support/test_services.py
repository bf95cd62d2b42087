"""tests/support/services.py's process readers (the services themselves are exercised by every
integration test): a process tree, zombies and all, and its PSS."""

from __future__ import annotations

import psutil

from tests.support.process_trees import gone_pid, running_tree
from tests.support.services import descendants, tree_pss_mb


def test_descendants_are_the_root_first_then_every_child_zombies_included() -> None:
    with running_tree() as tree:
        found = descendants(tree.parent)
        assert found[0] == tree.parent
        assert sorted(found[1:]) == sorted([tree.sleeper, tree.zombie])
        assert descendants(tree.sleeper) == [tree.sleeper]


def test_a_gone_root_is_still_listed_alone() -> None:
    pid = gone_pid()
    assert descendants(pid) == [pid]
    assert tree_pss_mb(pid) == 0.0


def test_tree_pss_sums_the_members() -> None:
    with running_tree() as tree:
        total = tree_pss_mb(tree.parent)
        members = [psutil.Process(pid) for pid in (tree.parent, tree.sleeper)]
        alone = [member.memory_full_info().pss / 1024**2 for member in members]
    assert total > max(alone)
    assert abs(total - sum(alone)) < 2  # the zombie holds no memory
