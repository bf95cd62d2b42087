"""gunicorn's settings, worker class and server hooks for two or more MLflow workers
(``WEB_CONCURRENCY`` >= 2); the supervisor passes this module to gunicorn as its ``--config``,
and gunicorn reads the module-level settings below from it. Only each start's values (the
worker count, the ports, the runtime directory) are on the command line (supervisor.py).

gunicorn imports MLflow once in its master (``preload_app``; asgi.py also opens the stores
and loads boto3 there) and forks the workers from it, so they share those pages instead of
each importing MLflow itself, as uvicorn's own ``--workers`` does (docs/image.md, "Workers").

gunicorn gets one listening socket per worker from the supervisor, which listens on the
loopback ports itself before nginx starts (``--bind fd://N`` in slot order; supervisor.py says
why), and each worker serves only the socket of its slot. nginx then chooses the worker
(``least_conn``) and may keep its connections to each: on one shared port the kernel chooses,
which piles kept connections onto one worker, and without kept connections costs a connect and
an accept per request.
"""

from __future__ import annotations

import logging
from typing import Any

from .internals import (
    arbiter_listeners,
    arbiter_workers,
    mlflow_uvicorn_log_config,
    serve_only,
    set_arbiter_worker_count,
    uvicorn_worker_base,
)
from .plan import HOLD_BACKLOG, MLFLOW_GRACEFUL_SECONDS, UVICORN_OPTIONS

# gunicorn's settings (module-level names of its config file).
preload_app = True
worker_class = "mlflow_heroku_runtime.forked_workers.MlflowWorker"
graceful_timeout = MLFLOW_GRACEFUL_SECONDS
# gunicorn listens again on the sockets it inherits; keep the supervisor's queue length.
backlog = HOLD_BACKLOG
# gunicorn 26 opens a control socket in $HOME; the image's only writable place is the
# runtime directory, and nothing here talks to it.
control_socket_disable = True


WORKER_OPTIONS = {**UVICORN_OPTIONS, "log_config": mlflow_uvicorn_log_config()}


class MlflowWorker(uvicorn_worker_base(WORKER_OPTIONS)):  # type: ignore[misc]
    """uvicorn in a forked worker, on the same settings as the one worker (plan.UVICORN_OPTIONS)
    and MLflow's logging config."""

    slot: int  # set by pre_fork in the master

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The base class sends uvicorn's error log to gunicorn's handlers before uvicorn
        # applies the config above, which leaves that logger alone: hand it back to it.
        error_log = logging.getLogger("uvicorn.error")
        error_log.handlers = []
        error_log.propagate = True
        error_log.setLevel(logging.NOTSET)

    def run(self) -> None:
        serve_only(self, self.slot)
        super().run()


def pre_fork(server: Any, worker: MlflowWorker) -> None:
    """gunicorn's hook, in the master before each fork: the lowest slot no live worker holds,
    so a replacement takes over the port of the worker it replaces."""
    taken = {sibling.slot for sibling in arbiter_workers(server)}
    worker.slot = min(set(range(len(arbiter_listeners(server)))) - taken)


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    """gunicorn's hook after its worker count changes: keep it at one worker per port.
    SIGTTIN would fork a worker with no port of its own, and SIGTTOU would leave a port that
    the master still accepts on but no worker serves (nginx's requests to it would hang). The
    count is set at start-up (no ports yet) and by a reload (to the configured count), and 0
    means stopping: those pass."""
    ports = len(arbiter_listeners(server))
    if ports and new_value not in (ports, 0):
        server.log.warning(
            f"mlflow-heroku: keeping {ports} workers, one per port; set WEB_CONCURRENCY and "
            "restart the dyno to change it (SIGTTIN/SIGTTOU are not supported)"
        )
        set_arbiter_worker_count(server, ports)
