"""A tracking server's worth of content, written by one MLflow and read back by another.

Runs in two interpreters: an older MLflow's (tests/support/older_mlflow.py), which calls
``write`` against the database directly and records ``snapshot``, and the test's, which
takes the ``snapshot`` of the same content through an upgraded stack. So this module uses
only MLflow client APIs that both versions have, and imports nothing from the tests.

Run as a script with the older MLflow: ``python tracking_content.py ARTIFACT_ROOT OUT_JSON``
with the SQLAlchemy database URI in ``TRACKING_CONTENT_DATABASE_URI`` (not on the command
line, where ``ps`` would show its password). It writes the content, then the snapshot to
OUT_JSON.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

EXPERIMENT_PREFIX = "older-mlflow-"
REGISTERED_MODEL_PREFIX = "older-mlflow-"
DATABASE_URI_VARIABLE = "TRACKING_CONTENT_DATABASE_URI"
# Fixed times (milliseconds), so a lost or rewritten timestamp shows.
T0 = 1_717_000_000_000


def write(tracking_uri: str, artifact_root: Path) -> None:
    """Experiments, runs (params, metric histories, tags, a dataset input, a deleted one),
    logged models, registered models with versions and aliases, and traces with spans."""
    import mlflow
    from mlflow.entities import (
        Dataset,
        DatasetInput,
        InputTag,
        LoggedModelStatus,
        Metric,
        Param,
        RunTag,
    )
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    churn = client.create_experiment(
        f"{EXPERIMENT_PREFIX}churn",
        artifact_location=(artifact_root / "churn").as_uri(),
        tags={"team": "growth", "mlflow.note.content": "Churn models: déjà vu ✓"},
    )
    retired = client.create_experiment(
        f"{EXPERIMENT_PREFIX}retired", artifact_location=(artifact_root / "retired").as_uri()
    )

    baseline = client.create_run(
        churn, start_time=T0, tags={"stage": "baseline"}, run_name="baseline"
    ).info.run_id
    client.log_batch(
        baseline,
        metrics=[Metric("loss", 1.0 / (step + 1), T0 + step * 1000, step) for step in range(20)]
        + [Metric("auc", 0.5, T0, 0), Metric("auc", float("nan"), T0 + 1, 1)]
        + [Metric("grad_norm", float("inf"), T0, 0)],
        params=[Param("lr", "0.01"), Param("layers", "3"), Param("comment", "x" * 500)],
        tags=[RunTag("mlflow.source.name", "train.py"), RunTag("long", "t" * 5000)],
    )
    client.log_inputs(
        baseline,
        [
            DatasetInput(
                Dataset(
                    name="customers",
                    digest="d41d8cd9",
                    source_type="local",
                    source='{"uri": "/data/customers.csv"}',
                    schema='{"columns": ["age", "plan"]}',
                    profile='{"rows": 1000}',
                ),
                tags=[InputTag("mlflow.data.context", "training")],
            )
        ],
    )

    child = client.create_run(
        churn, start_time=T0 + 1, tags={"mlflow.parentRunId": baseline}, run_name="child"
    ).info.run_id
    client.log_metric(child, "loss", 0.25, timestamp=T0 + 5, step=3)
    client.set_terminated(child, "FAILED", end_time=T0 + 2000)

    deleted = client.create_run(retired, start_time=T0 + 2, run_name="deleted").info.run_id
    client.log_param(deleted, "kept", "even when deleted")
    client.delete_run(deleted)
    client.delete_experiment(retired)

    logged = client.create_logged_model(
        churn,
        name="churn-classifier",
        source_run_id=baseline,
        tags={"framework": "sklearn"},
        params={"C": "0.5"},
        model_type="classifier",
    )
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)

    name = f"{REGISTERED_MODEL_PREFIX}churn"
    client.create_registered_model(name, tags={"owner": "growth"}, description="Predicts churn")
    for number, run_id in enumerate([baseline, child], start=1):
        client.create_model_version(
            name,
            source=(artifact_root / "churn" / run_id / "artifacts" / "model").as_uri(),
            run_id=run_id,
            tags={"candidate": str(number)},
            description=f"version {number}",
        )
    client.set_registered_model_alias(name, "champion", "1")
    client.set_model_version_tag(name, "1", "validated", "yes")

    # MLflow 3.0 keeps a trace's info in the database and its spans beside the experiment's
    # artifacts; export synchronously so both exist before this process exits.
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    mlflow.set_experiment(experiment_id=churn)
    with mlflow.start_run(run_id=baseline), mlflow.start_span("predict") as root:
        root.set_inputs({"question": "Will customer 42 churn?"})
        root.set_attributes({"model": "churn-classifier", "threshold": 0.5})
        with mlflow.start_span("features", span_type="RETRIEVER") as features:
            features.set_inputs({"customer": 42})
            features.set_outputs({"age": 31, "plan": "pro"})
        root.set_outputs({"churn": False, "probability": 0.12})
        mlflow.update_current_trace(tags={"reviewed": "no"})
    trace_id = mlflow.get_last_active_trace_id()
    assert trace_id is not None
    client.set_trace_tag(trace_id, "reviewed", "yes")
    # After the trace: leaving start_run above ended the run at the current time.
    client.set_terminated(baseline, "FINISHED", end_time=T0 + 60_000)


def snapshot(client: Any) -> dict[str, Any]:
    """Everything ``write`` created, as plain JSON values, read through ``client`` (an
    ``MlflowClient``); where the two versions give the same value in different forms, in
    one form."""
    from mlflow.entities import ViewType

    experiments = [
        experiment
        for experiment in client.search_experiments(view_type=ViewType.ALL)
        # The Default experiment too: every store creates it, so the searches below always
        # have an experiment to search.
        if experiment.name.startswith(EXPERIMENT_PREFIX) or experiment.experiment_id == "0"
    ]
    experiment_ids = [experiment.experiment_id for experiment in experiments]
    runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, order_by=["start_time"])
    registered = [
        model
        for model in client.search_registered_models()
        if model.name.startswith(REGISTERED_MODEL_PREFIX)
    ]
    return {
        "experiments": sorted(
            (
                {
                    "experiment_id": experiment.experiment_id,
                    "name": experiment.name,
                    "artifact_location": experiment.artifact_location,
                    "lifecycle_stage": experiment.lifecycle_stage,
                    "tags": experiment.tags,
                    "creation_time": experiment.creation_time,
                }
                for experiment in experiments
            ),
            key=lambda experiment: str(experiment["name"]),
        ),
        "runs": [_run(client, run) for run in runs],
        "logged_models": [
            {
                "model_id": model.model_id,
                "experiment_id": model.experiment_id,
                "name": model.name,
                "source_run_id": model.source_run_id,
                "model_type": model.model_type,
                "status": str(model.status),
                "creation_timestamp": model.creation_timestamp,
                "params": model.params,
                "tags": model.tags,
            }
            for model in client.search_logged_models(experiment_ids)
        ],
        "registered_models": [_registered_model(client, model) for model in registered],
        "traces": [_trace(trace) for trace in _search_traces(client, experiment_ids)],
    }


def _search_traces(client: Any, experiment_ids: list[str]) -> list[Any]:
    # Later versions name the experiments "locations" (and warn about experiment_ids).
    if "locations" in inspect.signature(client.search_traces).parameters:
        return list(client.search_traces(locations=experiment_ids))
    return list(client.search_traces(experiment_ids=experiment_ids))


def _number(value: float) -> str:
    """A metric value as text, so NaN compares equal to NaN."""
    return repr(value) if math.isfinite(value) else str(value)


def _run(client: Any, run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "lifecycle_stage": info.lifecycle_stage,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
        "user_id": info.user_id,
        "params": data.params,
        "tags": data.tags,
        "metrics": {key: _number(value) for key, value in sorted(data.metrics.items())},
        "metric_history": {
            key: [
                [metric.step, metric.timestamp, _number(metric.value)]
                for metric in sorted(
                    client.get_metric_history(info.run_id, key),
                    key=lambda metric: (metric.step, metric.timestamp),
                )
            ]
            for key in sorted(data.metrics)
        },
        "dataset_inputs": [
            {
                "name": dataset_input.dataset.name,
                "digest": dataset_input.dataset.digest,
                "source_type": dataset_input.dataset.source_type,
                "source": dataset_input.dataset.source,
                "schema": dataset_input.dataset.schema,
                "profile": dataset_input.dataset.profile,
                "tags": {tag.key: tag.value for tag in dataset_input.tags},
            }
            for dataset_input in (run.inputs.dataset_inputs if run.inputs else [])
        ],
    }


def _registered_model(client: Any, model: Any) -> dict[str, Any]:
    versions = sorted(
        client.search_model_versions(f"name = '{model.name}'"),
        key=lambda version: int(version.version),
    )
    # MLflow 3.0 gives version numbers as numbers, later versions as strings.
    return {
        "name": model.name,
        "description": model.description,
        "tags": model.tags,
        "aliases": {alias: str(version) for alias, version in model.aliases.items()},
        "creation_timestamp": model.creation_timestamp,
        "versions": [
            {
                "version": str(version.version),  # a number in MLflow 3.0
                "source": version.source,
                "run_id": version.run_id,
                "status": version.status,
                "description": version.description,
                "tags": version.tags,
                "aliases": sorted(version.aliases),
                "creation_timestamp": version.creation_timestamp,
            }
            for version in versions
        ],
    }


def _trace(trace: Any) -> dict[str, Any]:
    info = trace.info
    return {
        "trace_id": info.trace_id,
        "experiment_id": info.experiment_id,
        "request_time": info.request_time,
        "execution_duration": info.execution_duration,
        "state": info.state.value,
        # No previews: MLflow 3.0 stored none and derived them from the metadata on reading.
        "tags": info.tags,
        "metadata": info.trace_metadata,
        "spans": [
            {
                "name": span.name,
                "span_id": span.span_id,
                "parent_id": span.parent_id,
                "span_type": span.span_type,
                "start_time_ns": span.start_time_ns,
                "end_time_ns": span.end_time_ns,
                "status": str(span.status.status_code),
                "inputs": span.inputs,
                "outputs": span.outputs,
                "attributes": span.attributes,
            }
            for span in sorted(trace.data.spans, key=lambda span: span.start_time_ns)
        ],
    }


def main(argv: list[str]) -> int:
    artifact_root, out = Path(argv[1]), Path(argv[2])
    tracking_uri = os.environ[DATABASE_URI_VARIABLE]
    write(tracking_uri, artifact_root)

    from mlflow.tracking import MlflowClient

    content = snapshot(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri))
    out.write_text(json.dumps(content, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
