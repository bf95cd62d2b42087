"""PostgreSQL faults: restarted under load, down at boot (then given up on), late at boot.

Each test has its own PostgreSQL cluster and stack: they stop the database on purpose.
"""

from __future__ import annotations

import time
import urllib.parse

import pytest
import requests

from tests.resilience.helpers import (
    create_experiment,
    create_run,
    metric_steps,
    orphans_after_exit,
    running_writers,
    wait_until,
)
from tests.support.services import (
    PostgresCluster,
    S3Server,
    Stack,
    free_port,
    heroku_env,
    postgres_cluster,
    running_stack,
    start_stack,
    wait_for_port,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 2.0
# After the database is back, pooled connections that died with it may fail once each
# before the pool notices; errors later than this after the restart are not "bounded".
RECOVERY_GRACE_SECONDS = 5.0
READY_PATH = "/api/2.0/mlflow/experiments/get?experiment_id=0"
BOOT_WAIT_SECONDS = 8  # MLFLOW_HEROKU_DB_WAIT_SECONDS for the boot tests (default 40)


def test_postgres_restart_under_load_loses_nothing(s3: S3Server) -> None:
    with (
        postgres_cluster() as postgres,
        running_stack(
            heroku_env(port=free_port(), database_url=postgres.url, s3=s3), ready_timeout=90
        ) as stack,
    ):
        experiment_id = create_experiment(stack, f"pg-restart-{time.time_ns()}")
        run_ids = [create_run(stack, experiment_id) for _ in range(4)]
        with running_writers(stack, run_ids) as writers:
            assert wait_until(lambda: writers.acknowledged >= 40, 30), "no load before the fault"
            outage_began = time.monotonic()
            postgres.stop("fast")
            time.sleep(OUTAGE_SECONDS)
            postgres.start()
            restarted = time.monotonic()
            # Recovered by itself: every writer gets acknowledgements again.
            recovered = wait_until(
                lambda: all(log.last_success > restarted for log in writers.logs), 30
            )
            time.sleep(1.0)
        recovery_seconds = max(log.last_success for log in writers.logs) - restarted
        failures = writers.failures
        print(
            f"\npostgres restart: {writers.acknowledged} acknowledged, {len(failures)} failed "
            f"({sorted({what for _, what in failures})}), outage {restarted - outage_began:.1f} s"
        )
        assert recovered, f"writes did not resume within 30 s of the restart: {failures[-3:]}"
        assert stack.process.poll() is None, "the entrypoint exited: Heroku would restart it"

        # Bounded: errors only during the outage and the short recovery after it, and each
        # one a clean HTTP answer from nginx (no hung or dropped connection).
        late = [f for f in failures if f[0] > restarted + RECOVERY_GRACE_SECONDS]
        assert late == [], f"errors long after the database was back: {late[:5]}"
        assert all(what.startswith("HTTP 5") for _, what in failures), failures[:5]
        assert all(f[0] >= outage_began - 1 for f in failures), "errors before the fault"
        print(f"writes resumed {recovery_seconds:.1f} s after the restart at the latest")

        # Nothing acknowledged lost, nothing stored twice.
        for run_id, log in zip(run_ids, writers.logs, strict=True):
            stored = metric_steps(stack, run_id, "loss")
            lost = [step for step in log.acknowledged if stored[step] == 0]
            assert lost == [], f"run {run_id}: acknowledged but lost: {lost[:10]}"
            assert max(stored.values()) == 1, f"run {run_id}: duplicated steps"


def start_with_database_down(postgres: PostgresCluster, s3: S3Server) -> Stack:
    """Stops PostgreSQL, then starts a stack (not waited on) that retries it for a short while."""
    postgres.stop("fast")
    env = heroku_env(
        port=free_port(),
        database_url=postgres.url,
        s3=s3,
        MLFLOW_HEROKU_DB_WAIT_SECONDS=str(BOOT_WAIT_SECONDS),
    )
    return start_stack(env, wait_ready=False)


def test_postgres_down_at_boot_answers_503_then_exits(s3: S3Server) -> None:
    with postgres_cluster() as postgres:
        launched = time.monotonic()
        stack = start_with_database_down(postgres, s3)
        try:
            assert wait_for_port(stack.port, 5), "nginx did not bind $PORT"
            health = requests.get(f"{stack.url}/health", timeout=5)
            assert health.status_code == 503
            assert health.headers.get("Retry-After"), "503 without Retry-After"
            # An API request waits for MLflow, and gets nginx's 503 when the start gives up.
            sent = time.monotonic()
            api = requests.get(
                f"{stack.url}{READY_PATH}", auth=stack.auth, timeout=BOOT_WAIT_SECONDS + 30
            )
            assert api.status_code == 503
            assert api.headers.get("Retry-After"), "503 without Retry-After"
            assert time.monotonic() - sent > 2, "answered at once: it was not held"

            code = stack.process.wait(BOOT_WAIT_SECONDS + 30)
            exited_after = time.monotonic() - launched
            output = stack.output()
            # Checked before stop(), which kills the whole group anyway.
            orphans = orphans_after_exit(stack.process.pid)
        finally:
            stack.stop()
        print(f"\ndatabase down at boot: exit {code} after {exited_after:.1f} s")
        assert code != 0, "a database that never came must not look like a clean stop"
        assert exited_after < 60, "beyond Heroku's 60 s boot window"
        assert "unreachable" in output, output[-2000:]
        assert "MLFLOW_HEROKU_DB_WAIT_SECONDS" in output, "the log should name the knob"
        for secret in (postgres.password, urllib.parse.quote(postgres.password, safe="")):
            assert secret not in output, "database password in the log"
        assert orphans == [], "processes left behind"


def test_postgres_late_at_boot_is_waited_for(s3: S3Server) -> None:
    with postgres_cluster() as postgres:
        stack = start_with_database_down(postgres, s3)
        try:
            assert wait_for_port(stack.port, 5), "nginx did not bind $PORT"
            time.sleep(2)
            assert requests.get(f"{stack.url}/health", timeout=5).status_code == 503
            postgres.start()
            stack.wait_ready(60)
            reply = requests.get(f"{stack.url}{READY_PATH}", auth=stack.auth, timeout=10)
            assert reply.status_code == 200, reply.text[:300]
            assert stack.process.poll() is None
        finally:
            stack.stop()
