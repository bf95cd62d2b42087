"""The S3 store down (refusing, or hanging): artifact calls fail with a clear 5xx in time,
tracking keeps working, and artifacts work again once S3 is back, without a restart."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import requests

from tests.resilience.helpers import API, create_experiment, create_run_info, wait_until
from tests.support.services import (
    PostgresCluster,
    S3Server,
    Stack,
    free_port,
    heroku_env,
    running_stack,
    s3_server,
)

pytestmark = pytest.mark.integration

ROUTER_TIMEOUT_SECONDS = 30  # Heroku's router drops a request without a first byte by then
HANGING_READ_TIMEOUT = 5  # MLFLOW_HEROKU_PROXY_READ_TIMEOUT for the hanging-S3 test (default 30)
HANGING_UPLOADS = 45  # more than the 40 threads MLflow runs its Flask app on (anyio default)


def artifact_url(stack: Stack, artifact_uri: str, name: str) -> str:
    """The proxied-artifact route (what the MLflow clients use) for ``name`` in a run."""
    path = artifact_uri.removeprefix("mlflow-artifacts:/")
    return f"{stack.url}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}"


def put_artifact(stack: Stack, artifact_uri: str, name: str, body: bytes) -> requests.Response:
    return requests.put(
        artifact_url(stack, artifact_uri, name),
        data=body,
        auth=stack.auth,
        timeout=ROUTER_TIMEOUT_SECONDS + 30,
    )


def test_s3_down_fails_artifacts_cleanly_and_tracking_goes_on(postgres: PostgresCluster) -> None:
    with (
        s3_server("s3-fault-bucket") as s3,
        running_stack(
            heroku_env(port=free_port(), database_url=postgres.url, s3=s3, s3_prefix="fault"),
            ready_timeout=90,
        ) as stack,
    ):
        experiment_id = create_experiment(stack, f"s3-down-{time.time_ns()}")
        info = create_run_info(stack, experiment_id)
        run_id, artifact_uri = info["run_id"], info["artifact_uri"]
        assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
        assert put_artifact(stack, artifact_uri, "before.txt", b"before").status_code == 200

        s3.stop()
        began = time.monotonic()
        failed = put_artifact(stack, artifact_uri, "during.txt", b"during")
        took = time.monotonic() - began
        print(f"\nartifact upload with S3 down: HTTP {failed.status_code} after {took:.1f} s")
        assert 500 <= failed.status_code < 600, (failed.status_code, failed.text[:300])
        assert took < ROUTER_TIMEOUT_SECONDS, "the client would get Heroku's H12 instead"
        assert "error_code" in failed.json(), "a JSON error a client can read"
        assert s3.secret_key not in failed.text
        assert "Traceback" not in failed.text

        # Tracking calls do not touch S3 and keep working.
        for step in range(5):
            logged = requests.post(
                f"{stack.url}{API}/runs/log-metric",
                json={"run_id": run_id, "key": "m", "value": step, "timestamp": 0, "step": step},
                auth=stack.auth,
                timeout=30,
            )
            assert logged.status_code == 200, logged.text[:300]
        got = requests.get(
            f"{stack.url}{API}/runs/get", params={"run_id": run_id}, auth=stack.auth, timeout=30
        )
        assert got.status_code == 200
        assert len(got.json()["run"]["data"]["metrics"]) == 1

        s3.start()  # moto restarts empty, with the bucket created again
        assert put_artifact(stack, artifact_uri, "after.txt", b"after").status_code == 200
        assert stack.process.poll() is None, "recovered without a restart"
        objects = s3.keys()
        stored = [key for key in objects if key.endswith(f"{run_id}/artifacts/after.txt")]
        assert len(stored) == 1, objects
        assert s3.read(stored[0]) == b"after"


class BlackHole:
    """A TCP server on loopback that accepts connections and never answers: an S3 endpoint
    that hangs (a network partition) rather than refusing."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.closed.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = self.server.accept()
                self.connections.append(connection)  # held open, never read or answered

    def __enter__(self) -> BlackHole:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.closed.set()
        self.thread.join(5)
        for connection in [*self.connections, self.server]:
            connection.close()


