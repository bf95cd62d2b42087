"""Restarts and deploys as an MLflow 3.18 client sees them: training scripts keep creating
experiments and runs and logging params, metrics and batches through
tests/support/mlflow_318_client.py (3.18's retry rules) while the stack is stopped with
SIGTERM to every process and a new one starts on the same port and database, as Heroku
restarts a dyno without preboot. No call may fail and every acknowledged write must read back,
exactly once; the new stack must hold the requests that reach it during its boot (nginx's
access log: waits, no 5xx), not refuse them: a 3.18 client does not repeat a create after a 503.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.resilience.helpers import signal_all, tree_of, wait_until
from tests.support.mlflow_318_client import Call, CallFailedError, Mlflow318Client
from tests.support.services import (
    PostgresCluster,
    S3Server,
    Stack,
    free_port,
    heroku_env,
    migration_lock_held,
    own_database,
    start_stack,
    wait_for_port,
)

pytestmark = pytest.mark.integration

SCRIPTS = 3  # training scripts running at once
METRIC_STEPS = 4
# A training script computes between its calls. (A client that sends its next request within a
# fraction of a millisecond of an answer can meet nginx closing idle keep-alive connections at
# SIGTERM and get a reset, which 3.18 does not repeat for a create: docs/operations.md,
# "Restarts and deploys".)
THINK_SECONDS = 0.03
RUNS_PER_EXPERIMENT = 8
PROGRESS_RUNS = 3  # finished runs per script before the restart and after the new stack serves
STOP_LIMIT_SECONDS = 10
# nginx's access log (nginx.conf.j2, log_format heroku): client "request" status bytes seconds
ACCESS_LOG_LINE = re.compile(
    r'^\S+ "(?P<method>\S+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) \d+ (?P<seconds>[\d.]+) '
)


@dataclass
class RunWrites:
    """What the server acknowledged for one run."""

    experiment_id: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)  # metric key -> steps
    finished: bool = False


class TrainingScripts:
    """``SCRIPTS`` threads, each a training script on its own 3.18 client: every
    ``RUNS_PER_EXPERIMENT`` runs a new experiment; per run a param, metric points one by one, a
    batch (metrics, a param, a tag) and the run's end, THINK_SECONDS apart. Only acknowledged
    writes are recorded; a failed call is kept and the script goes on with its next run."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.clients = [Mlflow318Client(stack.url, stack.auth) for _ in range(SCRIPTS)]
        self.prefix = prefix
        self.runs: dict[str, RunWrites] = {}
        self.experiments: list[str] = []
        self.failures: list[Call] = []
        self.finished = [0] * SCRIPTS
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._train, args=(index,), daemon=True)
            for index in range(SCRIPTS)
        ]

    def _train(self, index: int) -> None:
        client = self.clients[index]
        experiment_id = ""
        for number in range(100_000):
            if self.stopping.is_set():
                return
            try:
                if number % RUNS_PER_EXPERIMENT == 0:
                    experiment_id = client.create_experiment(f"{self.prefix}-{index}-{number}")
                    self.experiments.append(experiment_id)
                    time.sleep(THINK_SECONDS)
                self._one_run(client, experiment_id, f"script{index}-run{number}")
                self.finished[index] += 1
            except CallFailedError as failed:
                self.failures.append(failed.call)
                time.sleep(0.5)

    def _one_run(self, client: Mlflow318Client, experiment_id: str, name: str) -> None:
        run_id = client.create_run(experiment_id, name)
        writes = self.runs[run_id] = RunWrites(experiment_id)
        time.sleep(THINK_SECONDS)
        client.log_param(run_id, "learning_rate", "0.01")
        writes.params["learning_rate"] = "0.01"
        for step in range(METRIC_STEPS):
            time.sleep(THINK_SECONDS)
            client.log_metric(run_id, "loss", 1 / (step + 1), step)
            writes.steps.setdefault("loss", []).append(step)
        time.sleep(THINK_SECONDS)
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[
                {"key": "accuracy", "value": step / 10, "timestamp": now, "step": step}
                for step in range(3)
            ],
            params=[{"key": "epochs", "value": "3"}],
            tags=[{"key": "phase", "value": "trained"}],
        )
        writes.steps["accuracy"] = [0, 1, 2]
        writes.params["epochs"] = "3"
        writes.tags["phase"] = "trained"
        time.sleep(THINK_SECONDS)
        client.finish_run(run_id)
        writes.finished = True
        time.sleep(THINK_SECONDS)

    def start(self) -> TrainingScripts:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(300)  # a call may still be in its backoff (up to ~4 min in all)
        assert not any(thread.is_alive() for thread in self.threads), "a script hung"
        for client in self.clients:
            client.close()

    def progressed(self, since: list[int]) -> bool:
        return all(
            now - then >= PROGRESS_RUNS for now, then in zip(self.finished, since, strict=True)
        )

    @property
    def calls(self) -> list[Call]:
        return [call for client in self.clients for call in client.calls]


