"""Fixtures of the benchmark's tests: a small process tree, and a pid that is gone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import process_trees as trees


@pytest.fixture
def tree() -> Iterator[trees.Tree]:
    with trees.running_tree() as running:
        yield running


@pytest.fixture
def gone_pid() -> int:
    return trees.gone_pid()
