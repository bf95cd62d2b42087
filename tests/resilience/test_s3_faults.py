"""The S3 store down: artifact calls fail with a clear 5xx, tracking keeps working, and
artifacts work again once S3 is back, without restarting the stack."""

from __future__ import annotations

import time

import pytest
import requests

from tests.resilience.helpers import API, create_experiment
from tests.support.services import (
    PostgresCluster,
    Stack,
    free_port,
    heroku_env,
    running_stack,
    s3_server,
)

pytestmark = pytest.mark.integration

ROUTER_TIMEOUT_SECONDS = 30  # Heroku's router drops a request without a first byte by then


def put_artifact(stack: Stack, artifact_uri: str, name: str, body: bytes) -> requests.Response:
    path = artifact_uri.removeprefix("mlflow-artifacts:/")
    return requests.put(
        f"{stack.url}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}",
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
        created = requests.post(
            f"{stack.url}{API}/runs/create",
            json={"experiment_id": experiment_id},
            auth=stack.auth,
            timeout=30,
        )
        created.raise_for_status()
        info = created.json()["run"]["info"]
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
