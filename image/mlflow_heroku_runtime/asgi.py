"""The ASGI app uvicorn serves: MLflow's FastAPI app behind ``ScrubDatabaseErrors``, with the
tracking REST API and Flask's file routes sent straight to MLflow's Flask app (see
``FlaskShortcut``).

Importing this module waits for the supervisor's migration flag (``migrate.wait_for_migration``),
opens MLflow's stores and freezes the garbage collector's view of everything imported (see
``warm_up_and_freeze``).
"""

from __future__ import annotations

import gc
import os
import sys
import warnings

# MLflow 3.17 itself mounts Flask through Starlette's deprecated WSGI middleware; the warning is
# addressed to MLflow, not to whoever reads this dyno's log.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")

from mlflow.server import app as flask_app  # noqa: E402 (after the filter)
from mlflow.server.fastapi_app import app as mlflow_app  # noqa: E402

from .error_filter import ScrubDatabaseErrors  # noqa: E402
from .flask_shortcut import FlaskShortcut  # noqa: E402
from .migrate import wait_for_migration  # noqa: E402
from .plan import FORKED_WORKERS_VARIABLE  # noqa: E402
from .settings import DEFAULTS  # noqa: E402
from .wsgi_bridge import WsgiBridge  # noqa: E402


def warm_up_and_freeze() -> None:
    """Open the tracking store now (not on the first request) and move everything imported so
    far out of the garbage collector's reach. (The model registry's store has its own engine
    and pool; it is left to open on first use, so it holds no connection until then.)

    MLflow's worker holds ~325,000 long-lived objects after import; CPython's full collection
    walks all of them (~190 ms measured here) whenever enough new objects survive, which under
    load showed up as the p99 latency. ``gc.freeze()`` puts them in the permanent generation,
    so collections only walk what requests create. (It also keeps the collector from writing
    to those objects, so forked workers keep sharing their pages.)
    """
    forked = os.environ.get(FORKED_WORKERS_VARIABLE) == "1"
    try:
        from mlflow.server import handlers

        handlers._get_tracking_store()
        if forked:
            # Loaded here once instead of in every worker on its first upload: boto3 and S3's
            # service model are ~100 MB per process (docs/benchmark.md, "Forked workers").
            repository = handlers._get_artifact_repo_mlflow_artifacts()  # type: ignore[no-untyped-call]
            get_s3_client = getattr(repository, "_get_s3_client", None)
            if get_s3_client is not None:
                get_s3_client()  # builds the client only; it connects on first use
    except Exception as error:  # the first request will retry and report it
        print(f"mlflow: store warm-up failed: {type(error).__name__}", file=sys.stderr, flush=True)
    if forked:
        # No database connection may be shared across the fork: the master closes its own,
        # and each worker starts with empty pools.
        dispose_database_pools(close=True)
        os.register_at_fork(after_in_child=lambda: dispose_database_pools(close=False))
    gc.collect()
    gc.freeze()


def dispose_database_pools(close: bool) -> None:
    """Empty the connection pool of every SQLAlchemy engine MLflow's stores have opened.
    ``close=False`` (in a forked child) drops the inherited connections without touching the
    sockets the parent still owns."""
    for module_name in (
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
        "mlflow.store.jobs.sqlalchemy_store",
    ):
        store = getattr(sys.modules.get(module_name), "SqlAlchemyStore", None)
        for engine in list(getattr(store, "_engine_map", {}).values()):
            engine.dispose(close=close)


# MLflow touches the database only on the first request, never at import: hold the app back
# until the supervisor says the schema is current.
wait_for_migration()
warm_up_and_freeze()
app = ScrubDatabaseErrors(
    FlaskShortcut(
        mlflow_app,
        WsgiBridge(flask_app),
        # One tracking call at a time per pooled connection (settings.py sets the size).
        concurrent_calls=int(
            os.environ.get(
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", DEFAULTS["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]
            )
        ),
    )
)