def test_s3_hanging_fails_artifacts_in_time_and_tracking_goes_on(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    with (
        BlackHole() as black_hole,
        running_stack(
            heroku_env(
                port=free_port(),
                database_url=postgres.url,
                s3=s3,
                s3_prefix="hanging",
                MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{black_hole.port}",
                MLFLOW_HEROKU_PROXY_READ_TIMEOUT=str(HANGING_READ_TIMEOUT),
            ),
            ready_timeout=90,
        ) as stack,
    ):
        experiment_id = create_experiment(stack, f"s3-hanging-{time.time_ns()}")
        info = create_run_info(stack, experiment_id)

        answers: list[tuple[int, float]] = []
        timeout_bodies: list[str] = []

        def upload() -> None:
            began = time.monotonic()
            reply = put_artifact(stack, info["artifact_uri"], "hung.txt", b"hung")
            answers.append((reply.status_code, time.monotonic() - began))
            if reply.status_code == 504:
                timeout_bodies.append(reply.text)

        downloads: list[requests.Response] = []

        def download(url: str, params: dict[str, str]) -> None:
            # Both download routes copy the artifact from S3 before they send a byte.
            downloads.append(
                requests.get(url, params=params, auth=stack.auth, timeout=HANGING_READ_TIMEOUT + 30)
            )

        uploaders = [threading.Thread(target=upload, daemon=True) for _ in range(HANGING_UPLOADS)]
        for url, params in (
            (f"{stack.url}/get-artifact", {"path": "hung.txt", "run_id": info["run_id"]}),
            (artifact_url(stack, info["artifact_uri"], "hung.txt"), {}),
        ):
            uploaders.append(threading.Thread(target=download, args=(url, params), daemon=True))
        for uploader in uploaders:
            uploader.start()
        # The uploads are now stuck inside MLflow waiting on S3 (measured: all 45 requests are
        # open to uvicorn, ~6 S3 connections hang, the rest wait behind them in MLflow).
        assert wait_until(lambda: len(black_hole.connections) >= 1, 10), "S3 was never called"
        time.sleep(1)
        hung_at_tracking = len(black_hole.connections)
        # Tracking calls still get a worker while artifact calls hang.
        for step in range(5):
            logged = requests.post(
                f"{stack.url}{API}/runs/log-metric",
                json={
                    "run_id": info["run_id"],
                    "key": "m",
                    "value": 1,
                    "timestamp": 0,
                    "step": step,
                },
                auth=stack.auth,
                timeout=10,
            )
            assert logged.status_code == 200, logged.text[:300]
        for uploader in uploaders:
            uploader.join(HANGING_READ_TIMEOUT + 30)
        print(
            f"\n{hung_at_tracking} S3 connections hanging while tracking calls got 200; "
            f"artifact uploads answered {sorted({status for status, _ in answers})} after "
            f"{min(t for _, t in answers):.1f}-{max(t for _, t in answers):.1f} s"
        )
        assert len(answers) == HANGING_UPLOADS, "an upload never got an answer"
        for status, took in answers:
            assert 500 <= status < 600
            assert took < HANGING_READ_TIMEOUT + 5, "nginx's proxy_read_timeout did not apply"
        # nginx's read timeout says what happened, not "starting or unavailable".
        assert timeout_bodies, "no upload was cut by nginx's read timeout"
        for body in timeout_bodies:
            assert "MLFLOW_HEROKU_PROXY_READ_TIMEOUT" in body, body
            assert "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true" in body, body
        # ...and what to do depends on the route: a download gets the download's advice.
        assert [reply.status_code for reply in downloads] == [504, 504]
        for reply in downloads:
            assert "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=true" in reply.json()["message"]
            assert "UPLOAD" not in reply.text
