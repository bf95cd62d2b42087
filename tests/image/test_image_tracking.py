"""The real MLflow Python client through nginx against PostgreSQL and moto S3.

The client runs with no AWS credentials in its environment: artifacts are proxied.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow_heroku_runtime.nginx_config import expected_authorization

from tests.support.services import (
    PostgresCluster,
    S3Server,
    Stack,
    descendants,
    free_port,
    heroku_env,
    mlflow_pid_of,
    mlflow_ports_of,
    running_stack,
)

pytestmark = pytest.mark.integration

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_S3_ENDPOINT_URL",
)


@pytest.fixture
def client(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """An MlflowClient that knows only the tracking URL and the login."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # No shared credentials file either: boto3 would find nothing.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack.url)


def _experiment(client: Any) -> str:
    experiment_id: str = client.create_experiment(f"image-test-{uuid.uuid4().hex[:8]}")
    return experiment_id


def test_tracking_round_trip(client: Any) -> None:
    from mlflow.entities import Metric

    experiment_id = _experiment(client)
    run = client.create_run(experiment_id, tags={"team": "ml", "note": "ünïcode ok"})
    run_id = run.info.run_id
    client.log_param(run_id, "learning_rate", "0.01")
    client.log_param(run_id, "layers", "3")
    client.set_tag(run_id, "stage", "test")
    points = [
        Metric("loss", 1.0 / (step + 1), 1_700_000_000_000 + step, step) for step in range(1000)
    ]
    for start in range(0, 1000, 250):  # log-batch allows up to 1,000 entries per call
        client.log_batch(run_id, metrics=points[start : start + 250])
    client.set_terminated(run_id)

    fetched = client.get_run(run_id)
    assert fetched.data.params == {"learning_rate": "0.01", "layers": "3"}
    assert fetched.data.tags["stage"] == "test"
    assert fetched.data.tags["note"] == "ünïcode ok"
    assert fetched.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(point.step for point in history) == list(range(1000))
    assert {point.step: point.value for point in history}[999] == pytest.approx(1.0 / 1000)
    found = client.search_runs([experiment_id], filter_string="params.layers = '3'")
    assert [found_run.info.run_id for found_run in found] == [run_id]


@pytest.mark.parametrize("size", [1024, 10 * 1024**2, 100 * 1024**2], ids=["1KB", "10MB", "100MB"])
def test_artifacts_land_in_the_bucket(client: Any, s3: S3Server, tmp_path: Path, size: int) -> None:
    experiment_id = _experiment(client)
    experiment = client.get_experiment(experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    run_id = client.create_run(experiment_id).info.run_id
    source = tmp_path / f"blob-{size}.bin"
    with source.open("wb") as handle:  # not all zeros, so a truncated copy cannot match
        block = os.urandom(1024 * 1024)
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])
    client.log_artifact(run_id, str(source), artifact_path="data")

    keys = s3.keys("artifacts/")
    matching = {
        key: length
        for key, length in keys.items()
        if key.endswith(f"/{run_id}/artifacts/data/{source.name}")
    }
    assert list(matching.values()) == [size]
    listed = client.list_artifacts(run_id, "data")
    assert [(item.path, item.file_size) for item in listed] == [(f"data/{source.name}", size)]
    downloaded = Path(
        client.download_artifacts(run_id, f"data/{source.name}", str(tmp_path / "out"))
    )
    assert (
        hashlib.sha256(downloaded.read_bytes()).digest()
        == hashlib.sha256(source.read_bytes()).digest()
    )


def test_a_large_file_streams_out_of_the_flask_tracking_api(
    client: Any, stack: Stack, tmp_path: Path
) -> None:
    """The UI downloads a logged model's files from a Flask route under the tracking API's
    prefix, which streams the file: larger than the bridge's buffer, it goes out in pieces
    (tests/image/test_wsgi_bridge.py) and must arrive whole."""
    experiment_id = _experiment(client)
    model = client.create_logged_model(experiment_id, name="streamed")
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    client.log_model_artifact(model.model_id, str(source))

    response = requests.get(
        f"{stack.url}/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files",
        params={"artifact_file_path": "weights.bin"},
        auth=(stack.username, stack.password),
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) == source.stat().st_size
    assert response.content == source.read_bytes()


