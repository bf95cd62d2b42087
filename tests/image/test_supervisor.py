"""The resident supervisor: light imports, redaction, the MLflow launch line, its one stop."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from mlflow_heroku_runtime.plan import UVICORN_OPTIONS, Plan
from mlflow_heroku_runtime.settings import load_settings
from mlflow_heroku_runtime.supervisor import Supervisor

from tests.image.runtime_values import ACCOUNTS_ENV, ACCOUNTS_SECRETS, GOOD_ENV


def _supervisor(ports: list[int]) -> Supervisor:
    settings = dataclasses.replace(load_settings(GOOD_ENV), workers=len(ports))
    plan = Plan(
        settings=settings,
        runtime_dir="/tmp/x",
        nginx_config="/tmp/x/nginx.conf",
        mlflow_ports=ports,
    )
    return Supervisor(plan)


def test_resident_supervisor_stays_light() -> None:
    """The supervisor lives as long as the dyno: no mlflow, SQLAlchemy, jinja2 or bcrypt."""
    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mlflow_heroku_runtime.supervisor;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'mlflow', 'sqlalchemy', 'jinja2', 'bcrypt', 'pandas', 'numpy', 'uvicorn',"
        " 'gunicorn'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_redactor_removes_every_secret_longest_first() -> None:
    from mlflow_heroku_runtime.supervisor import Redactor

    redact = Redactor(["p@ss:word", "p%40ss%3Aword", "p@ss", "abc"])
    line = "url postgresql://u:p%40ss%3Aword@h/d and p@ss:word and p@ss, abc stays"
    assert redact(line) == "url postgresql://u:***@h/d and *** and ***, abc stays"


def test_supervisor_binds_one_port_per_forked_worker_in_slot_order() -> None:
    """gunicorn gets every port of the plan as its own --bind, in slot order, and
    forked_workers as --config (its settings and pre_fork); one worker is uvicorn alone on
    the plan's one port."""
    forked = _supervisor([41000, 41001, 41002]).mlflow_argv()
    assert forked[1:3] == ["-m", "gunicorn"]
    assert [arg for arg in forked if arg.startswith("--bind")] == [
        "--bind=127.0.0.1:41000",
        "--bind=127.0.0.1:41001",
        "--bind=127.0.0.1:41002",
    ]
    assert forked[forked.index("--workers") + 1] == "3"
    assert forked[forked.index("--config") + 1] == "python:mlflow_heroku_runtime.forked_workers"
    alone = _supervisor([41000]).mlflow_argv()
    assert alone[1:3] == ["-m", "uvicorn"]
    assert alone[alone.index("--port") + 1] == "41000"


def test_both_launches_run_on_one_definition_of_uvicorns_settings() -> None:
    """uvicorn's own command-line parser reads the one worker's options back as exactly
    plan.UVICORN_OPTIONS, plus MLflow's logging config; the forked workers' uvicorn Config is
    built from the same keywords and the same file."""
    from mlflow_heroku_runtime.forked_workers import MlflowWorker
    from mlflow_heroku_runtime.internals import mlflow_uvicorn_log_config
    from uvicorn import main as uvicorn_command

    argv = _supervisor([41000]).mlflow_argv()
    context = uvicorn_command.make_context("uvicorn", argv[3:])
    expected = {**UVICORN_OPTIONS, "log_config": mlflow_uvicorn_log_config()}
    assert {name: context.params[name] for name in expected} == expected
    assert context.params["app"] == "mlflow_heroku_runtime.asgi:app"
    assert expected == MlflowWorker.CONFIG_KWARGS


def test_the_first_stop_reason_is_the_one_kept() -> None:
    supervisor = _supervisor([41000])
    supervisor.stop("received SIGTERM; stopping gracefully", 0)
    supervisor.stop("nginx exited unexpectedly (exit 0); stopping the rest", 1)
    assert supervisor.stopping is not None
    assert (supervisor.stopping.reason, supervisor.stopping.code) == (
        "received SIGTERM; stopping gracefully",
        0,
    )


def test_only_the_migration_step_gets_the_accounts_admin_and_people(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow_heroku_runtime.plan import MIGRATION_ONLY_VARIABLES
    from mlflow_heroku_runtime.supervisor import migration_only_environment

    for name, value in ACCOUNTS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(ACCOUNTS_ENV)
    plan = Plan(settings=settings, runtime_dir="/tmp/x", nginx_config="/x", mlflow_ports=[1])
    mlflow_env = Supervisor(plan).child_env()
    assert set(MIGRATION_ONLY_VARIABLES) & set(mlflow_env) == set()
    for secret in ACCOUNTS_SECRETS[3:]:
        assert secret not in " ".join(mlflow_env.values())
    assert migration_only_environment() == {
        name: ACCOUNTS_ENV[name] for name in MIGRATION_ONLY_VARIABLES
    }
    assert mlflow_env["MLFLOW_HEROKU_LOGIN_MODE"] == "accounts"
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
