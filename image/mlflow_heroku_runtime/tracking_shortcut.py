"""Send MLflow's tracking REST API straight to its Flask app (see ``TrackingApiShortcut``).

Light on purpose (no MLflow import), so the tests can check it without starting MLflow.
"""

from __future__ import annotations

from .error_filter import ASGIApp, Receive, Scope, Send

# Served only by MLflow's Flask app: no FastAPI route of the pinned MLflow lives under these
# (tests/image/test_image_tracking_shortcut.py checks that against the installed version).
# The trailing slash keeps /api/2.0/mlflow-artifacts/ (FastAPI's streaming artifact routes) out.
FLASK_ONLY_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")


class TrackingApiShortcut:
    """Hands the tracking REST API (runs, metrics, experiments, registry) to MLflow's Flask app
    through the same WSGI bridge MLflow mounts at "/", skipping the FastAPI layers in front
    of that mount: routing over ~80 native routes and seven middlewares, two of them
    BaseHTTPMiddleware. Those layers cost ~1.3 ms of the worker's ~5.6 ms of CPU per
    log-metric call; one worker is one core, so the shortcut is +27% throughput at 16
    clients (docs/benchmark.md). Nothing is lost: Flask runs MLflow's own Host, CORS and
    cross-origin checks (mlflow.server.security, active under uvicorn), and the FastAPI
    middlewares skipped only act on FastAPI routes (workspaces, gateway timing)."""

    def __init__(self, fastapi_app: ASGIApp, flask_bridge: ASGIApp) -> None:
        self.fastapi_app = fastapi_app
        self.flask_bridge = flask_bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(FLASK_ONLY_PREFIXES):
            await self.flask_bridge(scope, receive, send)
        else:
            await self.fastapi_app(scope, receive, send)
