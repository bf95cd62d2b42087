"""gunicorn's worker class for two or more MLflow workers (``WEB_CONCURRENCY`` >= 2).

gunicorn imports MLflow once in its master (``--preload``; asgi.py also opens the stores and
loads boto3 there) and forks the workers from it, so they share those pages instead of each
importing MLflow itself, as uvicorn's own ``--workers`` does (docs/image.md, "Workers").
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
