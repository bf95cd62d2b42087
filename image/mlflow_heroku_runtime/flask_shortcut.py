"""Send the routes only MLflow's Flask app serves straight to it (see ``FlaskShortcut``).

Light on purpose (no MLflow import), so the tests can check it without starting MLflow.
"""

from __future__ import annotations

import anyio

from .error_filter import ASGIApp, Receive, Scope, Send

# Served only by MLflow's Flask app: no FastAPI route of the pinned MLflow lives under these
# (tests/image/test_image_flask_shortcut.py checks that against the installed version).
# The tracking REST API; the trailing slash keeps /api/2.0/mlflow-artifacts/ (FastAPI's
# streaming artifact routes) out.
TRACKING_API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
# Files: the artifacts the UI shows and downloads. (The UI's own files, "/" and
# /static-files/, never reach a worker: nginx serves them from the installed package.)
FILE_PATHS = ("/get-artifact", "/model-versions/get-artifact")


class FlaskShortcut:
    """Hands the tracking REST API (runs, metrics, experiments, registry) and Flask's file
    routes to MLflow's Flask app through ``flask_bridge``, skipping the FastAPI layers in
    front of MLflow's own mount of Flask at "/": routing over its native routes and its
    middlewares, two of them BaseHTTPMiddleware (their cost: docs/benchmark.md). The asgi
    module passes ``WsgiBridge``, which also sends a file in large pieces per thread hand-off
    where MLflow's mount takes a round trip between two threads per small read of the file
    (docs/image.md). Nothing is lost: Flask's own hooks do the skipped middlewares' jobs (Host
    validation, CORS and cross-origin blocking, security headers: mlflow.server.security,
    active under uvicorn; workspaces: mlflow.server.workspace_helpers), and gateway timing
    only concerns FastAPI's routes. tests/image/test_image_flask_shortcut.py proves each
    against the installed MLflow.

    At most ``concurrent_calls`` tracking calls run at once in a worker (each in a thread of
    the bridge); the others wait their turn in the event loop. More threads than that only
    fight over the GIL (docs/benchmark.md). The asgi module passes the tracking store's pool
    size, so a call never holds a thread while it waits for a connection. File routes are not
    capped: they wait on S3 or the disk, and a download must not hold up the tracking calls
    behind it."""

    def __init__(self, fastapi_app: ASGIApp, flask_bridge: ASGIApp, concurrent_calls: int) -> None:
        if concurrent_calls < 1:
            raise ValueError(f"concurrent_calls must be at least 1, not {concurrent_calls}")
        self.fastapi_app = fastapi_app
        self.flask_bridge = flask_bridge
        self.concurrent_calls = concurrent_calls
        self._limiter: anyio.CapacityLimiter | None = None  # made in the worker's own loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith(TRACKING_API_PREFIXES):
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.concurrent_calls)
            async with self._limiter:
                await self.flask_bridge(scope, receive, send)
        elif path in FILE_PATHS:
            await self.flask_bridge(scope, receive, send)
        else:
            await self.fastapi_app(scope, receive, send)
