"""The ASGI app uvicorn serves: MLflow's FastAPI app behind ``ScrubDatabaseErrors``, with the
tracking REST API and Flask's file routes sent straight to MLflow's Flask app (see
``FlaskShortcut``). In accounts mode (MLFLOW_HEROKU_LOGIN_MODE=accounts) the FastAPI app is
the one MLflow's basic-auth app factory makes, with its permission middleware; the factory
also hooks its login and permission checks into the Flask app itself, so the shortcut to
Flask runs them too (tests/image/test_image_accounts.py).

Importing this module waits for the supervisor's migration flag (``migrate.wait_for_migration``),
opens MLflow's stores and freezes the garbage collector's view of everything imported (see
``warm_up_and_freeze``; docs/image.md, "Process layout and why").
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
import weakref
from importlib.metadata import entry_points
from typing import Any

import sqlalchemy
from sqlalchemy.pool import ConnectionPoolEntry

from . import internals

# MLflow itself mounts Flask through Starlette's deprecated WSGI middleware; the warning is
# addressed to MLflow, not to whoever reads this dyno's log.
warnings.filterwarnings("ignore", message=internals.STARLETTE_WSGI_DEPRECATION)

from mlflow.server import app as flask_app  # noqa: E402 (after the filter)
from mlflow.server.fastapi_app import app as mlflow_app  # noqa: E402

from .error_filter import ScrubDatabaseErrors  # noqa: E402
from .flask_shortcut import FlaskShortcut  # noqa: E402
from .migrate import wait_for_migration  # noqa: E402
from .plan import ACCOUNTS_LOGIN, FORKED_WORKERS_VARIABLE  # noqa: E402
from .settings import DEFAULTS  # noqa: E402
from .stale_requests import READ_TIMEOUT_VARIABLE, DropStaleRequests  # noqa: E402
from .wsgi_bridge import WsgiBridge  # noqa: E402

OPENED_BY = "mlflow_heroku_opened_by_pid"  # our key in each pooled connection's info
# Every pooled database connection of every engine in this process, the inherited included.
pooled_connections: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()


def warm_up_and_freeze() -> None:
    """Open the tracking store now (not on the first request) and move everything imported so
    far out of the garbage collector's reach. (The model registry's store has its own engine
    and pool; it is left to open on first use, so it holds no connection until then.)

    CPython's full collection walks every live object whenever enough new ones survive, and
    MLflow's worker holds a great many long-lived ones after import; ``gc.freeze()`` puts them
    in the permanent generation, so collections only walk what requests create. (It also keeps
    the collector from writing to those objects, so forked workers keep sharing their pages;
    docs/image.md, "Process layout and why".)
    """
    forked = os.environ.get(FORKED_WORKERS_VARIABLE) == "1"
    try:
        internals.open_tracking_store()
        if forked:
            # Loaded here once instead of in every worker on its first upload: boto3 and S3's
            # service model (docs/benchmark.md, "Forked workers").
            internals.build_s3_client(internals.proxied_artifact_repository())
    except Exception as error:  # the first request will retry and report it
        print(f"mlflow: store warm-up failed: {type(error).__name__}", file=sys.stderr, flush=True)
    if forked:
        # No database connection may be shared across the fork: the master closes its own
        # now, and each worker forgets any it still inherits.
        close_own_database_connections()
    gc.collect()
    gc.freeze()


def login_checking_app() -> Any:
    """MLflow's FastAPI app: as `mlflow server` serves it, or, in accounts mode, as
    `mlflow server --app-name basic-auth` does (the app factory of that entry point, called
    once the schema is migrated: it opens the auth store, which must hold no connection
    across a fork)."""
    if os.environ.get("MLFLOW_HEROKU_LOGIN_MODE") != ACCOUNTS_LOGIN:
        return mlflow_app
    # mlflow and mlflow-skinny each declare the entry point: one factory, named twice.
    declared = entry_points(group="mlflow.app", name="basic-auth")
    factories = {entry.value: entry for entry in declared}
    (factory,) = factories.values()
    app = factory.load()()
    internals.cache_authorization_lookups()
    return app


def keep_database_connections_out_of_forks() -> None:
    """SQLAlchemy's recipe for pools and ``os.fork()`` (docs: "Using Connection Pools with
    Multiprocessing or os.fork()"), for every engine MLflow makes without knowing them: a
    listener on the ``Pool`` class notes which process opened each connection, and a forked
    child forgets, unclosed, those its parent opened. (Forgotten at the fork, not refused at
    checkout as in the recipe: MLflow's engines ping a connection before checkout listeners
    run, and that ping would already travel over the parent's socket.)"""
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", _note_opener)
    os.register_at_fork(after_in_child=forget_inherited_database_connections)


def _note_opener(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
    entry.info[OPENED_BY] = os.getpid()
    pooled_connections.add(entry)


def close_own_database_connections() -> None:
    """Close every idle pooled connection this process opened (the master, before the fork);
    a pool that needs one later opens a new one."""
    for entry in list(pooled_connections):
        opened_here = entry.info.get(OPENED_BY) == os.getpid()
        if entry.dbapi_connection is not None and opened_here and not entry.in_use:
            entry.close()


def forget_inherited_database_connections() -> None:
    """In a forked child: drop the connections the parent opened without closing them (their
    sockets are the parent's); each pool opens its own on its next checkout."""
    for entry in list(pooled_connections):
        if entry.dbapi_connection is not None and entry.info.get(OPENED_BY) != os.getpid():
            internals.forget_connection(entry)


# MLflow touches the database only on the first request, never at import: hold the app back
# until the supervisor says the schema is current.
wait_for_migration()
if os.environ.get(FORKED_WORKERS_VARIABLE) == "1":
    keep_database_connections_out_of_forks()  # before any store opens a connection
served_app = login_checking_app()
warm_up_and_freeze()
# A name of its own, so tests reach the shortcut without walking the middlewares around it.
shortcut = FlaskShortcut(
    served_app,
    WsgiBridge(flask_app),
    # One tracking call at a time per pooled connection (settings.py sets the size).
    concurrent_calls=int(
        os.environ.get(
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", DEFAULTS["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]
        )
    ),
)
app = DropStaleRequests(  # those that waited out nginx's timeout in the queue during the boot
    ScrubDatabaseErrors(shortcut),
    read_timeout_seconds=float(
        os.environ.get(READ_TIMEOUT_VARIABLE, DEFAULTS["MLFLOW_HEROKU_PROXY_READ_TIMEOUT"])
    ),
)