@contextlib.contextmanager
def training(stack: Stack, prefix: str) -> Iterator[TrainingScripts]:
    scripts = TrainingScripts(stack, prefix).start()
    try:
        yield scripts
    finally:
        scripts.stop()


class CreateWhileBooting:
    """One CreateRun (not safe to repeat for 3.18) sent as soon as the new stack's $PORT
    accepts connections, so one create surely meets the boot; join() gives its seconds."""

    def __init__(self, stack: Stack, scripts: TrainingScripts) -> None:
        self.client = Mlflow318Client(stack.url, stack.auth)
        self.scripts = scripts
        self.experiment_id = scripts.experiments[0]
        self.thread = threading.Thread(target=self._create, daemon=True)
        self.thread.start()

    def _create(self) -> None:
        try:
            run_id = self.client.create_run(self.experiment_id, "created-during-boot")
            self.scripts.runs[run_id] = RunWrites(self.experiment_id)
        except CallFailedError as failed:
            self.scripts.failures.append(failed.call)

    def join(self) -> float:
        self.thread.join(120)
        self.client.close()
        [call] = self.client.calls
        assert call.ok, call
        return call.seconds


def create_run_while_booting(stack: Stack, scripts: TrainingScripts) -> CreateWhileBooting:
    assert wait_for_port(stack.port, 10), stack.output()
    return CreateWhileBooting(stack, scripts)


def stop_like_heroku(stack: Stack) -> float:
    """SIGTERM to every process of the stack at once; the seconds until the entrypoint exited."""
    signalled = time.monotonic()
    signal_all(tree_of(stack), signal.SIGTERM)
    code = stack.process.wait(STOP_LIMIT_SECONDS + 5)
    took = time.monotonic() - signalled
    assert code == 0, stack.output()[-3000:]
    assert took <= STOP_LIMIT_SECONDS
    return took


def assert_everything_reads_back(stack: Stack, scripts: TrainingScripts) -> None:
    """Every experiment holds exactly the runs whose create was acknowledged (a create sent
    twice would add one), with their params, tags, status and each metric step once."""
    reader = Mlflow318Client(stack.url, stack.auth)
    try:
        for experiment_id in scripts.experiments:
            stored = {run["info"]["run_id"] for run in reader.search_runs(experiment_id)}
            expected = {
                run_id
                for run_id, writes in scripts.runs.items()
                if writes.experiment_id == experiment_id
            }
            assert stored == expected, (experiment_id, stored ^ expected)
        for run_id, writes in scripts.runs.items():
            run = reader.get_run(run_id)
            params = {param["key"]: param["value"] for param in run["data"].get("params", [])}
            tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
            assert params.items() >= writes.params.items(), (run_id, params)
            assert tags.items() >= writes.tags.items(), (run_id, tags)
            assert (run["info"]["status"] == "FINISHED") == writes.finished, run["info"]
            for key, steps in writes.steps.items():
                stored_steps = Counter(
                    int(point["step"]) for point in reader.metric_history(run_id, key)
                )
                assert stored_steps == Counter(steps), (run_id, key, stored_steps)
    finally:
        reader.close()


def access_log(stack: Stack) -> list[tuple[str, str, int, float]]:
    """(method, path, status, seconds) of every request in the stack's nginx access log."""
    entries = []
    for line in stack.output().splitlines():
        if match := ACCESS_LOG_LINE.match(line):
            entries.append(
                (match["method"], match["path"], int(match["status"]), float(match["seconds"]))
            )
    return entries


