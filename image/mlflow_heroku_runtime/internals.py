"""Every name the runtime uses that another package does not document (MLflow, gunicorn,
Starlette, ...), in one place.

Each use is a small function here with a comment on why no public path does the job, and is
registered with ``@internal`` together with a check of the installed version.
``tests/image/test_internals.py`` runs every check, so an upgrade that moves a name fails with
a message naming the package, its version and what broke. Nothing else in the runtime may
reach into another package's private names: the same test scans the runtime's source for them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Internal:
    package: str  # the distribution whose version matters, e.g. "mlflow"
    name: str  # what we rely on, e.g. "mlflow.server.handlers._get_tracking_store"
    why: str  # why no public path does it (one line)
    check: Callable[[], None]  # raises (AssertionError, AttributeError, ...) when it broke


INTERNALS: list[Internal] = []


def internal(
    package: str, name: str, why: str
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register ``check`` as the installed-version check of one private name."""

    def register(check: Callable[[], None]) -> Callable[[], None]:
        INTERNALS.append(Internal(package, name, why, check))
        return check

    return register


def broken() -> list[str]:
    """One message per private name the installed versions no longer provide as we use it."""
    problems = []
    for entry in INTERNALS:
        try:
            entry.check()
        except Exception as error:
            version = importlib.metadata.version(entry.package)
            problems.append(
                f"{entry.package} {version}: {entry.name} changed ({type(error).__name__}: "
                f"{error}); it is used because {entry.why}"
            )
    return problems


# ----------------------------------------------------------------------------- MLflow

# ----------------------------------------------------------------------------- SQLAlchemy

# ----------------------------------------------------------------------------- gunicorn, uvicorn

# ----------------------------------------------------------------------------- Starlette


def wsgi_environ(scope: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ of one request, built as MLflow's own mount of Flask (Starlette's
    WSGIMiddleware) builds it, so Flask sees the same through the runtime's bridge."""
    return _starlette_build_environ()(scope, body)


@functools.cache
def _starlette_build_environ() -> Callable[[Mapping[str, Any], bytes], dict[str, Any]]:
    with warnings.catch_warnings():
        # Deprecated in Starlette, not removed; the warning is about the module MLflow mounts.
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from starlette.middleware.wsgi import build_environ
    return build_environ  # type: ignore[return-value]


@internal(
    "starlette",
    "starlette.middleware.wsgi.build_environ",
    "MLflow mounts Flask through Starlette's WSGIMiddleware, which builds each environ with "
    "this undocumented function; the bridge (wsgi_bridge.py) builds the same one",
)
def _check_wsgi_environ() -> None:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/api/2.0/mlflow/runs/log-metric",
        "root_path": "",
        "query_string": b"a=1",
        "headers": [(b"host", b"app.example"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5001),
    }
    environ = wsgi_environ(scope, b'{"key": "loss"}')
    expected = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/2.0/mlflow/runs/log-metric",
        "QUERY_STRING": "a=1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": 5001,  # an int, as Starlette gives it (PEP 3333 says str)
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "app.example",
        "CONTENT_TYPE": "application/json",
        "wsgi.url_scheme": "https",
    }
    assert {name: environ.get(name) for name in expected} == expected, environ
    assert environ["wsgi.input"].read() == b'{"key": "loss"}', "the body is not wsgi.input"
