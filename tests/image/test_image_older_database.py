"""A database an older MLflow 3.x wrote upgrades cleanly when the image is released on it (the
release phase migrates, then a web dyno boots): nothing is lost and the schema ends at the
pinned MLflow's head revision."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import tracking_content
from tests.support.older_mlflow import (
    OLDER_MLFLOW_VERSION,
    installed_head_revision,
    installed_migrations,
    older_head_revision,
    schema_revision,
    write_tracking_content,
)
from tests.support.services import (
    PostgresCluster,
    S3Server,
    free_port,
    heroku_env,
    own_database,
    run_release_phase,
    running_stack,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def older_database(postgres: PostgresCluster) -> Iterator[tuple[str, str]]:
    """A database of its own in the shared cluster: (name, Heroku-style URL)."""
    with own_database(postgres, "older_mlflow") as database:
        yield database


def test_the_older_schema_is_several_revisions_behind_the_pinned_one() -> None:
    """The upgrade below has migrations to run: the older MLflow's head is an ancestor of
    the pinned MLflow's, several revisions back."""
    older = older_head_revision()
    between = list(installed_migrations().iterate_revisions(installed_head_revision(), older))
    assert len(between) > 10, (older, [script.revision for script in between])


def test_a_database_written_by_an_older_mlflow_upgrades_without_losing_anything(
    postgres: PostgresCluster,
    s3: S3Server,
    older_database: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, url = older_database
    # Spans of MLflow 3.0's traces live beside the experiment's artifacts, not in the database.
    written = write_tracking_content(url, tmp_path / "artifacts")
    assert schema_revision(postgres, name) == older_head_revision()
    # What the older MLflow wrote, so an empty read-back cannot pass for a complete one.
    assert [(e["name"], e["lifecycle_stage"]) for e in written["experiments"]] == [
        ("Default", "active"),
        ("older-mlflow-churn", "active"),
        ("older-mlflow-retired", "deleted"),
    ]
    assert [run["status"] for run in written["runs"]] == ["FINISHED", "FAILED", "RUNNING"]
    assert len(written["runs"][0]["metric_history"]["loss"]) == 20
    assert written["runs"][0]["dataset_inputs"][0]["name"] == "customers"
    assert [m["name"] for m in written["logged_models"]] == ["churn-classifier"]
    assert [len(m["versions"]) for m in written["registered_models"]] == [2]
    assert [len(trace["spans"]) for trace in written["traces"]] == [2]

    env = heroku_env(port=free_port(), database_url=url, s3=s3, s3_prefix=f"older-{time.time_ns()}")
    released = run_release_phase(env)
    assert released.returncode == 0, released.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    from mlflow.tracking import MlflowClient

    with running_stack(env, ready_timeout=120) as stack:
        client = MlflowClient(tracking_uri=stack.url, registry_uri=stack.url)
        read_back = tracking_content.snapshot(client)
        for section, items in written.items():
            assert read_back[section] == items, (
                f"{section} after the upgrade from MLflow {OLDER_MLFLOW_VERSION}"
            )
        assert schema_revision(postgres, name) == installed_head_revision()
        # The upgraded content takes new writes too.
        run_id = written["runs"][0]["run_id"]
        client.log_metric(run_id, "after_upgrade", 1.5, step=1)
        assert client.get_run(run_id).data.metrics["after_upgrade"] == 1.5
