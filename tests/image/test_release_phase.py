"""The release phase (release_phase.py), run as Heroku runs it: ``python image/entrypoint.py``
with DYNO=release.<N>, against real PostgreSQL (as a role without superuser that owns its
database, like Heroku's credential) and moto's S3; and what clients get while it holds the
database read-only."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.support.older_mlflow import (
    installed_head_revision,
    older_database,
    older_head_revision,
    schema_revision,
)
from tests.support.services import (
    LOOPBACK,
    PG_BIN,
    PostgresCluster,
    Role,
    S3Server,
    app_role,
    free_port,
    heroku_env,
    mlflow_ports_of,
    own_database,
    run_release_phase,
    running_stack,
    sql,
    start_release_phase,
)

pytestmark = pytest.mark.integration

READ_ONLY_SETTING = "default_transaction_read_only=on"


@pytest.fixture(scope="module")
def owner(postgres: PostgresCluster) -> Role:
    return app_role(postgres)


def release_env(database_url: str, s3: S3Server, prefix: str) -> dict[str, str]:
    """The config vars a release dyno gets, with backups under a prefix of the test's own."""
    return heroku_env(
        port=free_port(),  # Heroku sets PORT in a release dyno too
        database_url=database_url,
        s3=s3,
        s3_prefix=f"{prefix}/artifacts",
        MLFLOW_HEROKU_BACKUP_URI=f"s3://{s3.bucket}/{prefix}/backups",
    )


def database_settings(postgres: PostgresCluster, name: str) -> list[str]:
    """The settings ALTER DATABASE gave database ``name`` (for every role)."""
    query = (
        "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = "  # noqa: S608
        f"s.setdatabase WHERE d.datname = '{name}' AND s.setrole = 0"
    )
    rows = sql(postgres, query)
    return [row[0] for row in rows]


def connect_as(
    postgres: PostgresCluster, role: Role, name: str, options: str = ""
) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        options=options,
        host=LOOPBACK,
        port=postgres.port,
        user=role.name,
        password=role.password,
        dbname=name,
        autocommit=True,
        connect_timeout=5,
    )


def table_exists(postgres: PostgresCluster, name: str, table: str) -> bool:
    rows = sql(postgres, f"SELECT to_regclass('public.{table}') IS NOT NULL", name)
    return bool(rows[0][0])


@dataclass
class TimedLines:
    """A process's stderr lines, each with the monotonic time it was read."""

    lines: list[tuple[float, str]] = field(default_factory=list)

    def first(self, text: str) -> float:
        return next(at for at, line in self.lines if text in line)

    @property
    def text(self) -> str:
        return "".join(line for _at, line in self.lines)


def read_lines(process: subprocess.Popen[str]) -> tuple[TimedLines, threading.Thread]:
    timed = TimedLines()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            timed.lines.append((time.monotonic(), line))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return timed, reader


def finish(process: subprocess.Popen[str], reader: threading.Thread, timeout: float = 240) -> int:
    try:
        code = process.wait(timeout)
    finally:
        process.kill()
        process.wait()
    reader.join(10)
    return code


class Writer:
    """An old release's dyno: one pooled connection that inserts a row every 50 ms and
    reconnects when its session is ended. Records (time the attempt ended, "ok" or SQLSTATE)."""

    def __init__(self, postgres: PostgresCluster, role: Role, name: str) -> None:
        self.connect: Callable[[], psycopg.Connection[tuple[Any, ...]]] = lambda: connect_as(
            postgres, role, name
        )
        self.outcomes: list[tuple[float, str]] = []
        self.stopping = threading.Event()
        self.connection = self.connect()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            try:
                if self.connection.closed:
                    self.connection = self.connect()
                self.connection.execute("INSERT INTO canary VALUES (1)")
                self.outcomes.append((time.monotonic(), "ok"))
            except psycopg.Error as error:
                self.outcomes.append((time.monotonic(), error.sqlstate or type(error).__name__))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.connection.close()

    def after(self, moment: float) -> list[str]:
        return [outcome for at, outcome in self.outcomes if at > moment]


@contextlib.contextmanager
def writer(postgres: PostgresCluster, role: Role, name: str) -> Iterator[Writer]:
    with connect_as(postgres, role, name) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS canary (x integer)")
    running = Writer(postgres, role, name)
    try:
        yield running
    finally:
        running.stop()


