"""Shared pieces of the load and fault tests: REST writers that record exactly what the server
acknowledged, a PSS sampler, process-tree checks and the nginx access-log status counter.

Fault tests talk REST with `requests` (no client-side retries), so every error the server
gives is seen and counted; the load test uses the real MLflow client on top.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg
import requests

from tests.support.services import PostgresCluster, Stack, descendants, tree_pss_mb

API = "/api/2.0/mlflow"
# nginx's access log line (image/mlflow_heroku_runtime/nginx.conf.j2, log_format heroku):
#   <client> "<request line>" <status> <bytes> ...
ACCESS_LOG_LINE = re.compile(r'^\S+ "(?P<request>[^"]*)" (?P<status>\d{3}) ')


def create_experiment(stack: Stack, name: str) -> str:
    reply = requests.post(
        f"{stack.url}{API}/experiments/create", json={"name": name}, auth=stack.auth, timeout=30
    )
    reply.raise_for_status()
    experiment_id: str = reply.json()["experiment_id"]
    return experiment_id


def create_run_info(stack: Stack, experiment_id: str) -> dict[str, Any]:
    """Creates a run over REST; returns MLflow's run info (run_id, artifact_uri...)."""
    reply = requests.post(
        f"{stack.url}{API}/runs/create",
        json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)},
        auth=stack.auth,
        timeout=30,
    )
    reply.raise_for_status()
    info: dict[str, Any] = reply.json()["run"]["info"]
    return info


def create_run(stack: Stack, experiment_id: str) -> str:
    run_id: str = create_run_info(stack, experiment_id)["run_id"]
    return run_id


def metric_steps(stack: Stack, run_id: str, key: str) -> Counter[int]:
    """Every logged step of a metric, counted (a count above 1 is a duplicate)."""
    steps: Counter[int] = Counter()
    page_token = ""
    for _page in range(1000):  # bounded: 1000 pages of 25,000 points
        params = {"run_id": run_id, "metric_key": key, "max_results": "25000"}
        if page_token:
            params["page_token"] = page_token
        reply = requests.get(
            f"{stack.url}{API}/metrics/get-history", params=params, auth=stack.auth, timeout=60
        )
        reply.raise_for_status()
        body = reply.json()
        steps.update(int(point["step"]) for point in body.get("metrics", []))
        page_token = body.get("next_page_token", "")
        if not page_token:
            return steps
    raise AssertionError("metric history did not end within 1000 pages")


def stored_metric_steps(postgres: PostgresCluster, run_id: str, key: str) -> Counter[int]:
    """The same, read straight from MLflow's table (for when no server is running)."""
    with psycopg.connect(
        host="127.0.0.1",
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        dbname=postgres.database,
    ) as connection:
        rows = connection.execute(
            "SELECT step FROM metrics WHERE run_uuid = %s AND key = %s", (run_id, key)
        ).fetchall()
    return Counter(int(row[0]) for row in rows)


@dataclass
class WriteLog:
    """What one writer saw: acknowledged steps, failures with their time and cause."""

    acknowledged: list[int] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what)
    latencies: list[float] = field(default_factory=list)
    last_success: float = 0.0


class MetricWriters:
    """`count` threads, each POSTing log-metric for its own run on a keep-alive session until
    stop() (or `max_requests` each). A write counts as acknowledged only on HTTP 200."""

    def __init__(
        self, stack: Stack, run_ids: list[str], key: str = "loss", max_requests: int = 100_000
    ) -> None:
        self.stack = stack
        self.run_ids = run_ids
        self.key = key
        self.max_requests = max_requests
        self.logs = [WriteLog() for _ in run_ids]
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._write, args=(index,), daemon=True)
            for index in range(len(run_ids))
        ]

    def _write(self, index: int) -> None:
        log = self.logs[index]
        with requests.Session() as session:
            session.auth = self.stack.auth
            for step in range(self.max_requests):
                if self.stopping.is_set():
                    return
                body = {
                    "run_id": self.run_ids[index],
                    "key": self.key,
                    "value": step / 7,
                    "timestamp": int(time.time() * 1000),
                    "step": step,
                }
                began = time.monotonic()
                try:
                    reply = session.post(
                        f"{self.stack.url}{API}/runs/log-metric", json=body, timeout=30
                    )
                except requests.RequestException as error:
                    log.failures.append((began, type(error).__name__))
                    time.sleep(0.05)  # a refused connection fails at once: do not spin
                    continue
                log.latencies.append(time.monotonic() - began)
                if reply.status_code == 200:
                    log.acknowledged.append(step)
                    log.last_success = time.monotonic()
                else:
                    log.failures.append((began, f"HTTP {reply.status_code}"))
                    time.sleep(0.05)

    def start(self) -> MetricWriters:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads), "a writer hung"

    @property
    def acknowledged(self) -> int:
        return sum(len(log.acknowledged) for log in self.logs)

    @property
    def failures(self) -> list[tuple[float, str]]:
        return sorted(failure for log in self.logs for failure in log.failures)


@contextlib.contextmanager
def running_writers(stack: Stack, run_ids: list[str], key: str = "loss") -> Iterator[MetricWriters]:
    writers = MetricWriters(stack, run_ids, key).start()
    try:
        yield writers
    finally:
        writers.stop()


class PeakPss:
    """Samples the PSS of a process tree every 0.5 s in the background; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.5):
            self.peak_mb = max(self.peak_mb, tree_pss_mb(self.pid))

    def __enter__(self) -> PeakPss:
        self.peak_mb = tree_pss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(10)


class PeakConnections:
    """Samples how many connections the stack holds to its database every 0.25 s (our own
    sampling connection excluded); keeps the peak."""

    def __init__(self, postgres: PostgresCluster) -> None:
        self.postgres = postgres
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with psycopg.connect(
            host="127.0.0.1",
            port=self.postgres.port,
            user=self.postgres.user,
            password=self.postgres.password,
            dbname=self.postgres.database,
            autocommit=True,
        ) as connection:
            while not self._done.wait(0.25):
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(10)


def percentile_ms(latencies: list[float], fraction: float) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def server_errors(output: str) -> list[str]:
    """The access-log lines with a 5xx status."""
    return [
        line
        for line in output.splitlines()
        if (match := ACCESS_LOG_LINE.match(line)) and match.group("status").startswith("5")
    ]


def group_members(pgid: int) -> list[str]:
    """Command lines of the live (non-zombie) processes in process group pgid. The stack
    runs in its own group, so anything listed after the entrypoint exited is an orphan."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                found.append(f"{process.pid}: {command_line(process.pid)}")
        except (psutil.Error, ProcessLookupError):
            continue  # gone while we looked
    return found


def orphans_after_exit(pgid: int, timeout: float = 3.0) -> list[str]:
    """Group members still alive `timeout` seconds after the leader exited (none is right)."""
    wait_until(lambda: not group_members(pgid), timeout)
    return group_members(pgid)


def live_pids(pids: list[int]) -> list[int]:
    """The pids that still exist and are not zombies."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of pid (zombies included; none when pid is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def tree_of(stack: Stack) -> list[int]:
    return descendants(stack.process.pid)


def command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or timeout seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
