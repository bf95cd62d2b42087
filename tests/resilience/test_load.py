"""Load: 16 real MLflow clients log metrics, params and small artifacts through nginx for a
bounded time on the shared stack (PostgreSQL + moto S3); afterwards every acknowledged write
is read back: 0 lost, 0 duplicated, 0 5xx. Throughput, p50/p99 and peak PSS are reported.

Duration: MLFLOW_HEROKU_LOAD_SECONDS (default 15 s in CI; docs/resilience.md records 60 s).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.resilience.helpers import PeakConnections, PeakPss, percentile_ms, server_errors
from tests.support.services import TEST_ARTIFACTS, PostgresCluster, S3Server, Stack

CLIENTS = 16
LOAD_SECONDS = float(os.environ.get("MLFLOW_HEROKU_LOAD_SECONDS", "15"))
PARAM_EVERY = 10  # every 10th operation of a client also logs a param
ARTIFACT_EVERY = 25  # and every 25th a small text artifact
PSS_LIMIT_MB = 512  # the dyno's memory
DB_CONNECTION_BUDGET = 10  # half of Heroku Postgres essential-0's 20 connections
REPORT = TEST_ARTIFACTS / "resilience-load.json"

pytestmark = pytest.mark.integration


@dataclass
class ClientLog:
    run_id: str
    metric_steps: list[int] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # file name -> content
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def client_loop(client: MlflowClient, log: ClientLog, stop_at: float) -> None:
    """Logs until stop_at; a write is recorded as acknowledged only when the call returned."""
    for step in range(1_000_000):  # bounded; the clock ends it long before
        if time.monotonic() >= stop_at:
            return
        began = time.perf_counter()
        try:
            client.log_metric(log.run_id, "loss", 1.0 / (step + 1), step=step)
            log.metric_steps.append(step)
            if step % PARAM_EVERY == 0:
                client.log_param(log.run_id, f"p{step}", f"value-{step}")
                log.params[f"p{step}"] = f"value-{step}"
            if step % ARTIFACT_EVERY == 0:
                content = f"run {log.run_id} step {step}\n"
                client.log_text(log.run_id, content, f"small/{step}.txt")
                log.artifacts[f"{step}.txt"] = content
        except Exception as error:  # any failure is a finding: recorded, asserted on below
            log.errors.append(f"step {step}: {type(error).__name__}: {str(error)[:200]}")
        log.latencies.append(time.perf_counter() - began)


def test_16_clients_lose_nothing(
    stack: Stack, s3: S3Server, postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clients get only the URL and the login: no AWS keys, and no client-side retries
    # that could hide a 5xx from the count.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_POOL_MAXSIZE", str(CLIENTS))
    client = MlflowClient(tracking_uri=stack.url)
    experiment_id = client.create_experiment(f"load-{time.time_ns()}")
    logs = [ClientLog(client.create_run(experiment_id).info.run_id) for _ in range(CLIENTS)]
    output_before = len(stack.output())

    with PeakPss(stack.process.pid) as pss, PeakConnections(postgres) as connections:
        began = time.monotonic()
        stop_at = began + LOAD_SECONDS
        threads = [
            threading.Thread(target=client_loop, args=(client, log, stop_at), daemon=True)
            for log in logs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LOAD_SECONDS + 120)
        elapsed = time.monotonic() - began
    assert not any(thread.is_alive() for thread in threads), "a client hung"

    latencies = [value for log in logs for value in log.latencies]
    operations = len(latencies)
    report: dict[str, Any] = {
        "clients": CLIENTS,
        "seconds": round(elapsed, 1),
        "operations": operations,
        "operations_per_second": round(operations / elapsed, 1),
        "metrics": sum(len(log.metric_steps) for log in logs),
        "params": sum(len(log.params) for log in logs),
        "artifacts": sum(len(log.artifacts) for log in logs),
        "p50_ms": round(percentile_ms(latencies, 0.50), 1),
        "p99_ms": round(percentile_ms(latencies, 0.99), 1),
        "peak_pss_mb": round(pss.peak_mb),
        "peak_db_connections": connections.peak,
        "errors": [error for log in logs for error in log.errors][:20],
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2))
    print(f"\nload report: {json.dumps(report)}")

    # 0 5xx answers: nginx logged every request of the window (it writes its access log once
    # a second, in order: once a request made after the window is in, all of them are).
    marker = f"/health?after-load-{time.time_ns()}"
    assert requests.get(f"{stack.url}{marker}", timeout=10).status_code == 200
    output = stack.wait_for_output(marker)
    assert marker in output, "nginx's access log did not arrive within 5 s"
    fives = server_errors(output[output_before:])
    assert fives == [], f"{len(fives)} 5xx answers, e.g. {fives[:3]}"
    assert report["errors"] == [], "client calls failed under load"
    assert report["metrics"] >= CLIENTS * 5, f"implausibly little work done: {report}"
    assert report["artifacts"] >= CLIENTS, f"every client logged an artifact: {report}"

    # Every acknowledged write read back: 0 lost, 0 duplicated.
    artifact_keys = s3.keys()
    for log in logs:
        history = client.get_metric_history(log.run_id, "loss")
        steps = sorted(point.step for point in history)
        assert steps == sorted(log.metric_steps), (
            f"run {log.run_id}: {len(log.metric_steps)} acknowledged, {len(steps)} stored "
            f"(lost {sorted(set(log.metric_steps) - set(steps))[:5]}, duplicated "
            f"{sorted({s for s in steps if steps.count(s) > 1})[:5]})"
        )
        assert client.get_run(log.run_id).data.params == log.params
        stored = {
            Path(key).name: key for key in artifact_keys if f"/{log.run_id}/artifacts/small/" in key
        }
        assert set(stored) == set(log.artifacts), f"run {log.run_id}: artifacts differ"
        for name, content in log.artifacts.items():
            assert s3.read(stored[name]).decode() == content

    assert pss.peak_mb < PSS_LIMIT_MB, f"peak PSS {pss.peak_mb:.0f} MB on a 512 MB dyno"
    # Heroku Postgres essential-0 allows 20 connections; a dyno must leave room for a second
    # dyno and one-off tools (heroku pg:psql), so one dyno under full load stays at half.
    assert 0 < connections.peak <= DB_CONNECTION_BUDGET, f"{connections.peak} DB connections"