def test_the_first_release_creates_the_schema(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    prefix = f"first-{time.time_ns()}"
    with own_database(postgres, "first", owner=owner) as (name, url):
        released = run_release_phase(release_env(url, s3, prefix))
        assert released.returncode == 0, released.stderr
        assert "is empty (first release): creating MLflow" in released.stderr
        assert schema_revision(postgres, name) == installed_head_revision()
        assert s3.keys(f"{prefix}/backups/") == {}  # nothing to lose: no backup
        assert database_settings(postgres, name) == []


def test_a_release_at_head_exits_at_once_without_a_backup(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    """Most releases (a config var change) find the schema current."""
    prefix = f"head-{time.time_ns()}"
    with own_database(postgres, "head", owner=owner) as (_name, url):
        env = release_env(url, s3, prefix)
        assert run_release_phase(env).returncode == 0
        started = time.monotonic()
        released = run_release_phase(env)
        took = time.monotonic() - started
        assert released.returncode == 0, released.stderr
        assert "no migrations; the release rolls as usual" in released.stderr
        assert "writes paused" not in released.stderr
        assert s3.keys(f"{prefix}/backups/") == {}
        assert took < 20, f"{took:.1f} s"
        assert postgres.password not in released.stderr
        assert owner.password not in released.stderr


def test_a_database_behind_is_backed_up_and_migrated_with_the_writers_stopped(
    postgres: PostgresCluster, s3: S3Server, owner: Role, tmp_path: Path
) -> None:
    prefix = f"behind-{time.time_ns()}"
    older, head = older_head_revision(), installed_head_revision()
    with older_database(postgres, "behind", owner) as (name, url):
        experiments = sql(postgres, "SELECT * FROM experiments ORDER BY experiment_id", name)
        reader = connect_as(postgres, owner, name)  # an old release's idle pooled session
        reader.execute("SELECT count(*) FROM runs")
        with writer(postgres, owner, name) as old_release:
            process = start_release_phase(release_env(url, s3, prefix))
            lines, pump = read_lines(process)
            code = finish(process, pump)
        assert code == 0, lines.text
        stopped = lines.first("other session(s); the old release reconnects read-only")
        resumed = lines.first("writes resumed")
        assert lines.first("writes paused") < stopped < lines.first("migrating") < resumed
        # Writes stop: the old release's sessions were ended and came back read-only; this
        # one stays read-only until its dyno is replaced by the new release's.
        assert "ok" not in old_release.after(stopped), old_release.outcomes
        assert "25006" in old_release.after(stopped), old_release.outcomes
        with pytest.raises(psycopg.OperationalError):
            reader.execute("SELECT 1")
        reader.close()

        (key,) = s3.keys(f"{prefix}/backups/")
        assert key.endswith(f"-pre-upgrade-{older}-to-{head}.dump")
        dump = tmp_path / "backup.dump"
        dump.write_bytes(s3.read(key))
        listing = subprocess.run(
            [str(PG_BIN / "pg_restore"), "--list", str(dump)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "TABLE public experiments" in listing
        assert "TABLE public entity_associations" not in listing  # taken before the upgrade

        assert schema_revision(postgres, name) == head
        assert (
            sql(postgres, "SELECT * FROM experiments ORDER BY experiment_id", name)[0][:2]
            == (experiments[0][:2])
        )
        assert len(sql(postgres, "SELECT * FROM experiments", name)) == len(experiments)
        assert database_settings(postgres, name) == []
        with connect_as(postgres, owner, name) as new_release:
            new_release.execute("INSERT INTO canary VALUES (2)")  # writable again


def test_a_failed_migration_leaves_schema_and_data_as_they_were(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    """The last migration creates a table that is already there: Alembic has run every other
    pending migration in the same transaction, and all of them roll back with it."""
    prefix = f"failed-{time.time_ns()}"
    older = older_head_revision()
    with older_database(postgres, "failed", owner) as (name, url):
        with connect_as(postgres, owner, name) as setup:
            setup.execute("CREATE TABLE scheduler_leases (x integer)")
        before = {
            table: sql(postgres, f"SELECT * FROM {table} ORDER BY 1", name)  # noqa: S608
            for table in ("experiments", "runs", "metrics", "params", "alembic_version")
        }
        with writer(postgres, owner, name) as old_release:
            process = start_release_phase(release_env(url, s3, prefix))
            lines, pump = read_lines(process)
            code = finish(process, pump)
            exited = time.monotonic()
            deadline = exited + 10
            while "ok" not in old_release.after(exited) and time.monotonic() < deadline:
                time.sleep(0.1)
            # The release that keeps serving writes again, without a restart.
            assert "ok" in old_release.after(exited), old_release.outcomes[-20:]
        assert code == 1, lines.text
        (key,) = s3.keys(f"{prefix}/backups/")
        failure = next(line for _at, line in lines.lines if "FAILED" in line)
        assert 'DuplicateTable: relation "scheduler_leases" already exists' in failure
        assert f"s3://{s3.bucket}/{key}" in failure
        assert f"backup restore {key}" in failure
        assert "schema and the data are as they were" in failure
        assert "writes resumed" in lines.text

        assert schema_revision(postgres, name) == older
        assert not table_exists(postgres, name, "entity_associations")  # an earlier migration's
        assert not table_exists(postgres, name, "workspaces")
        for table, rows in before.items():
            assert sql(postgres, f"SELECT * FROM {table} ORDER BY 1", name) == rows, table  # noqa: S608
        assert database_settings(postgres, name) == []


def test_a_failed_backup_migrates_nothing_and_leaves_the_database_writable(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    older = older_head_revision()
    with older_database(postgres, "nobackup", owner) as (name, url):
        env = {
            **release_env(url, s3, "unused"),
            "MLFLOW_HEROKU_BACKUP_URI": f"s3://no-such-bucket-{time.time_ns()}/backups",
        }
        with writer(postgres, owner, name) as old_release:
            process = start_release_phase(env)
            lines, pump = read_lines(process)
            code = finish(process, pump)
            exited = time.monotonic()
            deadline = exited + 10
            while "ok" not in old_release.after(exited) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "ok" in old_release.after(exited), old_release.outcomes[-20:]
        assert code == 1, lines.text
        assert "FAILED before migrating: " in lines.text
        assert "NoSuchBucket" in lines.text
        assert "release phase: migrating" not in lines.text
        assert "writes resumed" in lines.text
        assert schema_revision(postgres, name) == older
        assert database_settings(postgres, name) == []


def test_a_database_left_read_only_by_a_stopped_release_phase_is_reset(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    """A release phase killed mid-way (its hour was up) cannot reset what it set: the next
    one does, whatever it finds."""
    from mlflow_heroku_runtime import release_phase

    with own_database(postgres, "leftover", owner=owner) as (name, url):
        env = release_env(url, s3, f"leftover-{time.time_ns()}")
        assert run_release_phase(env).returncode == 0
        with connect_as(postgres, owner, name) as control:
            control.execute(release_phase.SET_READ_ONLY)
        assert database_settings(postgres, name) == [READ_ONLY_SETTING]
        released = run_release_phase(env)
        assert released.returncode == 0, released.stderr
        assert "was left read-only by a release phase that was stopped: reset" in released.stderr
        assert database_settings(postgres, name) == []


def test_a_database_newer_than_the_image_fails_the_release_with_what_to_do(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    """A rollback to an image older than the last migrating release."""
    prefix = f"ahead-{time.time_ns()}"
    with own_database(postgres, "ahead", owner=owner) as (name, url):
        env = release_env(url, s3, prefix)
        assert run_release_phase(env).returncode == 0
        sql(postgres, "UPDATE alembic_version SET version_num = 'ffffffffffff'", name)
        released = run_release_phase(env)
        assert released.returncode == 1, released.stderr
        assert "schema revision ffffffffffff, which this image's MLflow" in released.stderr
        assert "Release the newer image again, or restore the backup" in released.stderr
        assert "docs/operations.md" in released.stderr
        assert schema_revision(postgres, name) == "ffffffffffff"
        assert database_settings(postgres, name) == []
        assert s3.keys(f"{prefix}/backups/") == {}


def test_two_release_phases_at_once_migrate_once(
    postgres: PostgresCluster, s3: S3Server, owner: Role
) -> None:
    """Both wait for the lock (held here until both wait); the first to get it migrates, the
    other then finds the schema current."""
    from mlflow_heroku_runtime.migrate import MIGRATION_LOCK_KEY

    prefix = f"twice-{time.time_ns()}"
    with older_database(postgres, "twice", owner) as (name, url):
        env = release_env(url, s3, prefix)
        with connect_as(postgres, owner, name) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            phases = [start_release_phase(env, dyno=f"release.{n}") for n in (1, 2)]
            outputs = [read_lines(process) for process in phases]
            deadline = time.monotonic() + 60
            while not all("waiting for another process's migration" in lines.text
                          for lines, _pump in outputs):  # fmt: skip
                assert time.monotonic() < deadline, [lines.text for lines, _pump in outputs]
                time.sleep(0.1)
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        pumps = [pump for _lines, pump in outputs]
        codes = [finish(process, pump) for process, pump in zip(phases, pumps, strict=True)]
    texts = [lines.text for lines, _pump in outputs]
    assert codes == [0, 0], texts
    assert sorted("migrating" in text for text in texts) == [False, True], texts
    assert sorted("no migrations" in text for text in texts) == [False, True], texts
    assert len(s3.keys(f"{prefix}/backups/")) == 1


def test_writes_during_the_upgrade_answer_503_and_clients_retry_them(
    postgres: PostgresCluster,
    s3: S3Server,
    owner: Role,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database made read-only as the release phase makes it: reads work; a write gets 503
    with Retry-After and our message, from MLflow's app and through nginx alike; MLflow's
    client retries it and succeeds once the database is writable again."""
    from mlflow.tracking import MlflowClient
    from mlflow_heroku_runtime import release_phase

    with own_database(postgres, "readonly", owner=owner) as (name, url):
        env = heroku_env(port=free_port(), database_url=url, s3=s3, s3_prefix=f"ro-{name}")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        with running_stack(env, ready_timeout=120) as stack:
            client = MlflowClient(tracking_uri=stack.url)
            client.create_experiment("before")
            with connect_as(postgres, owner, name) as control:
                control.execute(release_phase.SET_READ_ONLY)
                control.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid()"
                )
            create = {"name": "during"}
            through_nginx = requests.post(
                f"{stack.url}/api/2.0/mlflow/experiments/create",
                json=create,
                auth=stack.auth,
                timeout=30,
            )
            mlflow_port = mlflow_ports_of(stack)[0]
            from_mlflow = requests.post(
                f"http://{LOOPBACK}:{mlflow_port}/api/2.0/mlflow/experiments/create",
                json=create,
                timeout=30,
            )
            reads = client.search_experiments()

            retried: dict[str, object] = {}

            def create_during_the_upgrade() -> None:
                started = time.monotonic()
                try:
                    retried["id"] = client.create_experiment("retried")
                except Exception as error:
                    retried["error"] = error
                retried["seconds"] = time.monotonic() - started

            retrying = threading.Thread(target=create_during_the_upgrade)
            retrying.start()
            time.sleep(2)
            writable = release_phase.WRITABLE_SESSION_OPTION
            with connect_as(postgres, owner, name, options=writable) as control:
                control.execute(release_phase.RESET_READ_ONLY)
                control.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid()"
                )
            retrying.join(120)
            names = [e.name for e in client.search_experiments()]
            output = stack.output()

    assert from_mlflow.status_code == 503, from_mlflow.text
    assert from_mlflow.headers["Retry-After"] == "30"
    assert from_mlflow.json() == {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": release_phase_message(),
    }
    assert through_nginx.status_code == 503, through_nginx.text
    assert through_nginx.headers["Retry-After"] == "30"
    assert through_nginx.json() == from_mlflow.json()
    assert [e.name for e in reads] == ["before", "Default"]
    assert "the read-only database refused POST /api/2.0/mlflow/experiments/create" in output
    assert names.count("retried") == 1, names
    assert "error" not in retried, retried
    assert float(str(retried["seconds"])) >= 2, retried
    assert "during" not in names


def release_phase_message() -> str:
    from mlflow_heroku_runtime.error_filter import READ_ONLY_MESSAGE

    return READ_ONLY_MESSAGE