def test_the_uis_files_stream_out_of_flasks_file_routes(
    client: Any, stack: Stack, tmp_path: Path
) -> None:
    """The UI shows and downloads artifacts from /get-artifact and /model-versions/get-artifact,
    and loads its JavaScript from /static-files/: Flask routes the shortcut sends through the
    image's bridge (flask_shortcut.py). Larger than its buffer, each must arrive whole."""
    import mlflow.server

    auth = (stack.username, stack.password)
    experiment_id = _experiment(client)
    run_id = client.create_run(experiment_id).info.run_id
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    client.log_artifact(run_id, str(source), artifact_path="model")

    by_run = requests.get(
        f"{stack.url}/get-artifact",
        params={"path": "model/weights.bin", "run_id": run_id},
        auth=auth,
        timeout=60,
    )
    assert by_run.status_code == 200, by_run.text[:300]
    assert by_run.content == source.read_bytes()

    name = f"streamed-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    version = client.create_model_version(name, f"{artifact_uri}/model", run_id=run_id)
    by_version = requests.get(
        f"{stack.url}/model-versions/get-artifact",
        params={"path": "weights.bin", "name": name, "version": version.version},
        auth=auth,
        timeout=60,
    )
    assert by_version.status_code == 200, by_version.text[:300]
    assert by_version.content == source.read_bytes()

    index = requests.get(f"{stack.url}/", auth=auth, timeout=30)
    script = re.search(r"static-files/(static/js/main\.[0-9a-f]+\.js)", index.text)
    assert script is not None, index.text[:500]
    on_disk = Path(mlflow.server.__file__).parent / "js" / "build" / script.group(1)
    served = requests.get(f"{stack.url}/static-files/{script.group(1)}", auth=auth, timeout=30)
    assert served.status_code == 200
    assert "javascript" in served.headers["Content-Type"]
    assert len(served.content) > 1024 * 1024  # past the bridge's buffer
    assert served.content == on_disk.read_bytes()


def _switch_on_multipart(monkeypatch: pytest.MonkeyPatch, direction: str) -> None:
    """The client's multipart switch for ``direction`` ("UPLOAD" or "DOWNLOAD"), with parts of
    5 MiB from 5 MiB on (S3's smallest part), so a 12 MiB file goes in three."""
    monkeypatch.setenv(f"MLFLOW_ENABLE_PROXY_MULTIPART_{direction}", "true")
    monkeypatch.setenv(f"MLFLOW_MULTIPART_{direction}_MINIMUM_FILE_SIZE", str(5 * 1024**2))
    monkeypatch.setenv(f"MLFLOW_MULTIPART_{direction}_CHUNK_SIZE", str(5 * 1024**2))


def _log_random_artifact(client: Any, tmp_path: Path, name: str) -> tuple[str, bytes]:
    """A new run with a 12 MiB artifact ``name`` of random bytes: its run ID and the bytes."""
    run_id: str = client.create_run(_experiment(client)).info.run_id
    source = tmp_path / name
    payload = os.urandom(12 * 1024**2 + 123)  # three parts, the last one short
    source.write_bytes(payload)
    client.log_artifact(run_id, str(source))
    return run_id, payload


