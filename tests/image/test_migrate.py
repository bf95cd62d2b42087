"""The migration child (`python -m mlflow_heroku_runtime.migrate`) and the wait for its flag."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def _waiting_uvicorn(flag: Path, supervisor_pid: int) -> subprocess.Popen[str]:
    """A process doing what MLflow's uvicorn does at import: wait for the migration flag."""
    import sys

    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from mlflow_heroku_runtime.migrate import wait_for_migration;"
        "wait_for_migration(); print('migrated', flush=True)"
    )
    env = {
        **os.environ,
        "_MLFLOW_HEROKU_MIGRATED_FLAG": str(flag),
        "_MLFLOW_HEROKU_SUPERVISOR_PID": str(supervisor_pid),
    }
    return subprocess.Popen(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_app_waits_for_the_migration_flag(tmp_path: Path) -> None:
    """uvicorn holds the app back while the migration runs (for as long as it takes: there is
    no time limit to test, the wait has none) and goes on once the supervisor's flag exists."""
    flag = tmp_path / "migrated"
    waiting = _waiting_uvicorn(flag, os.getpid())
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(1.5)
        flag.touch()
        out, err = waiting.communicate(timeout=10)
        assert (waiting.returncode, out) == (0, "migrated\n"), err
    finally:
        waiting.kill()


@pytest.mark.parametrize("reaped", [True, False], ids=["exited", "zombie"])
def test_the_app_stops_waiting_when_the_supervisor_is_gone(tmp_path: Path, reaped: bool) -> None:
    """Also when the killed supervisor is a zombie its parent has not reaped yet."""
    import time

    gone = subprocess.Popen(["true"])
    if reaped:
        gone.wait()
    else:
        while Path(f"/proc/{gone.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
    waiting = _waiting_uvicorn(tmp_path / "never", gone.pid)
    try:
        out, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
    gone.wait()
    assert waiting.returncode == 1
    assert out == ""
    assert "the supervisor exited before the database was migrated" in err


def _migrate(url: str) -> subprocess.CompletedProcess[str]:
    """The supervisor's migration child, as the supervisor runs it."""
    import sys

    from tests.support.services import ENTRYPOINT

    env = {
        **os.environ,
        "PYTHONPATH": str(ENTRYPOINT.parent),
        "_MLFLOW_SERVER_FILE_STORE": url,
        "_MLFLOW_HEROKU_DB_DESCRIPTION": "the test database",
        "MLFLOW_HEROKU_DB_WAIT_SECONDS": "5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "mlflow_heroku_runtime.migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _schema_revision(database: Path) -> str:
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(revision)


def test_migration_creates_then_upgrades_mlflows_schema(tmp_path: Path) -> None:
    """An empty database gets MLflow's tables at the newest revision, as `mlflow db upgrade`
    leaves them; a second run finds the schema current and creates nothing."""
    import mlflow.store
    from alembic.script import ScriptDirectory

    database = tmp_path / "mlflow.db"
    created = _migrate(f"sqlite:///{database}")
    assert created.returncode == 0, created.stderr
    assert "migrate: creating MLflow's tables in the test database" in created.stderr
    assert "migrate: schema of the test database is up to date" in created.stderr
    heads = ScriptDirectory(str(Path(mlflow.store.__file__).parent / "db_migrations")).get_heads()
    assert [_schema_revision(database)] == heads

    again = _migrate(f"sqlite:///{database}")
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stderr
    assert "migrate: schema of the test database is up to date" in again.stderr
    assert [_schema_revision(database)] == heads


def test_a_failed_migration_exits_4_naming_the_cause(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        connection.commit()
    failed = _migrate(f"sqlite:///{database}")
    assert failed.returncode == 4, failed.stderr
    assert "migrate: schema migration of the test database failed:" in failed.stderr
    assert "0123456789ab" in failed.stderr  # alembic's own words: the unknown revision
