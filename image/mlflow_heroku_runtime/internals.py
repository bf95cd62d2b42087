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
import importlib.util
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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


def arbiter_workers(server: Any) -> list[Any]:
    """The workers gunicorn's master has forked and not yet reaped. Server hooks get the
    Arbiter, whose attributes gunicorn does not document."""
    return list(server.WORKERS.values())


def arbiter_listeners(server: Any) -> list[Any]:
    """The master's listening sockets, in --bind order (empty until they are bound)."""
    return list(server.LISTENERS)


def set_arbiter_worker_count(server: Any, count: int) -> None:
    """Set how many workers gunicorn's master keeps (what SIGTTIN / SIGTTOU change)."""
    server.num_workers = count


@internal(
    "gunicorn",
    "gunicorn.arbiter.Arbiter.WORKERS, .LISTENERS, .num_workers",
    "gunicorn's server hooks get its Arbiter, and only its attributes tell a hook the "
    "workers, the listeners and the worker count",
)
def _check_arbiter() -> None:
    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

    assert isinstance(Arbiter.WORKERS, dict), "Arbiter.WORKERS is no longer a dict"
    assert isinstance(Arbiter.LISTENERS, list), "Arbiter.LISTENERS is no longer a list"
    count = Arbiter.__dict__.get("num_workers")
    assert isinstance(count, property), "num_workers is not a property"
    assert count.fset is not None, "num_workers is not settable"


def serve_only(worker: Any, slot: int) -> None:
    """Make a gunicorn worker serve only its slot's listener of those it inherited, as the
    plain socket inside gunicorn's wrapper: uvloop takes that over and closes it once at
    shutdown. Handed the wrapper, uvloop closed the descriptor and the wrapper then closed the
    same number again, which would close whatever another thread had opened under it."""
    worker.sockets = [worker.sockets[slot].sock]


@internal(
    "gunicorn",
    "gunicorn.workers.base.Worker.sockets, gunicorn.sock.BaseSocket.sock",
    "a worker's listeners are only reachable as its sockets attribute, each wrapping the "
    "socket object as .sock",
)
def _check_worker_sockets() -> None:
    from gunicorn.sock import BaseSocket  # type: ignore[import-untyped]
    from gunicorn.workers.base import Worker  # type: ignore[import-untyped]

    assert "self.sockets = sockets" in inspect.getsource(Worker.__init__), "Worker.sockets"
    assert "self.sock = " in inspect.getsource(BaseSocket.__init__), "BaseSocket.sock"
    assert "self.sockets" in inspect.getsource(Worker.init_process), "init_process"


def uvicorn_worker_base(options: dict[str, Any]) -> type[Any]:
    """uvicorn-worker's UvicornWorker with ``options`` for every worker's uvicorn Config (its
    class attribute CONFIG_KWARGS, which uvicorn-worker does not document)."""
    from uvicorn_worker import UvicornWorker

    return type("ConfiguredUvicornWorker", (UvicornWorker,), {"CONFIG_KWARGS": dict(options)})


@internal(
    "uvicorn-worker",
    "uvicorn_worker.UvicornWorker.CONFIG_KWARGS",
    "the worker builds uvicorn's Config itself, and this class attribute is its only input",
)
def _check_uvicorn_worker_config_kwargs() -> None:
    from uvicorn_worker import UvicornWorker

    assert isinstance(UvicornWorker.CONFIG_KWARGS, dict), "CONFIG_KWARGS is not a dict"
    source = inspect.getsource(UvicornWorker.__init__)
    assert "config_kwargs.update(self.CONFIG_KWARGS)" in source, "CONFIG_KWARGS is not applied"


def mlflow_uvicorn_log_config() -> str:
    """The logging config `mlflow server` gives uvicorn (a YAML file inside MLflow's package),
    found without importing MLflow."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MLflow is not installed: pip install mlflow")
    path = Path(spec.origin).parent / "server" / "uvicorn_log_config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"MLflow's uvicorn logging config is not at {path}")
    return str(path)


@internal(
    "mlflow",
    "mlflow/server/uvicorn_log_config.yaml",
    "`mlflow server` passes this file to uvicorn as --log-config, and no API returns its path",
)
def _check_mlflow_uvicorn_log_config() -> None:
    import yaml  # type: ignore[import-untyped]

    config = yaml.safe_load(Path(mlflow_uvicorn_log_config()).read_text())
    assert {"uvicorn", "uvicorn.access"} <= set(config["loggers"]), "its loggers changed"


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
