"""gunicorn's worker class and server hook for two or more MLflow workers (``WEB_CONCURRENCY``
>= 2); the supervisor passes this module to gunicorn as its ``--config`` too.

gunicorn imports MLflow once in its master (``--preload``; asgi.py also opens the stores and
loads boto3 there) and forks the workers from it, so they share those pages instead of each
importing MLflow itself, as uvicorn's own ``--workers`` does (docs/image.md, "Workers").

gunicorn binds one loopback port per worker (``--bind`` in slot order) and each worker serves
only the port of its slot. nginx then chooses the worker (``least_conn``) and may keep its
connections to each: on one shared port the kernel chooses, which piles kept connections onto
one worker, and without kept connections costs a connect and an accept per request.
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

from .plan import MLFLOW_GRACEFUL_SECONDS


class MlflowWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn in a forked worker, set up as the single-worker uvicorn is (supervisor.py):
    uvloop and httptools by name, no Server header, no access log (nginx keeps one), and the
    same bounded graceful stop on SIGTERM."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "server_header": False,
        "access_log": False,
        "timeout_graceful_shutdown": MLFLOW_GRACEFUL_SECONDS,
    }
    slot: int  # set by pre_fork in the master

    def run(self) -> None:
        own: Any = self.sockets[self.slot]  # type: ignore[has-type]
        # This worker's own port only, as the plain socket inside gunicorn's wrapper: uvloop
        # takes it over and closes it once at shutdown. Handed the wrapper, uvloop closed the
        # descriptor and the wrapper then closed the same number again (gunicorn logged "Error
        # while closing socket [Errno 9]"), which would close whatever another thread had
        # opened under that number in between.
        self.sockets = [own.sock]
        super().run()


def pre_fork(server: Any, worker: MlflowWorker) -> None:
    """gunicorn's hook, in the master before each fork: the lowest slot no live worker holds,
    so a replacement takes over the port of the worker it replaces."""
    taken = {sibling.slot for sibling in server.WORKERS.values()}
    worker.slot = min(set(range(len(server.LISTENERS))) - taken)


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    """gunicorn's hook after its worker count changes: keep it at one worker per port.
    SIGTTIN would fork a worker with no port of its own, and SIGTTOU would leave a port that
    the master still accepts on but no worker serves (nginx's requests to it would hang). The
    count is set at start-up (no ports yet) and by a reload (to the configured count), and 0
    means stopping: those pass."""
    ports = len(server.LISTENERS)
    if ports and new_value not in (ports, 0):
        server.log.warning(
            f"mlflow-heroku: keeping {ports} workers, one per port; set WEB_CONCURRENCY and "
            "restart the dyno to change it (SIGTTIN/SIGTTOU are not supported)"
        )
        server.num_workers = ports
