"""The load: authenticated log-metric POSTs from client threads, timed in slices, and their
statistics; and the resilience load test's mix of real MLflow clients.

Load client: one requests.Session per client thread. urllib3 sets TCP_NODELAY on every
connection and http.client sends a bytes body in the same send() as the headers, so the client
adds no Nagle / delayed-ACK stall of its own (docs/benchmark.md, "How it measures").
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

LOG_METRIC_PATH = "/api/2.0/mlflow/runs/log-metric"


@dataclass
class LoadSample:
    """Raw figures of one timed slice of load: per-request latencies, errors, seconds."""

    latencies: list[float]
    errors: int
    seconds: float


@dataclass
class LoadCell:
    """One path at one client count: the slices of it summed up."""

    path: str  # "nginx" or "direct"
    clients: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    slice_throughputs: list[float] = field(default_factory=list)  # in the order they ran


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(path: str, clients: int, samples: list[LoadSample]) -> LoadCell:
    merged = sorted(value for sample in samples for value in sample.latencies)
    errors = sum(sample.errors for sample in samples)
    elapsed = sum(sample.seconds for sample in samples)
    return LoadCell(
        path=path,
        clients=clients,
        requests=len(merged),
        errors=errors,
        seconds=round(elapsed, 2),
        throughput=round((len(merged) - errors) / elapsed, 1),
        p50_ms=round(percentile(merged, 0.50) * 1000, 1),
        p99_ms=round(percentile(merged, 0.99) * 1000, 1),
        slice_throughputs=[
            round((len(s.latencies) - s.errors) / s.seconds, 1) for s in samples if s.seconds
        ],
    )


def paired_overhead(nginx: LoadCell, direct: LoadCell) -> float | None:
    """Median over rounds of 1 - nginx/direct, each round's two slices run back to back.
    A burst of background load lands in one slice and skews the pooled ratio; the median of
    the pairs is barely moved by it."""
    pairs = [
        1 - n / d
        for n, d in zip(nginx.slice_throughputs, direct.slice_throughputs, strict=False)
        if d > 0
    ]
    return statistics.median(pairs) if pairs else None


def create_runs(base: str, auth: tuple[str, str] | None, count: int) -> list[str]:
    with requests.Session() as session:
        session.auth = auth
        name = f"bench-{secrets.token_hex(4)}"
        reply = session.post(
            f"{base}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=30
        )
        reply.raise_for_status()
        experiment_id = reply.json()["experiment_id"]
        runs = []
        for _ in range(count):
            reply = session.post(
                f"{base}/api/2.0/mlflow/runs/create",
                json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)},
                timeout=30,
            )
            reply.raise_for_status()
            runs.append(reply.json()["run"]["info"]["run_id"])
        return runs


def log_metric_load(
    bases: list[str], auth: tuple[str, str] | None, clients: int, seconds: float, keep_alive: bool
) -> LoadSample:
    """`clients` threads, each with its own session and run, POST log-metric for `seconds`;
    client i sends to ``bases[i % len(bases)]`` (one per MLflow worker port on the direct
    path: an even split). Without keep_alive every request asks for `Connection: close` (a
    fresh connection each time, as the recipe's nginx opens to MLflow)."""
    run_ids = create_runs(bases[0], auth, clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]
    max_requests = int(seconds * 2000)  # bound on every loop, far above what a client reaches

    def client(index: int) -> None:
        with requests.Session() as session:
            session.auth = auth
            if not keep_alive:
                session.headers["Connection"] = "close"
            url = f"{bases[index % len(bases)]}{LOG_METRIC_PATH}"

            def one(step: int) -> bool:
                body = {
                    "run_id": run_ids[index],
                    "key": "loss",
                    "value": step * 0.5,
                    "timestamp": int(time.time() * 1000),
                    "step": step,
                }
                try:
                    return session.post(url, json=body, timeout=30).status_code == 200
                except requests.RequestException:
                    return False

            for step in range(3):  # warm-up: open the keep-alive connection
                one(-1 - step)
            barrier.wait()
            for step in range(max_requests):
                if time.monotonic() >= stop_at[0]:
                    break
                began = time.perf_counter()
                ok = one(step)
                latencies[index].append(time.perf_counter() - began)
                if not ok:
                    errors[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + 3600  # set for real once everyone is warm
    barrier.wait()
    began = time.monotonic()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.monotonic() - began
    return LoadSample([v for per in latencies for v in per], sum(errors), elapsed)


LoadRunner = Callable[[list[str], "tuple[str, str] | None", int, float, bool], LoadSample]


def load_runner(pool: concurrent.futures.Executor) -> LoadRunner:
    """Runs ``log_metric_load`` in the pool's process. The clients must not share a GIL with
    this process's bookkeeping: the thread reading each stack's output handles one access-log
    line per request through nginx (none on the direct path), which made nginx look slower
    than it is (docs/benchmark.md, "How it measures")."""

    def run(
        bases: list[str],
        auth: tuple[str, str] | None,
        clients: int,
        seconds: float,
        keep_alive: bool,
    ) -> LoadSample:
        return pool.submit(log_metric_load, bases, auth, clients, seconds, keep_alive).result()

    return run


def run_artifact_mix(base: str, auth: tuple[str, str], seconds: float) -> dict[str, float]:
    """16 real MLflow clients doing what tests/resilience/test_load.py does (log-metric, a
    param every 10th and a small artifact upload every 25th operation) for `seconds`."""
    from mlflow.tracking import MlflowClient

    from tests.resilience.test_load import CLIENTS, ClientLog, client_loop

    saved = dict(os.environ)
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ.pop(name, None)  # the clients get only the URL and the login
        os.environ.update(
            MLFLOW_TRACKING_USERNAME=auth[0],
            MLFLOW_TRACKING_PASSWORD=auth[1],
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            MLFLOW_HTTP_POOL_MAXSIZE=str(CLIENTS),
        )
        client = MlflowClient(tracking_uri=base)
        experiment_id = client.create_experiment(f"mix-{secrets.token_hex(4)}")
        logs = [ClientLog(client.create_run(experiment_id).info.run_id) for _ in range(CLIENTS)]
        began = time.monotonic()
        threads = [
            threading.Thread(target=client_loop, args=(client, log, began + seconds), daemon=True)
            for log in logs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        elapsed = time.monotonic() - began
    finally:
        os.environ.clear()
        os.environ.update(saved)
    latencies = sorted(value for log in logs for value in log.latencies)
    return {
        "seconds": round(elapsed, 1),
        "operations_per_second": round(len(latencies) / elapsed, 1),
        "artifacts": sum(len(log.artifacts) for log in logs),
        "errors": sum(len(log.errors) for log in logs),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }
