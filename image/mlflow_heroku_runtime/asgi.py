"""The ASGI app uvicorn serves: MLflow's FastAPI app behind ``ScrubDatabaseErrors``, with the
tracking REST API sent straight to MLflow's Flask app (see ``TrackingApiShortcut``).

Importing this module waits for the supervisor's migration flag, opens MLflow's stores and
freezes the garbage collector's view of everything imported (see ``warm_up_and_freeze``).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import warnings
from pathlib import Path

# MLflow 3.17 itself mounts Flask through Starlette's deprecated WSGI middleware; the warning is
# addressed to MLflow, not to whoever reads this dyno's log.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")

from mlflow.server import app as flask_app  # noqa: E402 (after the filter)
from mlflow.server.fastapi_app import _EfficientWSGIMiddleware  # noqa: E402
from mlflow.server.fastapi_app import app as mlflow_app  # noqa: E402

from .error_filter import ScrubDatabaseErrors  # noqa: E402
from .tracking_shortcut import TrackingApiShortcut  # noqa: E402


def wait_for_migration(timeout: float = 120) -> None:
    """Block (at import, before uvicorn listens) until the supervisor says the schema is
    current. MLflow touches the database only on the first request, never at import."""
    flag = os.environ.get("_MLFLOW_HEROKU_MIGRATED_FLAG")
    if not flag:
        return
    deadline = time.monotonic() + timeout
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            raise SystemExit("mlflow: the database migration did not finish in time")
        time.sleep(0.05)


def warm_up_and_freeze() -> None:
    """Open the tracking store now (not on the first request) and move everything imported so
    far out of the garbage collector's reach. (The model registry's store has its own engine
    and pool; it is left to open on first use, so it holds no connection until then.)

    MLflow's worker holds ~325,000 long-lived objects after import; CPython's full collection
    walks all of them (~190 ms measured here) whenever enough new objects survive, which under
    load showed up as the p99 latency. ``gc.freeze()`` puts them in the permanent generation,
    so collections only walk what requests create.
    """
    try:
        from mlflow.server import handlers

        handlers._get_tracking_store()
    except Exception as error:  # the first request will retry and report it
        print(f"mlflow: store warm-up failed: {type(error).__name__}", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()


wait_for_migration()
warm_up_and_freeze()
app = ScrubDatabaseErrors(TrackingApiShortcut(mlflow_app, _EfficientWSGIMiddleware(flask_app)))
