"""Every name the runtime uses that another package does not document (MLflow, gunicorn,
Starlette, ...), in one place.

Each use is a small function here with a comment on why no public path does the job, and is
registered with ``@internal`` together with a check of the installed version.
``tests/image/test_internals.py`` runs every check, so an upgrade that moves a name fails with
a message naming the package, its version and what broke. Nothing else in the runtime may
reach into another package's private names: the same test scans the runtime's source for them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry


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


def _takes_no_required_arguments(function: Callable[..., Any]) -> None:
    required = [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    assert not required, f"{function.__qualname__} now requires {required}"


def open_tracking_store() -> Any:
    """The tracking store MLflow's request handlers use, opened now instead of on the first
    request (MLflow caches it for the process)."""
    from mlflow.server import handlers

    return handlers._get_tracking_store()


@internal(
    "mlflow",
    "mlflow.server.handlers._get_tracking_store",
    "MLflow's handlers open their tracking store only through this cached getter",
)
def _check_tracking_store() -> None:
    from mlflow.server import handlers

    _takes_no_required_arguments(handlers._get_tracking_store)
    assert hasattr(handlers, "_tracking_store"), "its cache handlers._tracking_store is gone"


def proxied_artifact_repository() -> Any:
    """The repository behind ``--artifacts-destination`` that MLflow's proxied artifact
    routes use (MLflow caches it for the process)."""
    from mlflow.server import handlers

    return handlers._get_artifact_repo_mlflow_artifacts()  # type: ignore[no-untyped-call]


@internal(
    "mlflow",
    "mlflow.server.handlers._get_artifact_repo_mlflow_artifacts",
    "MLflow's proxied artifact routes open their repository only through this cached getter",
)
def _check_proxied_artifact_repository() -> None:
    from mlflow.server import handlers

    _takes_no_required_arguments(handlers._get_artifact_repo_mlflow_artifacts)
    assert hasattr(handlers, "_artifact_repo"), "its cache handlers._artifact_repo is gone"


def build_s3_client(repository: Any) -> None:
    """Build the S3 client of an S3 artifact repository (boto3 and S3's service model) the way
    its first upload would; it connects only on first use. Other repositories are left alone."""
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    if isinstance(repository, S3ArtifactRepository):
        repository._get_s3_client()  # type: ignore[no-untyped-call]


@internal(
    "mlflow",
    "mlflow.store.artifact.s3_artifact_repo.S3ArtifactRepository._get_s3_client",
    "the repository builds its (cached) boto3 client only on its first upload or download",
)
def _check_s3_client() -> None:
    from mlflow.store.artifact import s3_artifact_repo

    method = s3_artifact_repo.S3ArtifactRepository._get_s3_client
    assert list(inspect.signature(method).parameters) == ["self"], inspect.signature(method)
    assert hasattr(s3_artifact_repo._cached_get_s3_client, "cache_info"), (
        "_cached_get_s3_client no longer caches: each request would build its own client"
    )


def upgrade_database_schema(url: str) -> None:
    """What ``mlflow db upgrade URL`` does: create MLflow's tables in an empty database, or
    bring an existing schema to the newest revision."""
    from mlflow.db import upgrade

    if upgrade.callback is None:  # the installed-version check names this too
        raise RuntimeError("mlflow.db.upgrade has no callback: see tests/image/test_internals.py")
    upgrade.callback(url)


@internal(
    "mlflow",
    "mlflow.db.upgrade.callback (the body of `mlflow db upgrade URL`)",
    "the CLI command is MLflow's only public way to migrate; calling its body follows what it "
    "does in every version (no copy of it to fall behind) without a second interpreter",
)
def _check_upgrade_command() -> None:
    import click
    from mlflow.db import upgrade

    assert isinstance(upgrade, click.Command), f"mlflow.db.upgrade is a {type(upgrade)}"
    assert [parameter.name for parameter in upgrade.params] == ["url"], upgrade.params
    assert upgrade.callback is not None, "the command has no callback"
    assert list(inspect.signature(upgrade.callback).parameters) == ["url"], (
        f"its callback takes {inspect.signature(upgrade.callback)}"
    )


# What `mlflow gc` (mlflow.cli._gc_tracking_resources) asks of the tracking store, by name: the
# maintenance command takes the same steps one run at a time (maintenance.py says why).
GC_STORE_CALLS = frozenset(
    {
        "_get_deleted_runs",
        "_get_deleted_logged_models",
        "get_experiment",
        "search_experiments",
        "search_runs",
        "get_run",
        "get_logged_model",
        "_hard_delete_run",
        "_hard_delete_logged_model",
        "_hard_delete_experiment",
    }
)


def deleted_run_ids(store: Any, older_than_ms: int) -> list[str]:
    """The runs in the ``deleted`` lifecycle stage whose deletion is older than the limit."""
    return list(store._get_deleted_runs(older_than=older_than_ms))


def deleted_logged_model_ids(store: Any, older_than_ms: int) -> list[str]:
    """The logged models in the ``deleted`` lifecycle stage last updated before the limit."""
    return list(store._get_deleted_logged_models(older_than=older_than_ms))


def hard_delete_run(store: Any, run_id: str) -> None:
    """Remove a deleted run's rows (metrics, params, tags, inputs) for good."""
    store._hard_delete_run(run_id)


def hard_delete_logged_model(store: Any, model_id: str) -> None:
    """Remove a logged model's rows for good."""
    store._hard_delete_logged_model(model_id)


def hard_delete_experiment(store: Any, experiment_id: str) -> None:
    """Remove a deleted experiment's rows for good (the database cascades its traces, logged
    models and remaining runs)."""
    store._hard_delete_experiment(experiment_id)


def mlflow_migrations_directory() -> Path:
    """The Alembic script directory of the installed MLflow's tracking schema: what
    `mlflow db upgrade` runs, and where its newest revision is read from."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MLflow is not installed: pip install mlflow")
    return Path(spec.origin).parent / "store" / "db_migrations"


@internal(
    "mlflow",
    "SqlAlchemyStore._get_deleted_runs, _get_deleted_logged_models, _hard_delete_run, "
    "_hard_delete_logged_model, _hard_delete_experiment (the steps of `mlflow gc`)",
    "MLflow purges deleted runs, logged models and experiments only through these store "
    "methods, which its `mlflow gc` command calls; the command itself stops at the first run "
    "whose artifacts it cannot delete and cannot resolve proxied artifacts without a server",
)
def _check_gc_store_methods() -> None:
    import re

    from mlflow import cli
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    expected = {
        "_get_deleted_runs": ["self", "older_than"],
        "_get_deleted_logged_models": ["self", "older_than"],
        "_hard_delete_run": ["self", "run_id"],
        "_hard_delete_logged_model": ["self", "model_id"],
        "_hard_delete_experiment": ["self", "experiment_id"],
    }
    for name, parameters in expected.items():
        signature = inspect.signature(getattr(SqlAlchemyStore, name))
        assert list(signature.parameters) == parameters, f"{name}{signature}"
    # If MLflow's own gc starts doing more (or other) steps, the maintenance command must follow.
    source = inspect.getsource(cli._gc_tracking_resources)
    called = set(re.findall(r"backend_store\.(\w+)\(", source))
    assert called == GC_STORE_CALLS, (
        f"`mlflow gc` now calls {sorted(called - GC_STORE_CALLS)} and no longer "
        f"{sorted(GC_STORE_CALLS - called)} on the store"
    )
    assert "delete_artifacts()" in source, "`mlflow gc` no longer deletes artifacts itself"


def proxied_artifact_path(artifact_uri: str) -> str:
    """Where the server stores a proxied artifact location (``mlflow-artifacts:/1/abc/artifacts``
    or its http(s) form), as a path under ``--artifacts-destination``."""
    from mlflow.server import handlers

    path: str = handlers._get_proxied_run_artifact_destination_path(artifact_uri)  # type: ignore[no-untyped-call]
    return path


@internal(
    "mlflow",
    "mlflow.server.handlers._get_proxied_run_artifact_destination_path",
    "only the server's own handlers map an mlflow-artifacts:/ location to its place under "
    "--artifacts-destination; a client-side `mlflow gc` sends it over HTTP to a running server",
)
def _check_proxied_artifact_path() -> None:
    cases = {
        "mlflow-artifacts:/1/abc/artifacts": "1/abc/artifacts",
        "mlflow-artifacts://host:5000/2/models/m-1/artifacts": "2/models/m-1/artifacts",
        "https://h/api/2.0/mlflow-artifacts/artifacts/3/r/artifacts": "3/r/artifacts",
    }
    for uri, path in cases.items():
        assert proxied_artifact_path(uri) == path, f"{uri} -> {proxied_artifact_path(uri)}"


@internal(
    "mlflow",
    "mlflow/store/db_migrations (the Alembic scripts `mlflow db upgrade` runs)",
    "no public MLflow function names its schema's newest revision; the release phase compares "
    "it with the database's before it migrates",
)
def _check_mlflow_migrations_directory() -> None:
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils

    directory = mlflow_migrations_directory()
    config = utils._get_alembic_config("")  # type: ignore[no-untyped-call]
    used = config.get_main_option("script_location")
    assert used is not None, "MLflow's Alembic config names no script_location"
    assert Path(used).resolve() == directory.resolve(), f"`mlflow db upgrade` now runs {used}"
    heads = ScriptDirectory(str(directory)).get_heads()
    assert len(heads) == 1, f"MLflow's migrations have {len(heads)} heads: {heads}"


# The variables `mlflow server` (mlflow/server/__init__.py, _run_server) sets for the app it
# launches. The runtime launches MLflow's app without the CLI (its resident process costs
# memory and start time), so it sets them itself; names only, so the supervisor stays light.
BACKEND_STORE_VARIABLE = "_MLFLOW_SERVER_FILE_STORE"
REGISTRY_STORE_VARIABLE = "_MLFLOW_SERVER_REGISTRY_STORE"
SERVER_ENVIRONMENT_NAMES = {
    # MLflow's Python name of each variable -> the variable
    "BACKEND_STORE_URI_ENV_VAR": BACKEND_STORE_VARIABLE,
    "REGISTRY_STORE_URI_ENV_VAR": REGISTRY_STORE_VARIABLE,
    "ARTIFACT_ROOT_ENV_VAR": "_MLFLOW_SERVER_ARTIFACT_ROOT",
    "SERVE_ARTIFACTS_ENV_VAR": "_MLFLOW_SERVER_SERVE_ARTIFACTS",
    "ARTIFACTS_DESTINATION_ENV_VAR": "_MLFLOW_SERVER_ARTIFACT_DESTINATION",
    "_MLFLOW_SERVER_BOOT_ID": "_MLFLOW_SERVER_BOOT_ID",
    "_MLFLOW_IN_JOB_EXECUTOR": "_MLFLOW_IN_JOB_EXECUTOR",
    "_MLFLOW_SGI_NAME": "_MLFLOW_SGI_NAME",
}
# What _run_server sets only for options this image does not use (read replica, artifacts-only
# mode, static prefix, Prometheus, the secrets cache, and job execution: this launch starts no
# job runner), and the basic-auth app's two, which accounts mode sets itself (settings.py).
SERVER_ENVIRONMENT_UNUSED = frozenset(
    {
        "HUEY_STORAGE_PATH_ENV_VAR",
        "_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN",
        "READ_REPLICA_BACKEND_STORE_URI_ENV_VAR",
        "ARTIFACTS_ONLY_ENV_VAR",
        "STATIC_PREFIX_ENV_VAR",
        "PROMETHEUS_EXPORTER_ENV_VAR",
        "SECRETS_CACHE_TTL_ENV_VAR",
        "SECRETS_CACHE_MAX_SIZE_ENV_VAR",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED",
    }
)


def mlflow_server_environment(
    backend_store_uri: str, artifacts_destination: str, boot_id: str
) -> dict[str, str]:
    """The environment `mlflow server --serve-artifacts` gives a uvicorn-served app."""
    values = {
        BACKEND_STORE_VARIABLE: backend_store_uri,
        REGISTRY_STORE_VARIABLE: backend_store_uri,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": artifacts_destination,
        "_MLFLOW_SERVER_BOOT_ID": boot_id,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
        "_MLFLOW_SGI_NAME": "uvicorn",
    }
    assert set(values) == set(SERVER_ENVIRONMENT_NAMES.values())
    return values


@internal(
    "mlflow",
    "the _MLFLOW_SERVER_* environment `mlflow server` gives its app (mlflow.server._run_server)",
    "the runtime launches MLflow's app without the CLI and must set what the CLI would",
)
def _check_server_environment() -> None:
    import re

    import mlflow.environment_variables as variables
    import mlflow.server
    import mlflow.server.constants as constants

    for python_name, variable in SERVER_ENVIRONMENT_NAMES.items():
        value = getattr(constants, python_name, None) or getattr(variables, python_name).name
        assert value == variable, f"{python_name} is now {value!r}, not {variable!r}"
    source = inspect.getsource(mlflow.server._run_server)
    set_there = set(re.findall(r"env_map\[(\w+)(?:\.name)?\]", source))
    unknown = set_there - set(SERVER_ENVIRONMENT_NAMES) - SERVER_ENVIRONMENT_UNUSED
    assert not unknown, f"`mlflow server` now also sets {sorted(unknown)} for its app"
    missing = set(SERVER_ENVIRONMENT_NAMES) - set_there
    assert not missing, f"`mlflow server` no longer sets {sorted(missing)}"


# ----------------------------------------------------------------------------- SQLAlchemy


def forget_connection(entry: ConnectionPoolEntry) -> None:
    """Drop a pooled DBAPI connection without closing it, as SQLAlchemy's recipe for a forked
    child does (docs: "Using Connection Pools with Multiprocessing or os.fork()"): its socket
    belongs to the parent. The entry opens a new connection at its next checkout."""
    entry.dbapi_connection = None  # type: ignore[misc]  # a slot of its concrete subclass


@internal(
    "sqlalchemy",
    "ConnectionPoolEntry.dbapi_connection = None (reconnect at next checkout, old one untouched)",
    "SQLAlchemy has no public call that forgets one pooled connection without closing it",
)
def _check_forget_connection() -> None:
    import sqlalchemy
    from sqlalchemy.pool import QueuePool

    engine = sqlalchemy.create_engine("sqlite://", poolclass=QueuePool, pool_size=1)
    checked_out: list[tuple[Any, Any]] = []
    sqlalchemy.event.listen(
        engine.pool, "checkout", lambda dbapi, entry, proxy: checked_out.append((entry, dbapi))
    )
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        entry, forgotten = checked_out[0]
        forget_connection(entry)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        assert checked_out[1][1] is not forgotten, "the entry handed out the forgotten connection"
        forgotten.execute("SELECT 1")  # still open: forgetting must not close it
        forgotten.close()
    finally:
        engine.dispose()


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


STARLETTE_WSGI_DEPRECATION = "starlette.middleware.wsgi is deprecated"


def wsgi_environ(scope: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ of one request, built as MLflow's own mount of Flask (Starlette's
    WSGIMiddleware) builds it, so Flask sees the same through the runtime's bridge."""
    return _starlette_build_environ()(scope, body)


@functools.cache
def _starlette_build_environ() -> Callable[[Mapping[str, Any], bytes], dict[str, Any]]:
    with warnings.catch_warnings():
        # Deprecated in Starlette, not removed; the warning is about the module MLflow mounts.
        warnings.filterwarnings("ignore", message=STARLETTE_WSGI_DEPRECATION)
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


@internal(
    "starlette",
    f"the text of starlette.middleware.wsgi's warning ({STARLETTE_WSGI_DEPRECATION!r}...)",
    "MLflow mounts Flask through that deprecated module; asgi.py keeps the warning, addressed "
    "to MLflow, out of the dyno's log by its text (its class covers all of Starlette's)",
)
def _check_starlette_wsgi_deprecation() -> None:
    spec = importlib.util.find_spec("starlette.middleware.wsgi")
    assert spec is not None, "starlette.middleware.wsgi is gone"
    assert spec.origin is not None, "starlette.middleware.wsgi has no source file"
    with open(spec.origin, encoding="utf-8") as source:
        assert f'"{STARLETTE_WSGI_DEPRECATION}' in source.read(), "its warning's text changed"


# ----------------------------------------------------------------------------- MLflow's auth app
# (accounts mode: accounts.py, asgi.py). `mlflow server --app-name basic-auth` runs it; the
# runtime runs its app factory itself (public: the "basic-auth" entry point of "mlflow.app").

# `mlflow server --app-name basic-auth` creates the admin once, then tells its workers so
# through this variable; the runtime's migration step does the same (accounts.py).
ADMIN_BOOTSTRAPPED_VARIABLE = "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"


@internal(
    "mlflow",
    f"{ADMIN_BOOTSTRAPPED_VARIABLE} (workers skip the admin bootstrap)",
    "only this variable keeps every worker from creating the admin again, as "
    "`mlflow server --app-name basic-auth` does for its workers",
)
def _check_admin_bootstrapped_variable() -> None:
    import mlflow.environment_variables as variables
    import mlflow.server.auth as auth

    assert variables._MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name == ADMIN_BOOTSTRAPPED_VARIABLE
    source = inspect.getsource(auth._init_store_for_app)
    assert "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.get()" in source, "the workers no longer read it"
    assert "bootstrap_admin_user()" in source, "the bootstrap it skips moved"


# MLflow's public default for MLFLOW_CRYPTO_KEK_PASSPHRASE (mlflow/utils/crypto.py), which the
# settings refuse by value. Here so the light prepare step needs no MLflow import.
MLFLOW_DEFAULT_KEK_PASSPHRASE = "mlflow-default-kek-passphrase-for-development-only"  # noqa: S105


@internal(
    "mlflow",
    "mlflow.utils.crypto.DEFAULT_KEK_PASSPHRASE",
    "the settings refuse MLflow's public default passphrase by its value",
)
def _check_default_kek_passphrase() -> None:
    from mlflow.utils import crypto

    assert crypto.DEFAULT_KEK_PASSPHRASE == MLFLOW_DEFAULT_KEK_PASSPHRASE, "it changed"
    assert crypto.CRYPTO_KEK_PASSPHRASE_ENV_VAR == "MLFLOW_CRYPTO_KEK_PASSPHRASE"  # noqa: S105


def upgrade_accounts_schema(url: str) -> None:
    """What ``python -m mlflow.server.auth db upgrade --url URL`` does: create the auth app's
    tables (users, roles, permissions; Alembic table alembic_version_auth) or bring them to
    the newest revision."""
    from mlflow.server.auth.db.cli import upgrade

    if upgrade.callback is None:  # the installed-version check names this too
        raise RuntimeError("the auth db upgrade command has no callback: see test_internals.py")
    upgrade.callback(url, "head")


@internal(
    "mlflow",
    "mlflow.server.auth.db.cli.upgrade.callback (the body of `python -m mlflow.server.auth db "
    "upgrade`)",
    "the auth app migrates its schema otherwise only inside every worker's start, outside the "
    "runtime's migration lock",
)
def _check_accounts_upgrade_command() -> None:
    import click
    from mlflow.server.auth.db.cli import upgrade

    assert isinstance(upgrade, click.Command), f"it is a {type(upgrade)}"
    assert [parameter.name for parameter in upgrade.params] == ["url", "revision"], upgrade.params
    assert upgrade.callback is not None, "the command has no callback"
    assert list(inspect.signature(upgrade.callback).parameters) == ["url", "revision"]


# The auth store's methods accounts.py calls, with their parameters (self left out).
ACCOUNTS_STORE_METHODS = {
    "init_db": ["db_uri", "read_db_uri"],
    "has_user": ["username", "use_primary"],
    "get_user": ["username"],
    "create_user": ["username", "password", "is_admin"],
    "update_user": ["username", "password", "is_admin"],
    "delete_user": ["username"],
    "authenticate_user": ["username", "password", "use_primary"],
    "create_role": ["name", "workspace", "description"],
    "get_role_by_name": ["workspace", "name"],
    "list_role_permissions": ["role_id"],
    "add_role_permission": ["role_id", "resource_type", "resource_pattern", "permission"],
    "remove_role_permission": ["role_permission_id"],
    "list_user_roles": ["user_id"],
    "assign_role_to_user": ["user_id", "role_id"],
    "unassign_role_from_user": ["user_id", "role_id"],
}


def accounts_store(url: str) -> Any:
    """The auth app's user and role store on ``url``, opened (the schema must be current)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(url)  # type: ignore[no-untyped-call]
    return store


def close_accounts_store(store: Any) -> None:
    """Close the connections of a store from ``accounts_store``."""
    store.engine.dispose()


@internal(
    "mlflow",
    "mlflow.server.auth.sqlalchemy_store.SqlAlchemyStore (users, roles, role permissions)",
    "the auth app offers its users and roles only over HTTP, and the migration step runs "
    "before any server does",
)
def _check_accounts_store() -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    for method, parameters in ACCOUNTS_STORE_METHODS.items():
        found = list(inspect.signature(getattr(SqlAlchemyStore, method)).parameters)[1:]
        assert found == parameters, f"{method} takes {found}, not {parameters}"
    assert "self.engine = " in inspect.getsource(SqlAlchemyStore.init_db), "its engine moved"


def cache_authorization_lookups() -> None:
    """Keep what MLflow's auth app looks up for each request's permission check in this
    worker for as long as its own credential cache keeps a checked login
    (``auth_cache_ttl_seconds`` of its config, MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS; 0: off).

    Without this, each tracking call costs the check about ten queries: the caller's account
    (twice), its grants, and the whole run (params, tags, metrics) only to learn its
    experiment; that tripled a log-metric's CPU time (docs/image.md, "Accounts"). Cached:

    * an account by name and its grants, for that long, cleared in this worker by any write
      to the auth store here (a password, an admin flag, a deletion, a grant, a role); other
      workers see a change within that time, as with MLflow's credential cache;
    * a run's experiment, which never changes, with no time limit.

    A check that refuses is made once more on fresh grants, so a permission given in one worker
    works at once in the others (an account that creates an experiment is given MANAGE on it,
    and its next call may reach another worker); only taking one back waits for the cache."""
    import threading
    import types

    import mlflow.server.auth
    from cachetools import LRUCache, TTLCache

    auth: Any = mlflow.server.auth  # its names are undocumented
    ttl_seconds = auth.auth_config.auth_cache_ttl_seconds
    if ttl_seconds <= 0:
        return

    store = auth.store
    lock = threading.Lock()
    accounts: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=ttl_seconds)
    grants: TTLCache[tuple[Any, ...], tuple[Any, ...]] = TTLCache(maxsize=10_000, ttl=ttl_seconds)
    writes = [0]  # a write (or a fresh look) between a lookup and its caching voids that entry
    read_account, read_grants, open_session = (
        store.get_user,
        store.list_grants,
        store.ManagedSessionMaker,
    )

    def cached(cache: Any, key: Any, read: Callable[[], Any]) -> Any:
        with lock:
            found = cache.get(key)
            before = writes[0]
        if found is None:
            found = read()  # raises for an unknown account: nothing is cached then
            with lock:
                if writes[0] == before:
                    cache[key] = found
        return found

    def get_user(username: str) -> Any:
        return cached(accounts, username, lambda: read_account(username))

    def list_grants(user_id: int, workspace: str, resource_types: Any) -> list[Any]:
        key = (user_id, workspace, frozenset(resource_types))
        return list(cached(grants, key, lambda: tuple(read_grants(user_id, workspace, key[2]))))

    def forget_grants() -> None:
        with lock:
            writes[0] += 1
            grants.clear()

    def checked_twice(validator: Any) -> Any:
        """A Flask validator that, before it refuses, looks again with fresh grants."""
        if validator is None:
            return None

        def check() -> bool:
            if validator():
                return True
            forget_grants()
            return bool(validator())

        return check

    def checked_twice_async(validator: Any) -> Any:
        if validator is None:
            return None

        async def check(username: str, request: Any) -> bool:
            if await validator(username, request):
                return True
            forget_grants()
            return bool(await validator(username, request))

        return check

    @contextlib.contextmanager
    def session(read_only: bool = True) -> Any:
        try:
            with open_session(read_only=read_only) as opened:
                yield opened
        finally:
            if not read_only:
                with lock:
                    writes[0] += 1
                    accounts.clear()
                    grants.clear()

    store.get_user, store.list_grants, store.ManagedSessionMaker = get_user, list_grants, session
    find_validator = auth._find_validator
    find_proxy_validator = auth._get_proxy_artifact_validator
    find_fastapi_validator = auth._find_fastapi_validator
    auth._find_validator = lambda request: checked_twice(find_validator(request))
    auth._get_proxy_artifact_validator = lambda method, view_args: checked_twice(
        find_proxy_validator(method, view_args)
    )
    auth._find_fastapi_validator = lambda path, method: checked_twice_async(
        find_fastapi_validator(path, method)
    )

    tracking_store = auth._get_tracking_store
    experiment_of_run: LRUCache[str, str] = LRUCache(maxsize=50_000)

    class RunExperiments:
        """The tracking store as the auth checks see it: a run is only its experiment."""

        def __init__(self, store: Any) -> None:
            self.store = store

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        def get_run(self, run_id: str) -> Any:
            with lock:
                experiment_id = experiment_of_run.get(run_id)
            if experiment_id is None:
                experiment_id = self.store.get_run(run_id).info.experiment_id
                with lock:
                    experiment_of_run[run_id] = experiment_id
            return types.SimpleNamespace(
                info=types.SimpleNamespace(run_id=run_id, experiment_id=experiment_id)
            )

    auth._get_tracking_store = lambda: RunExperiments(tracking_store())


@internal(
    "mlflow",
    "mlflow.server.auth.store (get_user, list_grants, ManagedSessionMaker), "
    "_find_validator, _get_proxy_artifact_validator, _find_fastapi_validator and "
    "mlflow.server.auth._get_tracking_store (get_run: only a run's experiment)",
    "the auth app looks the account, its grants and the whole run up again on every request "
    "and offers no cache for them",
)
def _check_authorization_lookups() -> None:
    import re

    import mlflow.server.auth

    auth: Any = mlflow.server.auth
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    from mlflow.store.db import utils

    assert isinstance(auth.store, SqlAlchemyStore), "the auth app's store moved"
    assert isinstance(auth.auth_config.auth_cache_ttl_seconds, int), "its cache setting moved"
    parameters = list(inspect.signature(SqlAlchemyStore.get_user).parameters)
    assert parameters == ["self", "username"], parameters
    parameters = list(inspect.signature(SqlAlchemyStore.list_grants).parameters)
    assert parameters == ["self", "user_id", "workspace", "resource_types"], parameters
    # Every validator the checks run comes from these finders, looked up when a request comes.
    finders = {
        "_before_request": ["_find_validator(request)", "_get_proxy_artifact_validator("],
        "add_fastapi_permission_middleware": ["_find_fastapi_validator(path, request.method)"],
    }
    for function, calls in finders.items():
        source = inspect.getsource(getattr(auth, function))
        for call in calls:
            assert call in source, f"{function} no longer calls {call}"
    assert list(inspect.signature(auth._find_validator).parameters) == ["req"]
    assert list(inspect.signature(auth._get_proxy_artifact_validator).parameters) == [
        "method",
        "view_args",
    ]
    assert list(inspect.signature(auth._find_fastapi_validator).parameters) == ["path", "method"]
    assert "self.ManagedSessionMaker = " in inspect.getsource(SqlAlchemyStore.init_db)
    assert "def make_managed_session(read_only=True)" in inspect.getsource(
        utils._get_managed_session_maker
    ), "sessions are no longer marked read-only by default"
    writes = inspect.getsource(SqlAlchemyStore).count("ManagedSessionMaker(read_only=False)")
    assert writes >= 20, f"the store writes through {writes} sessions marked so: others exist"
    # Every run the auth checks fetch is only asked for its experiment.
    fetching = (
        "_run_requirement",
        "validate_can_read_metric_history_bulk",
        "_graphql_get_permission_for_run",
    )
    fetches = len(re.findall(r"\.get_run\b", inspect.getsource(auth)))
    assert fetches == len(fetching), f"the auth app fetches runs in {fetches} places"
    for name in fetching:
        source = inspect.getsource(getattr(auth, name))
        asked = set(re.findall(r"\brun\.(\w+\.\w+)", source))
        asked |= set(re.findall(r"get_run\(\w+\)\.(\w+\.\w+)", source))
        assert asked == {"info.experiment_id"}, f"{name} reads {asked} of a run"
    assert callable(auth._get_tracking_store), "_get_tracking_store is gone"
