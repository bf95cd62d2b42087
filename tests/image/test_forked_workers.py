"""gunicorn's hooks: one worker per port."""

from __future__ import annotations

import pytest


def test_each_forked_worker_takes_a_free_slot_and_serves_only_its_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gunicorn's pre_fork hook hands out the lowest slot no live worker holds, so the
    replacement of a dead worker serves the dead one's port; a worker keeps only that port's
    listener of the master's (one per slot, in --bind order), unwrapped to the plain socket
    that uvloop then owns and closes once."""
    from types import SimpleNamespace

    from mlflow_heroku_runtime import forked_workers
    from uvicorn_worker import UvicornWorker

    def worker(slot: int | None = None) -> forked_workers.MlflowWorker:
        made = object.__new__(forked_workers.MlflowWorker)
        if slot is not None:
            made.slot = slot
        return made

    listeners = [SimpleNamespace(sock=f"socket-{port}") for port in ("a", "b", "c")]
    arbiter = SimpleNamespace(WORKERS={}, LISTENERS=listeners)
    for pid in (101, 102, 103):
        new = worker()
        forked_workers.pre_fork(arbiter, new)
        arbiter.WORKERS[pid] = new
    assert [w.slot for w in arbiter.WORKERS.values()] == [0, 1, 2]
    del arbiter.WORKERS[102]  # died; gunicorn reaps it, then forks a replacement
    replacement = worker()
    forked_workers.pre_fork(arbiter, replacement)
    assert replacement.slot == 1

    served: list[list[str]] = []
    monkeypatch.setattr(UvicornWorker, "run", lambda self: served.append(self.sockets))
    running = worker(slot=1)
    running.sockets = list(arbiter.LISTENERS)
    running.run()
    assert served == [["socket-b"]]


def test_the_forked_worker_count_stays_one_per_port() -> None:
    """SIGTTIN / SIGTTOU change gunicorn's worker count through the arbiter's num_workers; the
    hook puts it back to one per port (and says so), while start-up, where there are no ports
    yet, and stopping (0) pass."""
    from types import SimpleNamespace

    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
    from mlflow_heroku_runtime import forked_workers

    warnings: list[str] = []
    arbiter = object.__new__(Arbiter)
    arbiter._num_workers = None
    arbiter.LISTENERS = []
    arbiter.cfg = SimpleNamespace(nworkers_changed=forked_workers.nworkers_changed)
    arbiter.log = SimpleNamespace(warning=warnings.append)

    arbiter.num_workers = 3  # start-up: the listeners do not exist yet
    arbiter.LISTENERS = ["port-a", "port-b", "port-c"]
    assert warnings == []
    arbiter.num_workers += 1  # what SIGTTIN does
    assert arbiter.num_workers == 3
    arbiter.num_workers -= 1  # what SIGTTOU does
    assert arbiter.num_workers == 3
    assert len(warnings) == 2
    assert "keeping 3 workers, one per port" in warnings[0]
    arbiter.num_workers = 0  # stopping
    assert arbiter.num_workers == 0


def test_the_gunicorn_and_uvicorn_internals_we_use_are_as_expected() -> None:
    """The checks of internals.py's "gunicorn, uvicorn" section pass on the installed
    versions (tests/image/test_internals.py runs every section's)."""
    from mlflow_heroku_runtime import forked_workers, internals

    ours = {
        internals._check_arbiter,
        internals._check_worker_sockets,
        internals._check_uvicorn_worker_config_kwargs,
        internals._check_mlflow_uvicorn_log_config,
    }
    assert ours <= {entry.check for entry in internals.INTERNALS}
    for check in ours:
        check()
    assert forked_workers.MlflowWorker.CONFIG_KWARGS["loop"] == "uvloop"
