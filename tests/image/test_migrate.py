"""The migration child (`python -m mlflow_heroku_runtime.migrate`) and the wait for its flag."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from mlflow_heroku_runtime.database_url import to_sqlalchemy_url
from mlflow_heroku_runtime.migrate import MIGRATION_LOCK_KEY

from tests.support.older_mlflow import (
    installed_head_revision,
    installed_migrations,
    older_database,
    older_head_revision,
    schema_revision,
)
from tests.support.services import (
    ENTRYPOINT,
    PostgresCluster,
    S3Server,
    free_port,
    heroku_env,
    own_database,
    start_stack,
)


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


def _migration_env(url: str) -> dict[str, str]:
    """The environment the supervisor gives its migration child."""
    return {
        **os.environ,
        "PYTHONPATH": str(ENTRYPOINT.parent),
        "_MLFLOW_SERVER_FILE_STORE": url,
        "_MLFLOW_HEROKU_DB_DESCRIPTION": "the test database",
        "MLFLOW_HEROKU_DB_WAIT_SECONDS": "5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def _migrate(url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The supervisor's migration child, as the supervisor runs it (``extra``: e.g. DYNO)."""
    import sys

    env = {**_migration_env(url), **extra}
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


def _database_at(database: Path, revision: str) -> None:
    """A SQLite database whose Alembic revision is ``revision`` and whose only MLflow table
    is a stub."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        connection.commit()


def test_a_failed_migration_exits_4_naming_the_cause(tmp_path: Path) -> None:
    """MLflow's first revision, with tables that are not what it says: the upgrade fails."""
    database = tmp_path / "mlflow.db"
    (first,) = installed_migrations().get_bases()
    _database_at(database, first)
    failed = _migrate(f"sqlite:///{database}")
    assert failed.returncode == 4, failed.stderr
    assert "migrate: schema migration of the test database failed: OperationalError: no such " in (
        failed.stderr
    )


def test_a_schema_newer_than_the_image_exits_4_saying_what_to_do(tmp_path: Path) -> None:
    """A rollback to an image older than the database's schema: MLflow cannot serve it."""
    import mlflow

    database = tmp_path / "mlflow.db"
    _database_at(database, "0123456789ab")
    for dyno in (None, "web.1"):
        env = {"DYNO": dyno} if dyno else {}
        failed = _migrate(f"sqlite:///{database}", **env)
        assert failed.returncode == 4, failed.stderr
        assert (
            "migrate: the test database is at schema revision 0123456789ab, which this image's "
            f"MLflow {mlflow.__version__} (newest revision {installed_head_revision()}) does not "
            "know: a newer release migrated it. Release the newer image again, or restore the "
            "backup taken before that upgrade" in failed.stderr
        )
        assert _schema_revision(database) == "0123456789ab"


@pytest.mark.integration
def test_a_web_dyno_leaves_an_older_schema_to_the_release_phase(
    postgres: PostgresCluster,
) -> None:
    """On a dyno, a database behind the image is not upgraded at boot (that would skip the
    release phase's backup and pause of the writers): exit 5, one line saying what migrates.
    Off a dyno (local runs, tests) the same database is upgraded at boot."""
    with older_database(postgres, "web_dyno") as (name, url):
        database = to_sqlalchemy_url(url).render_as_string(hide_password=False)
        refused = _migrate(database, DYNO="web.1")
        assert refused.returncode == 5, refused.stderr
        assert schema_revision(postgres, name) == older_head_revision()
        (line,) = refused.stderr.splitlines()
        assert line == (
            f"migrate: the test database is at schema revision {older_head_revision()}, this "
            f"image's MLflow needs {installed_head_revision()}: not migrating from a web dyno. "
            "The release phase migrates: release both the web and the release process types "
            "(pulumi up does), or run `python -m mlflow_heroku_runtime.release_phase` in a "
            "one-off dyno (heroku run)"
        )
        migrated = _migrate(database)
        assert migrated.returncode == 0, migrated.stderr
        assert schema_revision(postgres, name) == installed_head_revision()


@pytest.fixture
def empty_postgres_database(postgres: PostgresCluster) -> Iterator[str]:
    """A new, empty database in the session's cluster; its SQLAlchemy URL."""
    with own_database(postgres, "migrate") as (_name, url):
        yield to_sqlalchemy_url(url).render_as_string(hide_password=False)


def _migration_child(url: str) -> subprocess.Popen[str]:
    env = _migration_env(url)
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow_heroku_runtime.migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_a_migration_waits_while_another_process_holds_the_lock(
    empty_postgres_database: str,
) -> None:
    """The schema has one writer: while the lock is held (here by the test, as by another
    dyno's migration), the child waits and touches nothing; once it is free, it migrates."""
    from sqlalchemy.engine import make_url

    url = make_url(empty_postgres_database)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        autocommit=True,
    ) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        child = _migration_child(empty_postgres_database)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(8)
            tables = holder.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
            assert tables == (0,), "the waiting child created tables"
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            _out, err = child.communicate(timeout=120)
        finally:
            child.kill()
            child.wait()
        assert child.returncode == 0, err
        assert "waiting for another process's migration of the test database" in err
        assert "creating MLflow's tables in the test database" in err
        (revision,) = holder.execute("SELECT version_num FROM alembic_version").fetchone() or ("",)
    assert revision


@pytest.mark.integration
def test_two_dynos_booting_at_once_on_an_empty_database_migrate_it_once(
    postgres: PostgresCluster, s3: S3Server, empty_postgres_database: str
) -> None:
    """Two entrypoints start together on one empty database: one creates the schema, the
    other waits for it, and both serve."""
    name = empty_postgres_database.rsplit("/", 1)[1]
    database_url = postgres.url.rsplit("/", 1)[0] + f"/{name}"
    envs = [
        heroku_env(port=free_port(), database_url=database_url, s3=s3, s3_prefix=f"{name}-{i}")
        for i in range(2)
    ]
    with contextlib.ExitStack() as running:
        stacks = [start_stack(env, wait_ready=False) for env in envs]
        for stack in stacks:
            running.callback(stack.stop)
        for stack in stacks:
            stack.wait_ready(120)
        outputs = [stack.output() for stack in stacks]
        for stack in stacks:
            reply = requests.get(
                f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1",
                auth=stack.auth,
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
    created = [output for output in outputs if "creating MLflow's tables" in output]
    assert len(created) == 1, outputs
    assert not any("migration of" in output and "failed" in output for output in outputs)
