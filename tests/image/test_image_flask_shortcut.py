"""The shortcut that hands MLflow's tracking REST API and file routes straight to its Flask app."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow_heroku_runtime.flask_shortcut import (
    FILE_PATHS,
    TRACKING_API_PREFIXES,
    FlaskShortcut,
)

from tests.support.services import ENTRYPOINT


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
    shortcut = TRACKING_API_PREFIXES + FILE_PATHS
    shadowed = [
        path
        for path in paths
        if path.startswith(TRACKING_API_PREFIXES)
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
    The middleware tests below send requests through the shortcut to prove each effect."""
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
        ("/gateway/chat/mlflow/invocations", "fastapi"),  # gateway timing stays on it
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


# ---------------------------------------------------------------- FastAPI middlewares skipped
#
# The shortcut skips every middleware MLflow's FastAPI app installs. Each one's job must still
# be done on the shortcut's path, by Flask's own hooks (mlflow.server.security, installed when
# uvicorn is loaded first, and mlflow.server.workspace_helpers), or must not concern its paths.
# One probe process imports the app as the dyno does and sends each request both through the
# app (the shortcut) and to MLflow's FastAPI app directly.

OWN_HOST = "mlflow.example.com"
ALLOWED_ORIGIN = "https://ui.example.com"
SEARCH = "/api/2.0/mlflow/experiments/search"
REQUESTS: dict[str, tuple[str, str, dict[str, str], bytes]] = {
    "own_host": ("GET", f"{SEARCH}?max_results=1", {}, b""),
    "foreign_host": ("GET", f"{SEARCH}?max_results=1", {"host": "evil.example"}, b""),
    "foreign_host_file": ("GET", "/get-artifact?path=a&run_id=0", {"host": "evil.example"}, b""),
    "file_route": ("GET", "/get-artifact?path=a&run_id=0", {}, b""),
    "foreign_origin_write": (
        "POST",
        SEARCH,
        {"origin": "https://evil.example", "content-type": "application/json"},
        b'{"max_results": 1}',
    ),
    "allowed_origin_write": (
        "POST",
        SEARCH,
        {"origin": ALLOWED_ORIGIN, "content-type": "application/json"},
        b'{"max_results": 1}',
    ),
    "preflight": (
        "OPTIONS",
        SEARCH,
        {
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
        b"",
    ),
    "workspace_header": ("GET", f"{SEARCH}?max_results=1", {"x-mlflow-workspace": "team-a"}, b""),
}

MIDDLEWARE_PROBE = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import uvicorn  # loaded before MLflow, as on the dyno
from mlflow_heroku_runtime import asgi
from mlflow_heroku_runtime.flask_shortcut import FlaskShortcut

if sys.argv[2] == "without-flasks-hooks":
    # Flask's request hooks from MLflow's security and workspace modules and flask-cors, gone.
    doers = ("mlflow.server.security", "mlflow.server.workspace_helpers", "flask_cors")
    for hooks in (asgi.flask_app.before_request_funcs, asgi.flask_app.after_request_funcs):
        for functions in hooks.values():
            functions[:] = [f for f in functions if not f.__module__.startswith(doers)]

shortcut = asgi.shortcut
assert isinstance(shortcut, FlaskShortcut)
reached_fastapi = []

async def fastapi_sentinel(scope, receive, send):
    # The shortcut's own path must serve these: reaching FastAPI would prove nothing.
    reached_fastapi.append(scope["path"])
    await send({"type": "http.response.start", "status": 599, "headers": []})
    await send({"type": "http.response.body", "body": b""})

shortcut.fastapi_app = fastapi_sentinel

async def call(app, method, target, headers, body):
    path, _, query = target.partition("?")
    headers = {"host": sys.argv[3], **headers}
    if body:
        headers["content-length"] = str(len(body))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5000), "state": {},
    }
    done = asyncio.Event()
    delivered = False
    messages = []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), 60)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return {
        "status": start["status"],
        "headers": {k.decode().lower(): v.decode() for k, v in start["headers"]},
        "body": b"".join(m.get("body", b"") for m in messages).decode(errors="replace"),
    }

