"""The scheduled maintenance command (backup + prune, gc of deleted runs), against real
PostgreSQL, moto's S3 server and the stack (which logs the runs and artifacts it cleans up)."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow_heroku_runtime import maintenance
from mlflow_heroku_runtime.maintenance import MaintenanceError
from mlflow_heroku_runtime.migrate import MIGRATION_LOCK_KEY

from tests.support.services import (
    ENTRYPOINT,
    PG_BIN,
    PostgresCluster,
    S3Server,
    free_port,
    heroku_env,
    own_database,
    running_stack,
    sql,
)

DAY_MS = 24 * 3600 * 1000
URL = "postgres://alice:p%40ss@db.example.com:5432/d1"
RETENTION = maintenance.RETENTION_DAYS_VARIABLE
GC_AFTER = maintenance.GC_AFTER_DAYS_VARIABLE


# --------------------------------------------------------------------------- configuration


def test_days_have_defaults_ranges_and_an_off_switch_for_the_gc() -> None:
    base = {"S3_URI": "s3://b/artifacts", "DATABASE_URL": URL}
    config = maintenance.load_config(base)
    assert (config.retention_days, config.gc_after_days) == (30, 30)
    assert config.artifacts_destination == "s3://b/artifacts"
    assert config.database == "db.example.com:5432/d1"
    edges = {
        maintenance.RETENTION_DAYS_VARIABLE: ("1", "3650"),
        maintenance.GC_AFTER_DAYS_VARIABLE: ("0", "3650"),
    }
    for variable, values in edges.items():
        for value in values:
            assert maintenance.read_days({variable: value}, variable) == int(value)
    for variable, bad in [
        (maintenance.RETENTION_DAYS_VARIABLE, "0"),
        (maintenance.RETENTION_DAYS_VARIABLE, "3651"),
        (maintenance.GC_AFTER_DAYS_VARIABLE, "-1"),
        (maintenance.GC_AFTER_DAYS_VARIABLE, "30d"),
        (maintenance.GC_AFTER_DAYS_VARIABLE, ""),
        (maintenance.GC_AFTER_DAYS_VARIABLE, "٣٠"),  # non-ASCII digits
    ]:
        with pytest.raises(MaintenanceError, match=rf"^{variable}=") as raised:
            maintenance.load_config({**base, variable: bad})
        low = 0 if variable == GC_AFTER else 1
        assert f"a whole number of days, {low} to 3650" in str(raised.value)


def test_configuration_errors_name_the_variable_and_never_the_password() -> None:
    cases = [
        ({"DATABASE_URL": URL}, "S3_URI is not set"),
        ({"DATABASE_URL": URL, "S3_URI": "https://bucket/artifacts"}, "S3_URI must look like"),
        ({"S3_URI": "s3://b/a"}, "DATABASE_URL is empty"),
        ({"S3_URI": "s3://b/a", "DATABASE_URL": "mysql://u:p%40ss@h/d"}, "only PostgreSQL"),
    ]
    for environ, message in cases:
        with pytest.raises(MaintenanceError, match=message) as raised:
            maintenance.load_config(environ)
        assert "p@ss" not in str(raised.value)
        assert "p%40ss" not in str(raised.value)


def run_maintenance(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_heroku_runtime.maintenance", *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "PATH": f"{PG_BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ENTRYPOINT.parent),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


@pytest.mark.parametrize(
    ("environ", "args", "message"),
    [
        ({"DATABASE_URL": URL}, ["gc"], "maintenance: error: S3_URI is not set"),
        (
            {"DATABASE_URL": URL, "S3_URI": "s3://b/a", "MLFLOW_HEROKU_GC_AFTER_DAYS": "soon"},
            ["all"],
            "maintenance: error: MLFLOW_HEROKU_GC_AFTER_DAYS='soon' is not a whole number",
        ),
        (
            {"DATABASE_URL": URL, "S3_URI": "s3://b/a", RETENTION: "0"},
            ["backup"],
            f"maintenance: error: {RETENTION}=0 is out of range: use a whole number of days, 1",
        ),
        (
            {"DATABASE_URL": URL, "S3_URI": "s3://b/a"},
            ["gc", "--time-limit", "0"],
            "maintenance: error: --time-limit takes 1 to",
        ),
    ],
    ids=["no S3_URI", "gc days not a number", "retention out of range", "time limit 0"],
)
def test_a_bad_setting_is_one_clear_line_and_exit_2(
    environ: dict[str, str], args: list[str], message: str
) -> None:
    result = run_maintenance(environ, *args, timeout=60)
    assert result.returncode == maintenance.USAGE
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert "p@ss" not in result.stderr
    assert result.stdout == ""


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    environ = {"DATABASE_URL": "postgres://u:secret-pw@127.0.0.1:1/d", "S3_URI": "s3://b/a"}
    result = run_maintenance(environ, "gc", timeout=60)
    assert result.returncode == maintenance.FAILED
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "maintenance: error: cannot reach 127.0.0.1:1/d" in result.stderr
    assert "secret-pw" not in result.stderr


@pytest.mark.integration
def test_gc_leaves_a_database_without_mlflows_schema_alone(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    with own_database(postgres, "no_schema") as (name, url):
        environ = {"DATABASE_URL": url, "S3_URI": f"s3://{s3.bucket}/none"}
        result = run_maintenance(environ, "gc", timeout=120)
        tables = sql(postgres, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", name)
    assert result.returncode == maintenance.DONE, result.stderr
    assert "has no MLflow schema yet: nothing to purge" in result.stderr
    assert tables == [(0,)]


# --------------------------------------------------------------------------- the site


@dataclass
class Site:
    """A stack on its own database, and what the tests need to make and age its content."""

    env: dict[str, str]
    url: str
    database: str
    prefix: str  # the artifact root's key prefix in the bucket
    postgres: PostgresCluster
    s3: S3Server
    client: Any  # MlflowClient of the stack

    def age(self, table: str, value: str, days: float) -> None:
        """Move a row's deletion (or last update) ``days`` into the past."""
        column, id_column = {
            "runs": ("deleted_time", "run_uuid"),
            "experiments": ("last_update_time", "experiment_id"),
            "logged_models": ("last_updated_timestamp_ms", "model_id"),
        }[table]
        literal = value if table == "experiments" else f"'{value}'"
        # Names from the table above, ids made by MLflow.
        statement = f"UPDATE {table} SET {column} = {column} - {int(days * DAY_MS)} "  # noqa: S608
        sql(self.postgres, f"{statement} WHERE {id_column} = {literal}", database=self.database)

    def exists(self, table: str, value: str) -> bool:
        id_column = {
            "runs": "run_uuid",
            "experiments": "experiment_id",
            "logged_models": "model_id",
        }
        literal = value if table == "experiments" else f"'{value}'"
        rows = sql(
            self.postgres,
            f"SELECT count(*) FROM {table} WHERE {id_column[table]} = {literal}",  # noqa: S608
            database=self.database,
        )
        return bool(rows[0][0])

    def keys(self, *parts: str) -> dict[str, int]:
        return self.s3.keys("/".join([self.prefix, *parts]) + "/")

    def run_with_artifacts(self, experiment_id: str, files: dict[str, str]) -> str:
        run_id: str = self.client.create_run(experiment_id).info.run_id
        for name, text in files.items():
            self.client.log_text(run_id, text, name)
        self.client.set_terminated(run_id)
        return run_id

    def deleted_run(self, experiment_id: str, files: dict[str, str], days: float) -> str:
        run_id = self.run_with_artifacts(experiment_id, files)
        self.client.delete_run(run_id)
        self.age("runs", run_id, days)
        return run_id


