"""Every private name of another package the runtime uses (internals.py), checked against the
installed versions; and no runtime module but internals.py reaches for one."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import pytest
from mlflow_heroku_runtime import internals

from tests.support.services import ENTRYPOINT

RUNTIME = ENTRYPOINT.parent / "mlflow_heroku_runtime"
# Documented despite the underscore.
PUBLIC_UNDERSCORE_NAMES = {"os._exit"}


@pytest.mark.parametrize("entry", internals.INTERNALS, ids=lambda entry: entry.name)
def test_the_installed_version_still_provides(
    entry: internals.Internal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(internals, "INTERNALS", [entry])
    problems = internals.broken()
    assert problems == [], "\n".join(problems)


def _break_forget_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if SQLAlchemy kept handing out a connection whose entry was told to forget it.
    monkeypatch.setattr(internals, "forget_connection", lambda entry: None)


def _break_upgrade_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import click
    from mlflow.db import upgrade

    monkeypatch.setattr(upgrade, "params", [*upgrade.params, click.Option(["--yes"])])


def _break_s3_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    monkeypatch.delattr(S3ArtifactRepository, "_get_s3_client")


def _break_handlers_cache(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    def breaker(monkeypatch: pytest.MonkeyPatch) -> None:
        from mlflow.server import handlers

        monkeypatch.delattr(handlers, name)

    return breaker


def _break_arbiter(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

    monkeypatch.delattr(Arbiter, "WORKERS")


def _break_worker_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.workers.base import Worker  # type: ignore[import-untyped]

    def init_keeping_listeners_elsewhere(self: object, *args: object) -> None:
        pass

    monkeypatch.setattr(Worker, "__init__", init_keeping_listeners_elsewhere)


def _break_uvicorn_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn_worker import UvicornWorker

    monkeypatch.delattr(UvicornWorker, "CONFIG_KWARGS")


def _break_uvicorn_log_config(monkeypatch: pytest.MonkeyPatch) -> None:
    def moved() -> str:
        raise FileNotFoundError("MLflow's uvicorn logging config is not at the old path")

    monkeypatch.setattr(internals, "mlflow_uvicorn_log_config", moved)


def _break_gc_store_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if MLflow's gc started purging one more kind of thing through the store.
    monkeypatch.setattr(
        internals, "GC_STORE_CALLS", internals.GC_STORE_CALLS - {"_hard_delete_experiment"}
    )


def _break_proxied_artifact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server import handlers

    monkeypatch.setattr(
        handlers, "_get_proxied_run_artifact_destination_path", lambda uri, path=None: uri
    )


def _break_admin_bootstrapped_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.environment_variables as variables

    monkeypatch.setattr(
        variables._MLFLOW_AUTH_ADMIN_BOOTSTRAPPED, "name", "_MLFLOW_AUTH_BOOTSTRAPPED"
    )


def _break_accounts_upgrade_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.db.cli import upgrade

    monkeypatch.setattr(upgrade, "params", upgrade.params[:1])


def _break_accounts_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    def delete_user(self: object, username: str, cascade: bool) -> None:
        pass

    monkeypatch.setattr(SqlAlchemyStore, "delete_user", delete_user)


def _break_authorization_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.server.auth

    auth: Any = mlflow.server.auth

    def run_requirement(run_id: str, action: str) -> object:
        run = auth._get_tracking_store().get_run(run_id)
        return run.info.lifecycle_stage  # a run's other fields, which the cache leaves out

    monkeypatch.setattr(auth, "_run_requirement", run_requirement)


# How an upgrade could break each entry. Every registered entry needs one (see the test below):
# a check that cannot fail proves nothing.
def _break_migrations_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if MLflow moved its migrations: the directory named here is no longer what it runs.
    monkeypatch.setattr(
        internals, "mlflow_migrations_directory", lambda: ENTRYPOINT.parent / "db_migrations"
    )


BREAKERS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "mlflow.server.handlers._get_tracking_store": _break_handlers_cache("_tracking_store"),
    "mlflow.server.handlers._get_artifact_repo_mlflow_artifacts": _break_handlers_cache(
        "_artifact_repo"
    ),
    "mlflow.store.artifact.s3_artifact_repo.S3ArtifactRepository._get_s3_client": (
        _break_s3_client
    ),
    "mlflow.db.upgrade.callback (the body of `mlflow db upgrade URL`)": _break_upgrade_command,
    "ConnectionPoolEntry.dbapi_connection = None (reconnect at next checkout, old one "
    "untouched)": _break_forget_connection,
    "gunicorn.arbiter.Arbiter.WORKERS, .LISTENERS, .num_workers": _break_arbiter,
    "gunicorn.workers.base.Worker.sockets, gunicorn.sock.BaseSocket.sock": _break_worker_sockets,
    "uvicorn_worker.UvicornWorker.CONFIG_KWARGS": _break_uvicorn_worker,
    "mlflow/server/uvicorn_log_config.yaml": _break_uvicorn_log_config,
    "SqlAlchemyStore._get_deleted_runs, _get_deleted_logged_models, _hard_delete_run, "
    "_hard_delete_logged_model, _hard_delete_experiment (the steps of `mlflow gc`)": (
        _break_gc_store_methods
    ),
    "mlflow.server.handlers._get_proxied_run_artifact_destination_path": (
        _break_proxied_artifact_path
    ),
    "mlflow/store/db_migrations (the Alembic scripts `mlflow db upgrade` runs)": (
        _break_migrations_directory
    ),
    "the _MLFLOW_SERVER_* environment `mlflow server` gives its app "
    "(mlflow.server._run_server)": lambda patch: patch.setitem(
        internals.SERVER_ENVIRONMENT_NAMES, "SERVE_ARTIFACTS_ENV_VAR", "_MLFLOW_SERVE_ARTIFACTS"
    ),
    "starlette.middleware.wsgi.build_environ": lambda patch: patch.setattr(
        internals, "_starlette_build_environ", lambda: lambda scope, body: {}
    ),
    "the text of starlette.middleware.wsgi's warning ('starlette.middleware.wsgi is "
    "deprecated'...)": lambda patch: patch.setattr(
        internals, "STARLETTE_WSGI_DEPRECATION", "starlette.middleware.wsgi is gone"
    ),
    # MLflow's auth app (accounts mode)
    "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED (workers skip the admin bootstrap)": (
        _break_admin_bootstrapped_variable
    ),
    "mlflow.utils.crypto.DEFAULT_KEK_PASSPHRASE": lambda patch: patch.setattr(
        internals, "MLFLOW_DEFAULT_KEK_PASSPHRASE", "another-default"
    ),
    "mlflow.server.auth.db.cli.upgrade.callback (the body of `python -m mlflow.server.auth db "
    "upgrade`)": _break_accounts_upgrade_command,
    "mlflow.server.auth.sqlalchemy_store.SqlAlchemyStore (users, roles, role permissions)": (
        _break_accounts_store
    ),
    "mlflow.server.auth.store (get_user, list_grants, ManagedSessionMaker), "
    "_find_validator, _get_proxy_artifact_validator, _find_fastapi_validator and "
    "mlflow.server.auth._get_tracking_store (get_run: only a run's experiment)": (
        _break_authorization_lookups
    ),
}


def test_every_entry_has_a_way_to_break_it() -> None:
    assert sorted(BREAKERS) == sorted(entry.name for entry in internals.INTERNALS)


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_each_check_fails_when_its_name_breaks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (entry,) = [entry for entry in internals.INTERNALS if entry.name == name]
    monkeypatch.setattr(internals, "INTERNALS", [entry])
    BREAKERS[name](monkeypatch)
    (problem,) = internals.broken()
    assert problem.startswith(f"{entry.package} ")
    assert f": {name} changed (" in problem
    assert problem.endswith(f"it is used because {entry.why}")


def test_a_broken_entry_is_named_with_its_package_version_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    def gone() -> None:
        raise AttributeError("module 'mlflow.server.handlers' has no attribute '_gone'")

    fine = internals.Internal("mlflow", "mlflow.fine", "it is fine", lambda: None)
    broken = internals.Internal("mlflow", "mlflow.server.handlers._gone", "nothing else does", gone)
    monkeypatch.setattr(internals, "INTERNALS", [fine, broken])
    assert internals.broken() == [
        f"mlflow {importlib.metadata.version('mlflow')}: mlflow.server.handlers._gone changed "
        "(AttributeError: module 'mlflow.server.handlers' has no attribute '_gone'); it is "
        "used because nothing else does"
    ]


def private_names_used(source: str) -> list[str]:
    """Each place ``source`` reaches for another object's underscore name: ``x._name``
    (``self``/``cls`` are the module's own), ``getattr(x, "_name")`` and friends, and
    ``from package import _name``; as "line: what", in line order."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            base = ast.unparse(node.value)
            if base not in ("self", "cls") and f"{base}.{node.attr}" not in PUBLIC_UNDERSCORE_NAMES:
                found.append(f"{node.lineno}: {base}.{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found += [
                f"{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return sorted(found, key=lambda place: int(place.split(":")[0]))


def test_the_scan_finds_each_way_of_reaching_a_private_name() -> None:
    source = (
        "from mlflow.server import handlers\n"
        "from mlflow.store.db.utils import _upgrade_db\n"
        "from __future__ import annotations\n"
        "handlers._get_tracking_store()\n"
        "getattr(store, '_engine_map', {})\n"
        "self._limiter = cls._made = None\n"
        "os._exit(0)\n"
        "x.__class__\n"
    )
    assert private_names_used(source) == [
        "2: from mlflow.store.db.utils import _upgrade_db",
        "4: handlers._get_tracking_store",
        "5: getattr(..., '_engine_map')",
    ]


def test_only_internals_reaches_into_other_packages_private_names() -> None:
    modules = sorted(RUNTIME.glob("*.py"))
    assert RUNTIME / "asgi.py" in modules  # the scan sees the runtime
    found = {
        module.name: used
        for module in modules
        if module.name != "internals.py"
        and (used := private_names_used(module.read_text(encoding="utf-8")))
    }
    assert found == {}, (
        f"move each use into a small function in internals.py with an @internal check: {found}"
    )
