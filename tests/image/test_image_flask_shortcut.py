"""The shortcut that hands MLflow's tracking REST API and file routes straight to its Flask app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from typing import Any

import pytest
from mlflow_heroku_runtime.flask_shortcut import (
    FILE_PATHS,
    FILE_PREFIXES,
    TRACKING_API_PREFIXES,
    FlaskShortcut,
)


def fastapi_route_paths(routes: list[Any]) -> list[str]:
    """Every path template FastAPI itself serves, through included routers (FastAPI's
    ``_IncludedRouter`` lists its routes as ``effective_route_contexts``) and sub-routers;
    a Mount contributes its own path only (MLflow mounts Flask at "/")."""
    paths: list[str] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            contexts = contexts() if callable(contexts) else contexts
            paths += [context.path for context in contexts]
        elif type(route).__name__ == "Mount":
            paths.append(route.path)
        elif getattr(route, "routes", None):
            paths += fastapi_route_paths(route.routes)
        else:
            paths.append(route.path)
    return paths


def test_no_fastapi_route_of_the_installed_mlflow_lives_under_the_shortcut() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.fastapi_app import app

    paths = fastapi_route_paths(app.routes)
    # The walk really saw FastAPI's own routes (else the check below proves nothing).
    assert "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}" in paths
    assert "/v1/traces" in paths
    assert len(paths) > 20, paths
    shortcut = TRACKING_API_PREFIXES + FILE_PREFIXES + FILE_PATHS
    shadowed = [
        path
        for path in paths
        if path.startswith(TRACKING_API_PREFIXES + FILE_PREFIXES)
        or path in FILE_PATHS
        # A path above one of ours could serve it too: a Mount at "/static-files", or a
        # template such as "/model-versions/{rest:path}". "" is MLflow's own mount of Flask.
        or (path not in ("", "/") and any(s.startswith(path.rstrip("/") + "/") for s in shortcut))
        or ("{" in path and any(s.startswith(path[: path.index("{")]) for s in shortcut))
    ]
    assert shadowed == [], f"upgrade check: FastAPI now serves {shadowed}; narrow the shortcut"


def test_flask_app_carries_mlflows_own_host_and_origin_checks() -> None:
    """Skipping FastAPI's security middleware is safe only because Flask runs the same
    checks; MLflow installs them when a server module is loaded first, as on the dyno, where
    uvicorn imports MLflow. (A fresh interpreter: this one may have imported MLflow alone.)
    The stack tests send foreign Hosts and Origins through the shortcut as well."""
    hooks = subprocess.run(
        [
            sys.executable,
            "-c",
            "import uvicorn; from mlflow.server import app; "
            "print(*[hook.__name__ for hook in app.before_request_funcs[None]])",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert "validate_host" in hooks
    assert "block_cross_origin_state_changes" in hooks


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/2.0/mlflow/runs/log-metric", "flask"),
        ("/ajax-api/2.0/mlflow/experiments/create", "flask"),
        ("/api/2.0/mlflow/registered-models/search", "flask"),
        ("/api/2.0/mlflow-artifacts/artifacts/1/a.bin", "fastapi"),  # streaming uploads
        ("/ajax-api/2.0/mlflow-artifacts/artifacts/1/a.bin", "fastapi"),
        ("/api/2.0/mlflow", "fastapi"),  # no trailing slash: not the prefix
        ("/v1/traces", "fastapi"),
        ("/ajax-api/3.0/jobs/search", "fastapi"),
        ("/api/3.0/mlflow/server-info", "fastapi"),
        ("/get-artifact", "flask"),
        ("/model-versions/get-artifact", "flask"),
        # nginx serves the UI's files; one reaching a worker is FastAPI's (its mount of Flask).
        ("/static-files/static/js/main.c2f5f8d4.js", "fastapi"),
        ("/get-artifacts", "fastapi"),  # a file path is matched whole
        ("/static-files", "fastapi"),
        ("/health", "fastapi"),
        ("/", "fastapi"),
    ],
)
def test_only_tracking_api_and_file_paths_take_the_shortcut(path: str, expected: str) -> None:
    reached: list[str] = []

    def recorder(name: str) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            reached.append(name)

        return app

    shortcut = FlaskShortcut(recorder("fastapi"), recorder("flask"), concurrent_calls=2)
    asyncio.run(shortcut({"type": "http", "path": path}, None, None))  # type: ignore[arg-type]
    asyncio.run(shortcut({"type": "websocket", "path": path}, None, None))  # type: ignore[arg-type]
    assert reached == [expected, "fastapi"]  # websockets always go to FastAPI


def test_at_most_concurrent_calls_tracking_calls_run_at_once() -> None:
    """Tracking calls beyond the cap wait in the event loop until one finishes; every call
    runs in the end, and other paths (FastAPI's, /health among them, and Flask's file
    routes) are never held back."""
    running, peak, finished = [0], [0], [0]
    release = asyncio.Event()
    served_by_fastapi: list[str] = []

    async def flask(scope: Any, receive: Any, send: Any) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await release.wait()
        running[0] -= 1
        finished[0] += 1

    async def fastapi(scope: Any, receive: Any, send: Any) -> None:
        served_by_fastapi.append(scope["path"])

    async def main() -> None:
        shortcut = FlaskShortcut(fastapi, flask, concurrent_calls=2)
        calls = [
            asyncio.create_task(
                shortcut({"type": "http", "path": "/api/2.0/mlflow/runs/log-metric"}, None, None)  # type: ignore[arg-type]
            )
            for _ in range(5)
        ]
        await asyncio.sleep(0.05)
        assert running[0] == 2  # three wait their turn
        await shortcut({"type": "http", "path": "/health"}, None, None)  # type: ignore[arg-type]
        assert served_by_fastapi == ["/health"]
        # A download is not held up by the tracking calls, nor counted among them.
        download = asyncio.create_task(
            shortcut({"type": "http", "path": "/get-artifact"}, None, None)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.05)
        assert running[0] == 3
        release.set()
        await asyncio.wait_for(asyncio.gather(*calls, download), 5)

    asyncio.run(main())
    assert peak[0] == 3  # two tracking calls and the download
    assert finished[0] == 6


def test_the_cap_must_allow_one_call() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FlaskShortcut(None, None, concurrent_calls=0)  # type: ignore[arg-type]