@pytest.fixture(scope="module")
def site(postgres: PostgresCluster, s3: S3Server, nginx_preload: Path) -> Iterator[Site]:
    from mlflow.tracking import MlflowClient

    prefix = f"maintenance-{time.time_ns()}"
    with own_database(postgres, "maintenance") as (database, url):
        env = heroku_env(
            port=free_port(),
            database_url=url,
            s3=s3,
            s3_prefix=f"{prefix}/artifacts",
            MLFLOW_HEROKU_BACKUP_URI=f"s3://{s3.bucket}/{prefix}/backups",
            # As the program sets them on the app (infra/heroku_app.py): the one-off dyno
            # gets them too.
            MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="3",
            MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="1",
        )
        with running_stack(env, ready_timeout=90) as stack, pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
            patch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
            # Runs of experiments with a plain s3:// location upload straight to S3.
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                patch.setenv(name, env[name])
            patch.setenv("MLFLOW_S3_ENDPOINT_URL", s3.endpoint_url)
            client = MlflowClient(tracking_uri=stack.url)
            yield Site(env, url, database, f"{prefix}/artifacts", postgres, s3, client)


def experiment(site: Site, name: str, **kwargs: str) -> str:
    experiment_id: str = site.client.create_experiment(f"{name}-{time.time_ns()}", **kwargs)
    return experiment_id


