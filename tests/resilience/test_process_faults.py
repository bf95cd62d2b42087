"""Process faults: MLflow killed (the dyno must stop so Heroku restarts it), and SIGTERM in the
middle of a 100 MB upload and a burst of metric writes, sent to the first process only or to
every process of the dyno (what Heroku does): either way the upload must finish."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.resilience.helpers import (
    MetricWriters,
    children_of,
    command_line,
    create_experiment,
    create_run_info,
    live_pids,
    orphans_after_exit,
    signal_all,
    stored_metric_steps,
    tree_of,
    wait_until,
)
from tests.support.services import (
    PostgresCluster,
    S3Server,
    free_port,
    heroku_env,
    mlflow_pid_of,
    mlflow_ports_of,
    running_stack,
)

pytestmark = pytest.mark.integration

STOP_LIMIT_SECONDS = 10  # the brief: everything stopped within 10 s of SIGTERM
UPLOAD_BYTES = 100 * 1024 * 1024
CHUNK = 1024 * 1024
# Paces the upload to ~3 s, so the signal surely lands while the body is still streaming.
SECONDS_PER_CHUNK = 0.03


def test_killed_worker_is_replaced_and_killed_mlflow_stops_the_dyno(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    """Default layout, gunicorn's master and two forked workers. A killed worker is replaced
    by the master and the dyno keeps serving, the replacement on the dead worker's own port
    (each port answers); the killed master (MLflow as a whole) stops the dyno non-zero, so
    Heroku restarts it, with nothing left behind."""
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3)
    with running_stack(env, ready_timeout=90) as stack:
        master = mlflow_pid_of(stack)
        workers = children_of(master)
        assert len(workers) == 2, [command_line(pid) for pid in workers]
        os.kill(workers[0], signal.SIGKILL)
        replaced = wait_until(
            lambda: len(children_of(master)) == 2 and workers[0] not in children_of(master),
            timeout=15,
        )
        assert replaced, [command_line(pid) for pid in children_of(master)]
        for port in mlflow_ports_of(stack):
            health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
            assert health.status_code == 200, (port, health.status_code)
        experiment = create_experiment(stack, f"after-worker-death-{time.time_ns()}")
        assert experiment
        assert stack.process.poll() is None, "a worker's death alone must not stop the dyno"

        # gunicorn's SIGTTIN / SIGTTOU would add a worker without a port or leave a port
        # without a worker; the count stays one per port, the same two processes.
        serving = sorted(children_of(master))
        for change, warnings in ((signal.SIGTTIN, 1), (signal.SIGTTOU, 2)):
            os.kill(master, change)
            output = stack.wait_for_output(
                re.compile(f"(keeping 2 workers, one per port.*){{{warnings}}}", re.S), timeout=10
            )
            assert output.count("keeping 2 workers, one per port") == warnings, output[-2000:]
        time.sleep(1.5)  # a worker gunicorn had forked or stopped would show by now
        assert sorted(children_of(master)) == serving, [
            command_line(pid) for pid in children_of(master)
        ]
        for port in mlflow_ports_of(stack):
            health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
            assert health.status_code == 200, (port, health.status_code)

        tree = tree_of(stack)
        killed = time.monotonic()
        os.kill(master, signal.SIGKILL)
        code = stack.process.wait(STOP_LIMIT_SECONDS + 5)
        took = time.monotonic() - killed
        output = stack.output()
        # Checked before running_stack's exit, which kills the whole group anyway.
        orphans = orphans_after_exit(stack.process.pid)
    print(f"\nMLflow killed: entrypoint exit {code} after {took:.1f} s")
    assert code != 0, "Heroku restarts a dyno only when its process exits non-zero"
    assert took <= STOP_LIMIT_SECONDS
    assert "exited unexpectedly" in output, output[-2000:]
    assert orphans == [], "processes left behind"
    assert live_pids(tree) == [], [command_line(pid) for pid in live_pids(tree)]


def paced_payload(sent: list[int], digest: hashlib._Hash) -> Iterator[bytes]:
    generator = random.Random(20261126)  # noqa: S311 (test data, not security)
    for _ in range(UPLOAD_BYTES // CHUNK):
        chunk = generator.randbytes(CHUNK)
        digest.update(chunk)
        sent[0] += len(chunk)
        yield chunk
        time.sleep(SECONDS_PER_CHUNK)


@pytest.mark.parametrize("target", ["first process", "every process"])
def test_sigterm_during_upload_and_metric_burst(
    postgres: PostgresCluster, s3: S3Server, target: str
) -> None:
    prefix = f"sigterm-{time.time_ns()}"
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3, s3_prefix=prefix)
    with running_stack(env, ready_timeout=90) as stack:
        experiment_id = create_experiment(stack, prefix)
        runs = [create_run_info(stack, experiment_id) for _ in range(5)]
        upload_run, burst_runs = runs[0], [info["run_id"] for info in runs[1:]]
        upload_path = upload_run["artifact_uri"].removeprefix("mlflow-artifacts:/")

        sent = [0]
        digest = hashlib.sha256()
        upload_result: list[object] = []

        def upload() -> None:
            try:
                reply = requests.put(
                    f"{stack.url}/api/2.0/mlflow-artifacts/artifacts/{upload_path}/big.bin",
                    data=paced_payload(sent, digest),
                    auth=stack.auth,
                    timeout=60,
                )
                upload_result.append(reply.status_code)
            except requests.RequestException as error:
                upload_result.append(type(error).__name__)

        uploader = threading.Thread(target=upload, daemon=True)
        writers = MetricWriters(stack, burst_runs).start()
        try:
            uploader.start()
            # Signal with the upload's last fifth in flight: a graceful stop must let it finish
            # within MLflow's grace, also on a loaded machine (with 80 MB still to send, a busy
            # 2-core host sometimes needed more than the grace).
            in_flight_from = UPLOAD_BYTES * 4 // 5
            assert wait_until(lambda: sent[0] >= in_flight_from and writers.acknowledged >= 20, 30)
            tree = tree_of(stack)
            signalled = time.monotonic()
            signal_all([stack.process.pid] if target == "first process" else tree, signal.SIGTERM)
            sent_at_signal = sent[0]
            code = stack.process.wait(STOP_LIMIT_SECONDS + 5)
            took = time.monotonic() - signalled
            orphans = orphans_after_exit(stack.process.pid)  # before the fixture kills the group
            output = stack.output()
        finally:
            writers.stop()
            uploader.join(90)

    outcome = upload_result[0] if upload_result else "no answer"
    print(
        f"\nSIGTERM to {target}: exit {code} after {took:.1f} s; upload -> {outcome} "
        f"({sent_at_signal // CHUNK} MB sent); {writers.acknowledged} metric writes "
        f"acknowledged, {len(writers.failures)} failed"
    )
    assert code == 0, "a requested stop is a clean exit"
    assert took <= STOP_LIMIT_SECONDS
    assert orphans == [], "processes left behind"
    assert live_pids(tree) == [], [command_line(pid) for pid in live_pids(tree)]
    assert not uploader.is_alive(), "the upload neither finished nor failed"

    # Both ways the in-flight upload finishes (nginx stops gracefully on SIGTERM too, through
    # nginx_graceful_term.so) and the whole file, not a truncated one, is in S3.
    assert outcome == 200, f"the in-flight upload answered {outcome}:\n{output[-3000:]}"
    objects = s3.keys(prefix)
    stored = [key for key in objects if key.endswith(f"{upload_run['run_id']}/artifacts/big.bin")]
    assert len(stored) == 1, objects
    body = s3.read(stored[0])
    assert len(body) == UPLOAD_BYTES
    assert hashlib.sha256(body).hexdigest() == digest.hexdigest()

    # Every acknowledged metric write is stored, exactly once.
    for run_id, log in zip(burst_runs, writers.logs, strict=True):
        stored_steps = stored_metric_steps(postgres, run_id, "loss")
        lost = [step for step in log.acknowledged if stored_steps[step] == 0]
        assert lost == [], f"acknowledged before SIGTERM but not stored: {lost[:10]}"
        assert not stored_steps or max(stored_steps.values()) == 1