async def main():
    requests = json.loads(sys.argv[4])
    results = {}
    for name, (method, target, headers, body) in requests.items():
        results[name] = {
            "shortcut": await call(asgi.app, method, target, headers, body.encode()),
            "fastapi": await call(asgi.mlflow_app, method, target, headers, body.encode()),
        }
    middlewares = [
        m.cls.__name__ + (":" + m.kwargs["dispatch"].__name__ if "dispatch" in m.kwargs else "")
        for m in asgi.mlflow_app.user_middleware
    ]
    print(json.dumps({
        "results": results, "middlewares": middlewares, "reached_fastapi": reached_fastapi,
    }))

asyncio.run(main())
"""


def probe_middlewares(tmp_path: Path, mode: str = "as-on-the-dyno") -> dict[str, Any]:
    """Each of REQUESTS through the shortcut and through FastAPI, with a Host validation list
    and CORS origins set (the defaults check neither on a dyno: settings.py)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "_MLFLOW_SERVER_FILE_STORE": store,
        "_MLFLOW_SERVER_REGISTRY_STORE": store,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_SERVER_ALLOWED_HOSTS": OWN_HOST,
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "MLFLOW_ENABLE_WORKSPACES": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for name in ("_MLFLOW_HEROKU_MIGRATED_FLAG", "_MLFLOW_HEROKU_FORKED_WORKERS"):
        env.pop(name, None)
    requests = {
        name: [method, target, headers, body.decode()]
        for name, (method, target, headers, body) in REQUESTS.items()
    }
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            MIDDLEWARE_PROBE,
            str(ENTRYPOINT.parent),
            mode,
            OWN_HOST,
            json.dumps(requests),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen: dict[str, Any] = json.loads(probe.stdout.splitlines()[-1])
    assert seen["reached_fastapi"] == [], seen["reached_fastapi"]  # all took the shortcut
    return seen


@pytest.fixture(scope="module")
def middleware_probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return probe_middlewares(tmp_path_factory.mktemp("middlewares"))