def model_with_artifacts(site: Site, experiment_id: str, tmp_path: Path) -> str:
    model_dir = tmp_path / f"model-{time.time_ns()}"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "weights.bin").write_bytes(b"\x00" * 2048)
    model_id: str = site.client.create_logged_model(experiment_id, name="m").model_id
    site.client.log_model_artifacts(model_id, str(model_dir))
    return model_id


# --------------------------------------------------------------------------- gc


@pytest.mark.integration
def test_gc_removes_what_was_deleted_long_ago_with_its_artifacts_and_nothing_else(
    site: Site, tmp_path: Path
) -> None:
    proxied = experiment(site, "proxied")  # mlflow-artifacts:/<id>, the stack's default
    live = site.run_with_artifacts(proxied, {"model.txt": "live"})
    recent = site.deleted_run(proxied, {"model.txt": "recent"}, days=29)
    old = site.deleted_run(proxied, {"model.txt": "old", "plots/loss.txt": "old plot"}, days=31)
    empty = site.deleted_run(proxied, {}, days=31)  # no artifacts at all (mlflow/mlflow#15461)
    kept_model = model_with_artifacts(site, proxied, tmp_path)
    old_model = model_with_artifacts(site, proxied, tmp_path)
    site.client.delete_logged_model(old_model)
    site.age("logged_models", old_model, days=31)
    # An experiment created with a plain S3 location (before proxying, or by hand).
    direct = experiment(site, "direct", artifact_location=f"s3://{site.s3.bucket}/direct-{proxied}")
    direct_old = site.deleted_run(direct, {"direct.txt": "direct"}, days=40)
    # A bucket the key cannot reach: this run's artifact deletion fails.
    unreachable = experiment(site, "unreachable", artifact_location="s3://no-such-bucket-xyz/x")
    broken = site.client.create_run(unreachable).info.run_id
    site.client.delete_run(broken)
    site.age("runs", broken, days=31)
    # A deleted experiment, with a live and a deleted run and a logged model.
    gone = experiment(site, "gone")
    gone_runs = [site.run_with_artifacts(gone, {"a.txt": "a"}) for _ in range(2)]
    site.client.delete_run(gone_runs[1])
    gone_model = model_with_artifacts(site, gone, tmp_path)
    site.client.delete_experiment(gone)
    site.age("experiments", gone, days=31)
    for run_id in gone_runs:
        site.age("runs", run_id, days=31)
    # A recently deleted experiment stays.
    young = experiment(site, "young")
    young_run = site.run_with_artifacts(young, {"y.txt": "y"})
    site.client.delete_experiment(young)

    assert site.keys(proxied, old)
    assert site.keys(gone)
    assert site.s3.keys(f"direct-{proxied}/")
    result = run_maintenance(site.env, "gc")
    log = result.stderr
    assert result.returncode == maintenance.FAILED, log  # the unreachable run
    for removed in (old, empty, direct_old, *gone_runs):
        assert f"removed run {removed} " in log
        assert not site.exists("runs", removed)
    assert f"removed run {old} of experiment {proxied} (2 artifact file(s), 11 bytes)" in log
    assert f"removed run {empty} of experiment {proxied} (0 artifact file(s), 0 bytes)" in log
    assert f"removed logged model {old_model} of experiment {proxied}" in log
    assert f"removed logged model {gone_model} of experiment {gone}" in log
    assert f"removed experiment {gone} " in log
    assert not site.exists("experiments", gone)
    assert not site.exists("logged_models", gone_model)
    assert f"failed to remove run {broken}: " in log
    assert "kept for the next run" in log
    assert site.exists("runs", broken)
    assert "left: 0" in log
    # The artifacts went with them; everything live or recent stays.
    assert site.keys(proxied, old) == {}
    assert site.keys(gone) == {}
    assert site.s3.keys(f"direct-{proxied}/") == {}
    assert site.keys(proxied, "models", old_model) == {}
    for run_id in (live, recent):
        assert site.exists("runs", run_id)
        assert list(site.keys(proxied, run_id)) == [
            f"{site.prefix}/{proxied}/{run_id}/artifacts/model.txt"
        ]
    assert site.keys(proxied, "models", kept_model)
    assert site.exists("experiments", young)
    assert site.keys(young, young_run)
    for secret in (site.env["AWS_SECRET_ACCESS_KEY"], site.postgres.password):
        assert secret not in log

    # Again: only the unreachable run is left, and fails alone.
    again = run_maintenance(site.env, "gc")
    assert again.returncode == maintenance.FAILED
    assert "removed run " not in again.stderr
    assert f"failed to remove run {broken}: " in again.stderr
    site.client.restore_run(broken)  # out of the way of the other tests