def test_proxied_multipart_upload(
    client: Any, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD: the server hands out presigned part URLs."""
    _switch_on_multipart(monkeypatch, "UPLOAD")
    run_id, payload = _log_random_artifact(client, tmp_path, "multipart.bin")

    key = next(
        key for key in s3.keys("artifacts/") if key.endswith(f"/{run_id}/artifacts/multipart.bin")
    )
    assert s3.read(key) == payload
    head = s3.client().head_object(Bucket=s3.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # S3's marker of a 3-part upload


def test_proxied_multipart_download(
    client: Any, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD (what docs/operations.md advises against H12): the
    server hands out a presigned URL and the client fetches the parts from S3 itself, so the
    file never passes through the dyno (which would copy all of it from S3 first)."""
    _switch_on_multipart(monkeypatch, "DOWNLOAD")
    run_id, payload = _log_random_artifact(client, tmp_path, "big-download.bin")

    fetched = Path(client.download_artifacts(run_id, "big-download.bin", str(tmp_path / "out")))
    assert fetched.read_bytes() == payload
    # nginx's access log: the presigned URL was asked for, the file itself never.
    presigned = re.compile(r'"GET /api/2\.0/mlflow-artifacts/presigned/[^"]*big-download\.bin')
    log = stack.wait_for_output(presigned)
    assert presigned.search(log), log[-2000:]
    file_route = r'"GET /api/2\.0/mlflow-artifacts/artifacts/[^"?]*big-download\.bin'
    assert re.search(file_route, log) is None, log[-2000:]


def test_r_client_rest_calls(stack: Stack) -> None:
    """The REST endpoints the R client (mlflow R package) calls, with basic auth."""
    api = f"{stack.url}/api/2.0/mlflow"
    session = requests.Session()
    session.auth = stack.auth

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = session.request(method, f"{api}/{path}", timeout=30, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    name = f"r-client-{uuid.uuid4().hex[:8]}"
    experiment_id = call("POST", "experiments/create", json={"name": name})["experiment_id"]
    assert (
        call("GET", "experiments/get-by-name", params={"experiment_name": name})["experiment"][
            "experiment_id"
        ]
        == experiment_id
    )
    assert (
        call("GET", "experiments/get", params={"experiment_id": experiment_id})["experiment"][
            "name"
        ]
        == name
    )
    run = call("POST", "runs/create", json={"experiment_id": experiment_id, "start_time": 1})["run"]
    run_id = run["info"]["run_id"]
    call(
        "POST",
        "runs/log-metric",
        json={"run_id": run_id, "key": "m", "value": 1.5, "timestamp": 2, "step": 0},
    )
    call("POST", "runs/log-parameter", json={"run_id": run_id, "key": "p", "value": "v"})
    call("POST", "runs/set-tag", json={"run_id": run_id, "key": "t", "value": "x"})
    call(
        "POST",
        "runs/log-batch",
        json={"run_id": run_id, "metrics": [{"key": "m", "value": 2.5, "timestamp": 3, "step": 1}]},
    )
    call("POST", "runs/update", json={"run_id": run_id, "status": "FINISHED", "end_time": 4})
    fetched = call("GET", "runs/get", params={"run_id": run_id})["run"]
    assert fetched["info"]["status"] == "FINISHED"
    assert fetched["data"]["params"] == [{"key": "p", "value": "v"}]
    history = call("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "m"})
    assert sorted(point["value"] for point in history["metrics"]) == [1.5, 2.5]
    searched = call("POST", "runs/search", json={"experiment_ids": [experiment_id]})
    assert [item["info"]["run_id"] for item in searched["runs"]] == [run_id]
    experiments = call("POST", "experiments/search", json={"max_results": 1000})["experiments"]
    assert experiment_id in {item["experiment_id"] for item in experiments}
    call("POST", "runs/delete", json={"run_id": run_id})
    call("POST", "experiments/delete", json={"experiment_id": experiment_id})


def _established_to(port: int) -> set[int]:
    """Local ports of ESTABLISHED loopback TCP connections whose remote end is ``port``."""
    local_ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            local_ports.add(int(local.split(":")[1], 16))
    return local_ports


def _timed_reuse(stack: Stack, port: int, marker: str) -> tuple[list[float], set[int], set[int]]:
    """Two batches of 20 sequential authenticated GETs (``marker`` in their query) on one
    client connection: each request's seconds, and nginx's connections to ``port`` after each
    batch."""
    url = f"{stack.url}/api/2.0/mlflow/experiments/get?experiment_id=0&{marker}"
    seconds: list[float] = []
    batches: list[set[int]] = []
    with requests.Session() as session:
        for _ in range(2):
            for _ in range(20):
                started = time.perf_counter()
                assert session.get(url, auth=stack.auth, timeout=10).status_code == 200
                seconds.append(time.perf_counter() - started)
            batches.append(_established_to(port))
    return seconds, batches[0], batches[1]


def _upstreams(output: str, marker: str) -> list[str]:
    """The upstream field (the MLflow port that answered) of each access-log line whose
    request line contains ``marker``."""
    return re.findall(rf'"[A-Z]+ [^"]*{re.escape(marker)}[^"]*" .* upstream=(\S+)', output)


class HeldUpload:
    """An artifact upload through nginx that sends its headers and a first part of its body,
    then waits: the MLflow worker nginx gave it stays busy until ``finish``."""

    def __init__(self, stack: Stack, marker: str, size: int = 1000) -> None:
        self.size = size
        self.sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        self.sock.sendall(
            f"PUT /api/2.0/mlflow-artifacts/artifacts/held/{marker}.bin HTTP/1.1\r\n"
            f"Host: localhost\r\n"
            f"Authorization: {expected_authorization(stack.username, stack.password)}\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            + b"x" * 10
        )

    def finish(self) -> bytes:
        with self.sock:
            self.sock.sendall(b"x" * (self.size - 10))
            reply = b""
            while chunk := self.sock.recv(65536):
                reply += chunk
        return reply


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _serving(stack: Stack) -> list[int]:
    """The stack's processes that run uvicorn on uvloop and httptools (extension modules
    loaded), i.e. those that serve requests."""
    return [
        pid
        for pid in descendants(stack.process.pid)
        if "/uvloop/loop." in _mapped(pid) and "/httptools/parser/parser." in _mapped(pid)
    ]


def _pss_and_rss_mb(pid: int) -> tuple[float, float]:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    fields = dict(line.split(":", 1) for line in rollup)
    return int(fields["Pss"].split()[0]) / 1024, int(fields["Rss"].split()[0]) / 1024


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_forked_workers_share_memory_and_nginx_sends_work_to_an_idle_one(stack: Stack) -> None:
    """The default layout (docs/image.md, "Workers"): gunicorn's master imported MLflow once
    and forked two workers, which serve on uvloop and httptools and share most of their pages
    with it (each worker's PSS well under its RSS; a worker that imported MLflow itself would
    have its ~200 MB to itself). Each worker has its own port: one client's requests go to the
    first worker on a kept connection, with no delayed ACK; while a slow upload keeps one
    worker busy, every other request goes to the other; four slow uploads are split evenly."""
    ports = mlflow_ports_of(stack)
    assert len(ports) == 2, ports
    master = mlflow_pid_of(stack)
    workers = _serving(stack)
    assert len(workers) == 2, workers
    assert {_parent(pid) for pid in workers} == {master}
    for pid in workers:
        pss, rss = _pss_and_rss_mb(pid)
        assert pss < 0.7 * rss, (pid, pss, rss)

    sequential = f"sequential={uuid.uuid4().hex}"
    seconds, first, second = _timed_reuse(stack, ports[0], sequential)
    assert first & second, (first, second)  # the same connection to worker 0 served both
    assert statistics.median(seconds) < 0.02, seconds

    held_marker, beside = uuid.uuid4().hex, f"beside={uuid.uuid4().hex}"
    upload = HeldUpload(stack, held_marker)
    time.sleep(0.5)  # nginx has passed the headers on (artifact bodies are not buffered)
    with requests.Session() as session:
        for _ in range(10):
            url = f"{stack.url}/api/2.0/mlflow/experiments/get?experiment_id=0&{beside}"
            assert session.get(url, auth=stack.auth, timeout=10).status_code == 200
    reply = upload.finish()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]

    output = stack.wait_for_output(f"held/{held_marker}.bin")
    [held_by] = _upstreams(output, f"held/{held_marker}.bin")
    served_beside = _upstreams(output, beside)
    served_sequential = _upstreams(output, sequential)
    assert len(served_beside) == 10, output[-3000:]
    assert len(served_sequential) == 40, output[-3000:]
    assert held_by in {f"127.0.0.1:{port}" for port in ports}, held_by
    assert held_by not in served_beside, (held_by, served_beside)
    # The first worker whenever it is idle: nginx's tie-break lets ~2% go elsewhere.
    assert served_sequential.count(f"127.0.0.1:{ports[0]}") >= 36, served_sequential

    # Every worker busy: the fewest requests in flight. Four at once land two on each.
    markers = [uuid.uuid4().hex for _ in range(4)]
    uploads = []
    for marker in markers:
        uploads.append(HeldUpload(stack, marker))
        time.sleep(0.3)  # in order, each after nginx has placed the one before
    replies = [upload.finish() for upload in uploads]
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies), replies
    output = stack.wait_for_output(f"held/{markers[-1]}.bin")
    placed = [upstream for m in markers for upstream in _upstreams(output, f"held/{m}.bin")]
    assert sorted(placed) == sorted(f"127.0.0.1:{port}" for port in ports * 2), placed


def test_one_worker_keeps_its_connections_to_mlflow(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    """WEB_CONCURRENCY=1: uvicorn alone, on uvloop and httptools; nginx keeps connections to it
    and reuses them (docs/image.md): the same connections carry a second batch of requests."""
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3, WEB_CONCURRENCY="1")
    with running_stack(env, ready_timeout=90) as stack:
        [port] = mlflow_ports_of(stack)
        _seconds, first, second = _timed_reuse(stack, port, "one-worker")
        mlflow = mlflow_pid_of(stack)
        uvicorn_alone = b"uvicorn" in Path(f"/proc/{mlflow}/cmdline").read_bytes()
        serving = _serving(stack)
    assert uvicorn_alone
    assert serving == [mlflow]
    assert 1 <= len(first) <= 16, first  # nginx's keepalive 16 per worker
    assert first & second, (first, second)  # the same connection served both batches
