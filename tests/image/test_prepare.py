"""What prepare chooses before anything starts."""

from __future__ import annotations

import pytest


def test_free_loopback_ports_are_distinct_and_never_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker gets its own port, and none is $PORT, even when the kernel offers it."""
    from types import SimpleNamespace

    from mlflow_heroku_runtime import prepare

    offered = iter([5000, 41000, 41001, 41002])

    class FakeSocket:
        def __init__(self) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def bind(self, _address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(prepare, "socket", SimpleNamespace(socket=FakeSocket))
    assert prepare.free_loopback_ports(3, avoid=5000) == [41000, 41001, 41002]
    monkeypatch.undo()
    real = prepare.free_loopback_ports(16, avoid=5000)
    assert len(set(real)) == 16
    assert 5000 not in real