def report(what: str, scripts: TrainingScripts, stopped_in: float, new: Stack) -> tuple[float, int]:
    """Print what the client and the new stack saw; returns the longest request the new stack
    held and how many API requests it answered with 5xx."""
    calls = scripts.calls
    boot = re.search(r"MLflow ready after .*", new.output())
    retried = Counter(attempt for call in calls for attempt in call.retried)
    api = [entry for entry in access_log(new) if entry[1].startswith("/api/")]
    held = max((seconds for _method, _path, _status, seconds in api), default=0.0)
    errors = sum(1 for entry in api if entry[2] >= 500)
    slowest = max((call.seconds for call in calls), default=0.0)
    print(
        f"\n{what}: {len(calls)} calls, {len(scripts.failures)} failed, "
        f"{sum(1 for call in calls if call.retried)} retried ({dict(retried)}); slowest call "
        f"{slowest:.1f} s; old stack stopped in {stopped_in:.1f} s; the new stack held a "
        f"request for up to {held:.1f} s and answered {errors} API requests with 5xx; "
        f"{len(scripts.runs)} runs in {len(scripts.experiments)} experiments; new stack: "
        f"{boot[0] if boot else 'never ready'}"
    )
    return held, errors


def test_a_restart_is_invisible_to_a_318_client(postgres: PostgresCluster, s3: S3Server) -> None:
    """Heroku restarts the dyno (daily cycling, a config change): the old stack gets SIGTERM
    everywhere, the new one boots on the same database. The default two forked workers."""
    with own_database(postgres, "restart") as (_name, database_url):
        env = heroku_env(port=free_port(), database_url=database_url, s3=s3)
        old = start_stack(env, ready_timeout=90)
        new: Stack | None = None
        try:
            with training(old, f"restart-{time.time_ns()}") as scripts:
                assert wait_until(lambda: scripts.progressed([0] * SCRIPTS), 60), scripts.failures
                stopped_in = stop_like_heroku(old)
                new = start_stack(env, wait_ready=False)
                during_boot = create_run_while_booting(new, scripts)
                new.wait_ready(90)
                ready = list(scripts.finished)
                assert wait_until(lambda: scripts.progressed(ready), 60), scripts.failures
            _held, errors = report("restart", scripts, stopped_in, new)
            assert scripts.failures == []
            assert errors == 0, [entry for entry in access_log(new) if entry[2] >= 500]
            assert during_boot.join() > 1, "the create sent during the boot was not held"
            assert not any(
                "status" in attempt for call in scripts.calls for attempt in call.retried
            )
            assert_everything_reads_back(new, scripts)
        finally:
            old.stop()
            if new is not None:
                new.stop()


def test_a_deploy_that_boots_slowly_holds_requests(postgres: PostgresCluster, s3: S3Server) -> None:
    """A deploy without preboot whose new release boots slowly: another dyno holds the
    migration lock for LOCK_SECONDS (as the first dyno of a release migrates while the others
    wait), and the new release runs one uvicorn worker (a config change). Requests that reach
    it wait the whole boot and are answered within nginx's read timeout; none fails."""
    lock_seconds = 10
    with own_database(postgres, "deploy") as (name, database_url):
        env = heroku_env(port=free_port(), database_url=database_url, s3=s3)
        old = start_stack(env, ready_timeout=90)
        new: Stack | None = None
        try:
            with training(old, f"deploy-{time.time_ns()}") as scripts:
                assert wait_until(lambda: scripts.progressed([0] * SCRIPTS), 60), scripts.failures
                with migration_lock_held(postgres, name):
                    stopped_in = stop_like_heroku(old)
                    new = start_stack({**env, "WEB_CONCURRENCY": "1"}, wait_ready=False)
                    during_boot = create_run_while_booting(new, scripts)
                    time.sleep(lock_seconds)
                new.wait_ready(90)
                ready = list(scripts.finished)
                assert wait_until(lambda: scripts.progressed(ready), 60), scripts.failures
            held, errors = report("slow deploy", scripts, stopped_in, new)
            assert "waiting for another process's migration" in new.output()
            assert scripts.failures == []
            assert errors == 0, [entry for entry in access_log(new) if entry[2] >= 500]
            assert lock_seconds < during_boot.join() < 28, (
                "held for the boot, within nginx's timeout"
            )
            assert held < 28
            assert not any(
                "status" in attempt for call in scripts.calls for attempt in call.retried
            )
            assert_everything_reads_back(new, scripts)
        finally:
            old.stop()
            if new is not None:
                new.stop()