def both(probe: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    result = probe["results"][name]
    return result["shortcut"], result["fastapi"]


def test_host_validation_refuses_a_foreign_host_on_the_shortcut(
    middleware_probe: dict[str, Any],
) -> None:
    """HostValidationMiddleware's job, done by Flask's validate_host hook."""
    from mlflow.server.security_utils import INVALID_HOST_MSG

    for name in ("foreign_host", "foreign_host_file"):
        shortcut, fastapi = both(middleware_probe, name)
        assert (shortcut["status"], shortcut["body"]) == (403, INVALID_HOST_MSG), name
        assert (fastapi["status"], fastapi["body"]) == (403, INVALID_HOST_MSG), name
    shortcut, fastapi = both(middleware_probe, "own_host")
    assert shortcut["status"] == fastapi["status"] == 200, (shortcut, fastapi)


def test_cross_origin_writes_are_blocked_on_the_shortcut(middleware_probe: dict[str, Any]) -> None:
    """CORSBlockingMiddleware's job, done by Flask's block_cross_origin_state_changes hook."""
    from mlflow.server.security_utils import CORS_BLOCKED_MSG

    shortcut, fastapi = both(middleware_probe, "foreign_origin_write")
    assert (shortcut["status"], shortcut["body"]) == (403, CORS_BLOCKED_MSG)
    assert (fastapi["status"], fastapi["body"]) == (403, CORS_BLOCKED_MSG)
    shortcut, fastapi = both(middleware_probe, "allowed_origin_write")
    assert shortcut["status"] == fastapi["status"] == 200, (shortcut, fastapi)


def test_cors_answers_an_allowed_origin_on_the_shortcut(middleware_probe: dict[str, Any]) -> None:
    """CORSMiddleware's job (preflight answers and the allow headers), done by flask-cors."""
    for name in ("preflight", "allowed_origin_write"):
        for path, result in zip(("shortcut", "fastapi"), both(middleware_probe, name), strict=True):
            headers = result["headers"]
            assert result["status"] in (200, 204), (name, path, result)
            assert headers.get("access-control-allow-origin") == ALLOWED_ORIGIN, (name, path)
            assert headers.get("access-control-allow-credentials") == "true", (name, path)
    # (FastAPI's CORSMiddleware answers a preflight 200, Flask 204 by MLflow's own rule for
    # OPTIONS on the API: browsers take either.)
    shortcut, _ = both(middleware_probe, "preflight")
    assert "POST" in shortcut["headers"]["access-control-allow-methods"]
    assert "content-type" in shortcut["headers"]["access-control-allow-headers"].lower()


def test_security_headers_are_set_on_the_shortcut(middleware_probe: dict[str, Any]) -> None:
    """SecurityHeadersMiddleware's job, done by Flask's add_security_headers hook: on the
    tracking API and on the file routes."""
    for name in ("own_host", "file_route"):
        for path, result in zip(("shortcut", "fastapi"), both(middleware_probe, name), strict=True):
            assert result["headers"].get("x-content-type-options") == "nosniff", (name, path)
            assert result["headers"].get("x-frame-options") == "SAMEORIGIN", (name, path)


def test_the_workspace_header_is_handled_on_the_shortcut(middleware_probe: dict[str, Any]) -> None:
    """workspace_context_middleware's job, done by Flask's workspace_before_request_handler:
    with workspaces off (the image's default), a workspace header is refused the same way."""
    shortcut, fastapi = both(middleware_probe, "workspace_header")
    assert shortcut["status"] == fastapi["status"] != 200, (shortcut, fastapi)
    assert json.loads(shortcut["body"])["error_code"] == "FEATURE_DISABLED", shortcut
    assert json.loads(fastapi["body"])["error_code"] == "FEATURE_DISABLED", fastapi


def test_gateway_timing_concerns_no_path_of_the_shortcut() -> None:
    """gateway_timing_middleware only times the AI gateway's routes, which stay on FastAPI
    (the routing test sends one there)."""
    from mlflow.server.handlers import _add_static_prefix

    gateway = _add_static_prefix("/gateway/")
    assert not any(path.startswith(gateway) for path in TRACKING_API_PREFIXES)
    assert not any(path.startswith(gateway) for path in FILE_PATHS)


# Every middleware MLflow's FastAPI app installs, and the test above that proves its job is
# still done on the shortcut's path.
MIDDLEWARE_TESTS: dict[str, Callable[..., None]] = {
    "SecurityHeadersMiddleware": test_security_headers_are_set_on_the_shortcut,
    "CORSBlockingMiddleware": test_cross_origin_writes_are_blocked_on_the_shortcut,
    "CORSMiddleware": test_cors_answers_an_allowed_origin_on_the_shortcut,
    "HostValidationMiddleware": test_host_validation_refuses_a_foreign_host_on_the_shortcut,
    "BaseHTTPMiddleware:workspace_context_middleware": (
        test_the_workspace_header_is_handled_on_the_shortcut
    ),
    "BaseHTTPMiddleware:gateway_timing_middleware": (
        test_gateway_timing_concerns_no_path_of_the_shortcut
    ),
}


def test_every_fastapi_middleware_of_the_installed_mlflow_is_accounted_for(
    middleware_probe: dict[str, Any],
) -> None:
    """Upgrade check: a middleware MLflow adds is skipped by the shortcut too; say where its
    job is done on the shortcut's path (or narrow the shortcut), with a test, then list it."""
    installed = set(middleware_probe["middlewares"])
    assert installed == set(MIDDLEWARE_TESTS), (
        f"upgrade check: MLflow's FastAPI app now also installs {installed - set(MIDDLEWARE_TESTS)}"
        f" and no longer {set(MIDDLEWARE_TESTS) - installed}; the shortcut skips them all"
    )


def test_each_middleware_test_fails_without_flasks_hooks(tmp_path: Path) -> None:
    """The tests above can fail: with Flask's security, CORS and workspace hooks removed, the
    shortcut lets each request through that FastAPI's middlewares stop or mark."""
    broken = probe_middlewares(tmp_path, mode="without-flasks-hooks")
    shortcut, fastapi = both(broken, "foreign_host")
    assert (shortcut["status"], fastapi["status"]) == (200, 403)
    for name, test in MIDDLEWARE_TESTS.items():
        if name != "BaseHTTPMiddleware:gateway_timing_middleware":  # no request of its own
            with pytest.raises(AssertionError):
                test(broken)