@contextlib.contextmanager
def store_of(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """The maintenance command's store and lock connection, in this process."""
    # open_store() sets these for its process: restored after the test.
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    for name in ("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"):
        monkeypatch.setenv(name, site.env[name])
    config = maintenance.load_config(site.env)
    with maintenance.database_connection(config) as connection:
        yield maintenance.open_store(config), connection


@pytest.mark.integration
def test_a_failing_run_does_not_stop_the_ones_after_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = experiment(site, "unreachable", artifact_location="s3://no-such-bucket-xyz/y")
    broken = site.client.create_run(unreachable).info.run_id
    site.client.delete_run(broken)
    proxied = experiment(site, "after")
    after = [site.deleted_run(proxied, {"f.txt": "x"}, days=31) for _ in range(2)]
    # Restored after the plan was made: it stays, as `mlflow gc` never purges a live run.
    restored = site.deleted_run(proxied, {"f.txt": "x"}, days=31)
    site.client.restore_run(restored)
    plan = [
        maintenance.Item("run", broken),
        maintenance.Item("run", restored),
        *(maintenance.Item("run", r) for r in after),
    ]
    remover = maintenance.ArtifactRemover(site.env["S3_URI"])
    with store_of(site, monkeypatch) as (store, connection):
        report = maintenance.collect_garbage(
            store,
            remover,
            plan,
            deadline=time.monotonic() + 60,
            lock_each=lambda: maintenance.no_schema_upgrade(connection, "test"),
        )
    assert report.failed["run"] == [broken]
    assert report.restored == [restored]
    assert report.removed["run"] == after
    assert report.files == 2
    assert site.exists("runs", broken)
    assert site.exists("runs", restored)
    assert site.keys(proxied, restored)
    site.client.restore_run(broken)  # out of the way of the other tests
    assert not any(site.exists("runs", run_id) for run_id in after)


@pytest.mark.integration
def test_the_time_limit_stops_between_runs(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    proxied = experiment(site, "limited")
    runs = [site.deleted_run(proxied, {"f.txt": "x"}, days=31) for _ in range(4)]
    plan = [maintenance.Item("run", run_id) for run_id in runs]
    ticks = itertools.count()  # one tick per check: the third check is past the deadline
    remover = maintenance.ArtifactRemover(site.env["S3_URI"])
    with store_of(site, monkeypatch) as (store, connection):
        report = maintenance.collect_garbage(
            store,
            remover,
            plan,
            deadline=2,
            lock_each=lambda: maintenance.no_schema_upgrade(connection, "test"),
            clock=lambda: float(next(ticks)),
        )
    assert report.removed["run"] == runs[:2]
    assert (report.left, report.stopped, report.aborted) == (2, "at the time limit", False)
    assert [site.exists("runs", run_id) for run_id in runs] == [False, False, True, True]
    assert [bool(site.keys(proxied, run_id)) for run_id in runs] == [False, False, True, True]

    # The command itself: a limit shorter than its own start stops before the first purge.
    result = run_maintenance(site.env, "gc", "--time-limit", "1")
    assert result.returncode == maintenance.INCOMPLETE, result.stderr
    assert "stopped at the time limit with 2 item(s) left: the next run goes on" in result.stderr
    assert "removed run " not in result.stderr
    assert all(site.exists("runs", run_id) for run_id in runs[2:])
    # With time enough, the next run goes on where it stopped.
    finished = run_maintenance(site.env, "gc")
    assert finished.returncode == maintenance.DONE, finished.stderr
    assert not any(site.exists("runs", run_id) for run_id in runs)


@pytest.mark.integration
def test_a_schema_upgrade_or_a_lost_database_stops_the_gc_before_the_next_purge(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied = experiment(site, "upgraded")
    runs = [site.deleted_run(proxied, {"f.txt": "x"}, days=31) for _ in range(2)]
    plan = [maintenance.Item("run", run_id) for run_id in runs]
    remover = maintenance.ArtifactRemover(site.env["S3_URI"])
    with store_of(site, monkeypatch) as (store, connection):
        planned_for = "a revision before this one"
        report = maintenance.collect_garbage(
            store,
            remover,
            plan,
            deadline=time.monotonic() + 60,
            lock_each=lambda: maintenance.purge_lock(connection, "test", planned_for),
        )
        assert report.stopped == "as the database schema was upgraded meanwhile"
        assert (report.left, report.aborted) == (2, False)
        # The database drops the lock's connection (a restart, a failover).
        import sqlalchemy

        backend = connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        connection.commit()
        sql(site.postgres, f"SELECT pg_terminate_backend({int(backend)})")
        report = maintenance.collect_garbage(
            store,
            remover,
            plan,
            deadline=time.monotonic() + 60,
            lock_each=lambda: maintenance.purge_lock(connection, "test", None),
        )
        assert str(report.stopped).startswith("as the database went away (")
        assert (report.left, report.aborted) == (2, True)
    assert all(site.exists("runs", run_id) for run_id in runs)
    assert all(site.keys(proxied, run_id) for run_id in runs)


@contextlib.contextmanager
def holding_lock(site: Site, key: int) -> Iterator[None]:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=site.postgres.port,
        user=site.postgres.user,
        password=site.postgres.password,
        dbname=site.database,
        autocommit=True,
    ) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield


@pytest.mark.integration
def test_a_second_run_exits_at_once_and_a_migration_holds_the_gc_back(site: Site) -> None:
    proxied = experiment(site, "locked")
    run_id = site.deleted_run(proxied, {"f.txt": "x"}, days=31)
    with holding_lock(site, maintenance.MAINTENANCE_LOCK_KEY):
        busy = run_maintenance(site.env, "all")
    assert busy.returncode == maintenance.BUSY, busy.stderr
    assert "another maintenance run holds the lock" in busy.stderr
    assert site.exists("runs", run_id)

    # While a schema migration holds its lock, the gc waits and purges nothing.
    with holding_lock(site, MIGRATION_LOCK_KEY):
        waiting = subprocess.Popen(
            [sys.executable, "-m", "mlflow_heroku_runtime.maintenance", "gc"],
            env=child_env(site.env),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert waiting.stderr is not None
            line = waiting.stderr.readline()
            assert "waiting for another process's migration" in line, line
            time.sleep(1)
            assert waiting.poll() is None
            assert site.exists("runs", run_id)
        except BaseException:
            waiting.kill()
            raise
    rest = waiting.stderr.read() if waiting.stderr else ""
    assert waiting.wait(120) == maintenance.DONE, rest
    assert f"removed run {run_id} " in rest
    assert not site.exists("runs", run_id)


@pytest.mark.integration
def test_gc_off_purges_nothing(site: Site) -> None:
    proxied = experiment(site, "off")
    run_id = site.deleted_run(proxied, {"f.txt": "x"}, days=400)
    result = run_maintenance({**site.env, GC_AFTER: "0"}, "gc")
    assert result.returncode == maintenance.DONE, result.stderr
    assert "gc is off (MLFLOW_HEROKU_GC_AFTER_DAYS=0)" in result.stderr
    assert site.exists("runs", run_id)
    assert site.keys(proxied, run_id)
    site.client.restore_run(run_id)


# --------------------------------------------------------------------------- backup


@pytest.mark.integration
def test_scheduled_backups_are_pruned_by_retention_keeping_the_newest(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups = f"{site.prefix.rsplit('/', 1)[0]}/backups"
    result = run_maintenance(site.env, "backup")
    assert result.returncode == maintenance.DONE, result.stderr
    (first,) = site.s3.keys(backups + "/")
    assert first.endswith("-scheduled.dump")
    assert "pruned 0 backup(s) older than 30 days" in result.stderr

    monkeypatch.setenv("PATH", f"{PG_BIN}:{os.environ['PATH']}")
    config = maintenance.load_config({**site.env, RETENTION: "5"})
    now = datetime.datetime.now(datetime.UTC)
    # Ten days on, a backup made now is older than five days of retention: it goes, and the
    # one made "then" stays (the newest stays whatever its age).
    assert maintenance.run_backup(site.env, config, now + datetime.timedelta(days=10))
    (second,) = site.s3.keys(backups + "/")
    assert second != first
    assert second.endswith("-scheduled.dump")
    # Within retention nothing goes.
    assert maintenance.run_backup(site.env, config, now + datetime.timedelta(days=1))
    assert len(site.s3.keys(backups + "/")) == 2


@pytest.mark.integration
def test_all_skips_the_gc_when_the_backup_fails(site: Site) -> None:
    proxied = experiment(site, "no-backup")
    run_id = site.deleted_run(proxied, {"f.txt": "x"}, days=31)
    env = {**site.env, "MLFLOW_HEROKU_BACKUP_URI": "s3://no-such-bucket-xyz/backups"}
    result = run_maintenance(env, "all")
    assert result.returncode == maintenance.FAILED
    assert "maintenance: backup failed: " in result.stderr
    assert "gc skipped" in result.stderr
    assert site.exists("runs", run_id)
    site.client.restore_run(run_id)
