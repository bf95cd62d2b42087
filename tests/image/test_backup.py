"""Backups to S3 and their restore: unit checks, and the restore drill with real PostgreSQL,
moto's S3 server and the stack."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_heroku_runtime import backup
from mlflow_heroku_runtime.backup import BackupError

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

URL = "postgres://alice:p%40ss@db.example.com:5432/d1"


def test_backups_go_beside_the_artifacts_unless_told_otherwise() -> None:
    assert backup.backup_target({"S3_URI": "s3://team/artifacts"}) == backup.Target(
        "team", "backups"
    )
    explicit = {"S3_URI": "s3://team/a", "MLFLOW_HEROKU_BACKUP_URI": "s3://vault/mlflow/db/"}
    assert backup.backup_target(explicit) == backup.Target("vault", "mlflow/db")
    for bad in ({}, {"S3_URI": "https://team/a"}, {"MLFLOW_HEROKU_BACKUP_URI": "s3:///x"}):
        with pytest.raises(BackupError, match=r"S3_URI|MLFLOW_HEROKU_BACKUP_URI"):
            backup.backup_target(bad)


def test_the_password_reaches_libpq_through_its_environment_only() -> None:
    env = backup.libpq_environment({"DATABASE_URL": URL})
    assert env["PGPASSWORD"] == "p@ss"
    assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"], env["PGUSER"]) == (
        "db.example.com", "5432", "d1", "alice",
    )  # fmt: skip
    assert env["PGSSLMODE"] == "require"  # Heroku Postgres refuses plain connections
    with pytest.raises(BackupError, match="DATABASE_URL") as raised:
        backup.libpq_environment({"DATABASE_URL": "mysql://alice:p%40ss@h/d"})
    assert "p@ss" not in str(raised.value)
    assert "p%40ss" not in str(raised.value)


def test_a_bad_label_or_retention_is_refused_before_anything_runs() -> None:
    now = datetime.datetime.now(datetime.UTC)
    with pytest.raises(BackupError, match="--label"):
        backup.create({"S3_URI": "s3://b/a", "DATABASE_URL": URL}, "Not A Label!", now)
    with pytest.raises(BackupError, match="--keep-days"):
        backup.prune({"S3_URI": "s3://b/a"}, 0, now)


@pytest.fixture
def fresh_database(postgres: PostgresCluster) -> Iterator[tuple[str, str]]:
    with own_database(postgres, "drill") as database:
        yield database


def run_backup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {
        **env,
        "PATH": f"{PG_BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ENTRYPOINT.parent),
    }
    return subprocess.run(
        [sys.executable, "-m", "mlflow_heroku_runtime.backup", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_restore_drill(
    postgres: PostgresCluster,
    s3: S3Server,
    fresh_database: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Back up, drop the database, restore into a new empty one, boot the stack on it: the
    same runs, metrics and artifacts are there."""
    name, url = fresh_database
    prefix = f"drill-{time.time_ns()}"
    env = heroku_env(
        port=free_port(),
        database_url=url,
        s3=s3,
        s3_prefix=f"{prefix}/artifacts",
        MLFLOW_HEROKU_BACKUP_URI=f"s3://{s3.bucket}/{prefix}/backups",
    )
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights\n")

    from mlflow.tracking import MlflowClient

    def client_of(stack_url: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        return MlflowClient(tracking_uri=stack_url)

    with running_stack(env, ready_timeout=90) as stack:
        client = client_of(stack.url)
        experiment_id = client.create_experiment(f"{prefix}-experiment")
        run_id = client.create_run(experiment_id).info.run_id
        for step in range(5):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        client.log_param(run_id, "lr", "0.01")
        client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id)

    made = run_backup(env, "create", "--label", "drill")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith(f"{prefix}/backups/mlflow-")
    assert key.endswith("-drill.dump")
    assert env["MLFLOW_TRACKING_PASSWORD"] not in made.stderr
    assert postgres.password not in made.stderr

    sql(postgres, f'DROP DATABASE "{name}" WITH (FORCE)')
    sql(postgres, f'CREATE DATABASE "{name}"')
    restored = run_backup(env, "restore", "latest")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == key

    # Restoring again refuses: the database is no longer empty, and nothing is touched.
    again = run_backup(env, "restore", "latest")
    assert again.returncode == 1
    assert "already has tables" in again.stderr

    with running_stack({**env, "PORT": str(free_port())}, ready_timeout=90) as stack:
        client = client_of(stack.url)
        run = client.get_run(run_id)
        assert run.info.experiment_id == experiment_id
        assert run.info.status == "FINISHED"
        assert run.data.params == {"lr": "0.01"}
        history = client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [
            (step, 1.0 / (step + 1)) for step in range(5)
        ]
        downloaded = Path(client.download_artifacts(run_id, "model.txt", str(tmp_path / "out")))
        assert downloaded.read_text() == "weights\n"


@pytest.mark.integration
def test_list_and_prune_keep_the_newest(s3: S3Server) -> None:
    prefix = f"prune-{time.time_ns()}"
    env = {
        "S3_URI": f"s3://{s3.bucket}/artifacts",
        "MLFLOW_HEROKU_BACKUP_URI": f"s3://{s3.bucket}/{prefix}",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
    }
    client = s3.client()
    for stamp in ("20260101T000000Z", "20260102T000000Z"):
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/mlflow-{stamp}.dump", Body=b"x")
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/notes.txt", Body=b"not a backup")
    listed = run_backup(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [
        f"{prefix}/mlflow-20260101T000000Z.dump",
        f"{prefix}/mlflow-20260102T000000Z.dump",
    ]
    # Both are "older" than a day from a clock ten days ahead: only the newest survives.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    deleted = backup.prune(env, 1, later)
    assert deleted == [f"{prefix}/mlflow-20260101T000000Z.dump"]
    assert sorted(s3.keys(prefix)) == [
        f"{prefix}/mlflow-20260102T000000Z.dump",
        f"{prefix}/notes.txt",
    ]
    assert backup.prune(env, 1, later) == []  # the last one is never pruned


@pytest.mark.integration
def test_restore_names_a_missing_backup(s3: S3Server) -> None:
    env = {
        "S3_URI": f"s3://{s3.bucket}/artifacts",
        "MLFLOW_HEROKU_BACKUP_URI": f"s3://{s3.bucket}/none-{time.time_ns()}",
        "DATABASE_URL": "postgres://u:secret-pw@127.0.0.1:1/d",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
    }
    result = run_backup(env, "restore", "latest")
    assert result.returncode == 1
    assert "no backups under" in result.stderr
    assert "secret-pw" not in result.stderr
