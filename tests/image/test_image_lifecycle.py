"""Starting, stopping and failing: each test runs its own stack (the shared one stays up)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.services import (
    REPO_ROOT,
    PostgresCluster,
    S3Server,
    Stack,
    descendants,
    free_port,
    heroku_env,
    migration_lock_held,
    mlflow_pid_of,
    mlflow_ports_of,
    own_database,
    start_stack,
    wait_for_port,
)

pytestmark = pytest.mark.integration
API = "/api/2.0/mlflow"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group pgid."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_exit(stack: Stack, timeout: float) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        code: int | None = stack.process.wait(timeout)
    except Exception:
        code = None
    return code, time.monotonic() - started


def create_experiment(stack: Stack, name: str) -> str:
    response = requests.post(
        f"{stack.url}{API}/experiments/create", json={"name": name}, auth=stack.auth, timeout=30
    )
    assert response.status_code == 200, response.text
    experiment_id: str = response.json()["experiment_id"]
    return experiment_id


def create_run(stack: Stack, experiment_id: str) -> str:
    response = requests.post(
        f"{stack.url}{API}/runs/create",
        json={"experiment_id": experiment_id},
        auth=stack.auth,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run"]["info"]["run_id"]
    return run_id


class SlowUpload:
    """A 40 MB artifact upload paced over ~1.5 s, run in a thread, to be in flight at SIGTERM."""

    def __init__(self, stack: Stack, experiment_id: str, run_id: str) -> None:
        self.payload = os.urandom(40 * 1024**2)
        self.key_suffix = f"{run_id}/artifacts/in-flight.bin"
        self.url = (
            f"{stack.url}/api/2.0/mlflow-artifacts/artifacts/"
            f"{experiment_id}/{run_id}/artifacts/in-flight.bin"
        )
        self.auth = stack.auth
        self.result: dict[str, object] = {}
        self.thread = threading.Thread(target=self._upload)

    def _body(self) -> Iterator[bytes]:
        for offset in range(0, len(self.payload), 1024**2):
            yield self.payload[offset : offset + 1024**2]
            time.sleep(0.03)

    def _upload(self) -> None:
        try:
            response = requests.put(self.url, data=self._body(), auth=self.auth, timeout=60)
            self.result["status"] = response.status_code
        except requests.RequestException as error:
            self.result["status"] = type(error).__name__

    def start(self) -> SlowUpload:
        self.thread.start()
        time.sleep(0.5)  # well inside the body: ~15 of 40 MB sent
        return self

    def assert_completed(self, s3: S3Server, output: str) -> None:
        """200, and the whole object (not a truncated one) is in S3."""
        self.thread.join(30)
        assert self.result.get("status") == 200, (self.result, output[-3000:])
        sizes = [
            size for key, size in s3.keys("artifacts/").items() if key.endswith(self.key_suffix)
        ]
        assert sizes == [len(self.payload)]


def test_sigterm_to_pid1_finishes_in_flight_then_restart_keeps_data(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3)
    first = start_stack(env)
    try:
        name = f"persisted-{uuid.uuid4().hex[:8]}"
        experiment_id = create_experiment(first, name)
        # An upload in flight when SIGTERM arrives must still complete.
        upload = SlowUpload(first, experiment_id, create_run(first, experiment_id)).start()
        first.process.send_signal(signal.SIGTERM)
        code, seconds = wait_exit(first, 15)
        upload.assert_completed(s3, first.output())
        assert code == 0, first.output()
        assert seconds < 10
        assert group_members(first.process.pid) == []
        assert "received SIGTERM; stopping gracefully" in first.output()
        assert "nginx_graceful_term.so not found" not in first.output()
        # Each forked worker's listening socket is closed once (forked_workers.MlflowWorker).
        assert "Error while closing socket" not in first.output()
    finally:
        first.stop()

    # Warm restart on the same database: the data is still there.
    second = start_stack({**env, "PORT": str(free_port())})
    try:
        fetched = requests.get(
            f"{second.url}{API}/experiments/get-by-name",
            params={"experiment_name": name},
            auth=second.auth,
            timeout=30,
        )
        assert fetched.json()["experiment"]["experiment_id"] == experiment_id
        upload = SlowUpload(second, experiment_id, create_run(second, experiment_id)).start()
        # Heroku sends SIGTERM to every process of the dyno at once; nginx (with
        # nginx_graceful_term.so preloaded) still lets the in-flight upload finish.
        members = descendants(second.process.pid)
        assert len(members) >= 4  # entrypoint, nginx master + worker, uvicorn
        for pid in members:
            with contextlib.suppress(ProcessLookupError):  # one may already be gone
                os.kill(pid, signal.SIGTERM)
        code, seconds = wait_exit(second, 15)
        upload.assert_completed(s3, second.output())
        assert code == 0, second.output()[-2000:]
        assert seconds < 10
        assert group_members(second.process.pid) == []
        assert "Error while closing socket" not in second.output()
    finally:
        second.stop()


def test_without_the_nginx_preload_the_supervisor_warns(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without nginx_graceful_term.so (the entrypoint run by hand where nothing built
    it) still starts, saying once what it means for SIGTERM."""
    monkeypatch.delenv("MLFLOW_HEROKU_NGINX_PRELOAD")
    env = heroku_env(
        port=free_port(), database_url=f"postgres://u:pw@127.0.0.1:{free_port()}/d", s3=s3
    )
    stack = start_stack(env, wait_ready=False)
    try:
        assert wait_for_port(stack.port, 10), stack.output()
        deadline = time.monotonic() + 5
        while "nginx listening" not in stack.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        warnings = [line for line in stack.output().splitlines() if "not found" in line]
        assert warnings == [
            "entrypoint: warning: nginx_graceful_term.so not found (MLFLOW_HEROKU_NGINX_PRELOAD "
            "unset, none at the image's default path): SIGTERM sent to every process (how Heroku "
            "stops a dyno) or Ctrl-C will cut nginx's in-flight requests; SIGTERM to this process "
            "alone stays graceful"
        ], stack.output()
    finally:
        stack.stop()


def test_missing_nginx_preload_file_is_a_configuration_error(s3: S3Server) -> None:
    env = heroku_env(
        port=free_port(),
        database_url="postgres://u:pw@127.0.0.1:1/d",
        s3=s3,
        MLFLOW_HEROKU_NGINX_PRELOAD="/nonexistent/nginx_graceful_term.so",
    )
    stack = start_stack(env, wait_ready=False)
    try:
        code, _seconds = wait_exit(stack, 30)
        assert code == 2
        assert (
            "configuration error: MLFLOW_HEROKU_NGINX_PRELOAD must be the absolute path of an "
            "existing file" in stack.output()
        )
    finally:
        stack.stop()


def test_mlflow_death_stops_everything_as_non_root(postgres: PostgresCluster, s3: S3Server) -> None:
    """Run as `nobody` (Heroku runs containers without root) with the Host and Origin lists
    the Pulumi program sets, then kill MLflow."""
    app_host = "mlflow-prod-0a1b2c3d4e5f.herokuapp.com"
    env = heroku_env(
        port=free_port(),
        database_url=postgres.url,
        s3=s3,
        MLFLOW_SERVER_ALLOWED_HOSTS=f"{app_host},mlflow.example.com",
        MLFLOW_SERVER_CORS_ALLOWED_ORIGINS=f"https://{app_host},https://mlflow.example.com",
    )
    stack = start_stack(env, user="nobody" if os.geteuid() == 0 else None)
    try:
        router = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.30"}
        search = f"{stack.url}{API}/experiments/search?max_results=1"
        for host in (app_host, "mlflow.example.com"):
            answer = requests.get(
                search, auth=stack.auth, headers={**router, "Host": host}, timeout=30
            )
            assert answer.status_code == 200, host
        foreign_host = requests.get(
            search, auth=stack.auth, headers={**router, "Host": "evil.example"}, timeout=30
        )
        assert foreign_host.status_code == 403
        assert "Invalid Host header" in foreign_host.text
        create = f"{stack.url}/ajax-api/2.0/mlflow/experiments/create"
        for origin, expected in (
            ("https://mlflow.example.com", 200),
            ("https://evil.example", 403),
        ):
            answer = requests.post(
                create,
                auth=stack.auth,
                headers={**router, "Host": app_host, "Origin": origin},
                json={"name": f"origin-{uuid.uuid4().hex[:8]}"},
                timeout=30,
            )
            assert answer.status_code == expected, (origin, answer.text)
        if os.geteuid() == 0:
            # Everything below runuser: the entrypoint, nginx, MLflow all run as nobody.
            uids = {
                Path(f"/proc/{pid}").stat().st_uid for pid in descendants(stack.process.pid)[1:]
            }
            assert uids == {65534}, uids
        os.kill(mlflow_pid_of(stack), signal.SIGKILL)  # gunicorn's master (forked workers)
        code, seconds = wait_exit(stack, 15)
        assert code not in (0, None), stack.output()
        assert seconds < 10
        assert group_members(stack.process.pid) == []
        assert "mlflow exited unexpectedly" in stack.output()
    finally:
        stack.stop()


def test_nginx_death_stops_everything(postgres: PostgresCluster, s3: S3Server) -> None:
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3)
    launched = time.monotonic()
    stack = start_stack(env, wait_ready=False)
    try:
        assert wait_for_port(stack.port, 10), stack.output()
        # Generous: CI shares two cores (docs/image.md, "Measured").
        assert time.monotonic() - launched < 3
        masters = [
            pid
            for pid in descendants(stack.process.pid)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: master")
        ]
        assert masters
        os.kill(masters[0], signal.SIGKILL)
        code, seconds = wait_exit(stack, 15)
        assert code not in (0, None), stack.output()
        assert seconds < 10
        assert group_members(stack.process.pid) == []
    finally:
        stack.stop()


def test_unreachable_database_holds_requests_then_answers_them_503_and_exits(
    s3: S3Server,
) -> None:
    """While the migration waits for the database, /health answers 503 at once and API
    requests wait for MLflow; when the start fails, the waiting request gets nginx's 503 then,
    not at its 28 s read timeout, and the entrypoint exits."""
    dead_port = free_port()
    password = "db-secret-for-this-test"
    env = heroku_env(
        port=free_port(),
        database_url=f"postgres://mlflow:{password}@127.0.0.1:{dead_port}/mlflow",
        s3=s3,
        MLFLOW_HEROKU_DB_WAIT_SECONDS="4",
    )
    stack = start_stack(env, wait_ready=False)
    try:
        assert wait_for_port(stack.port, 10), stack.output()
        asked = time.monotonic()
        health = requests.get(f"{stack.url}/health", timeout=10)
        assert time.monotonic() - asked < 2  # the ready flag says so; nothing waits
        assert health.status_code == 503
        assert health.headers["Retry-After"] == "5"
        answers: list[tuple[requests.Response, float]] = []
        sent = time.monotonic()
        waiting = threading.Thread(
            target=lambda: answers.append(
                (
                    requests.post(
                        f"{stack.url}{API}/experiments/search",
                        json={"max_results": 1},
                        auth=stack.auth,
                        timeout=60,
                    ),
                    time.monotonic(),
                )
            )
        )
        waiting.start()
        code, seconds = wait_exit(stack, 30)
        exited = time.monotonic()
        waiting.join(10)
        assert code not in (0, None)
        assert seconds < 15  # a bounded wait, well inside Heroku's 60 s boot window
        [(answer, answered)] = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert answer.headers["Retry-After"] == "5"
        assert answered - sent > 2  # it waited for MLflow instead of being refused
        assert answered <= exited  # and was answered as the start failed, not at nginx's timeout
        output = stack.output()
        assert f"database 127.0.0.1:{dead_port}/mlflow unreachable" in output
        assert "giving up after 4 s (MLFLOW_HEROKU_DB_WAIT_SECONDS)" in output
        assert password not in output
        assert group_members(stack.process.pid) == []
    finally:
        stack.stop()


def env_with_dead_database(s3: S3Server, **extra: str) -> dict[str, str]:
    """Heroku's environment with a DATABASE_URL where nothing listens: nginx comes up and
    answers 503 while the migration keeps retrying (30 s unless extra says otherwise)."""
    return heroku_env(
        port=free_port(),
        database_url=f"postgres://mlflow:pw@127.0.0.1:{free_port()}/mlflow",
        s3=s3,
        **{"MLFLOW_HEROKU_DB_WAIT_SECONDS": "30", **extra},
    )


@pytest.mark.parametrize("order", ["first process", "every process", "children first"])
def test_sigterm_while_waiting_for_the_database_is_a_clean_stop(s3: S3Server, order: str) -> None:
    """Heroku may stop a dyno during the migration; it signals every process, in no set
    order. That is a stop, not a failed migration, whichever process hears it first."""
    stack = start_stack(env_with_dead_database(s3), wait_ready=False)
    try:
        deadline = time.monotonic() + 20
        while "unreachable (attempt 1)" not in stack.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "unreachable (attempt 1)" in stack.output()
        if order == "every process":
            os.killpg(stack.process.pid, signal.SIGTERM)
        elif order == "children first":  # migrate and uvicorn are gone before we hear it
            for pid in descendants(stack.process.pid)[1:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            time.sleep(0.3)
            stack.process.send_signal(signal.SIGTERM)
        else:
            stack.process.send_signal(signal.SIGTERM)
        code, seconds = wait_exit(stack, 15)
        output = stack.output()
        assert code == 0, output[-2000:]
        assert seconds < 10
        assert "entrypoint: received SIGTERM; stopping" in output
        assert "migration failed" not in output
        assert group_members(stack.process.pid) == []
    finally:
        stack.stop()


def test_nginx_on_another_loopback_address_starts_and_serves(s3: S3Server) -> None:
    """MLFLOW_HEROKU_LISTEN_ADDRESS set: the supervisor checks nginx there, not on 127.0.0.1.
    127.0.0.2 is loopback too on Linux, also in containers without IPv6 (GitHub's job runs in
    one); the address for "::" is in test_the_supervisor_checks_nginx_where_it_listens."""
    address = "127.0.0.2"
    env = env_with_dead_database(s3, MLFLOW_HEROKU_LISTEN_ADDRESS=address)
    port = int(env["PORT"])
    stack = start_stack(env, wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while "requests wait for MLflow" not in stack.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"nginx listening on port {port}" in stack.output()
        assert stack.process.poll() is None, stack.output()
        health = requests.get(f"http://{address}:{port}/health", timeout=10)
        assert health.status_code == 503  # up, waiting for the (absent) database
    finally:
        stack.stop()


def test_mlflow_is_released_as_soon_as_the_migration_succeeds(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    """The supervisor writes the flag uvicorn waits for right after migrate exits 0 (a
    successful migration is never mistaken for a stop and waited on)."""
    env = heroku_env(port=free_port(), database_url=postgres.url, s3=s3)
    stack = start_stack(env, wait_ready=False)
    try:
        runtime_dir: Path | None = None
        migrated_at = flagged_at = None
        deadline = time.monotonic() + 60
        while flagged_at is None and time.monotonic() < deadline:
            now = time.monotonic()
            if migrated_at is None and "is up to date" in stack.output():
                migrated_at = now
            if runtime_dir is None:
                for pid in descendants(stack.process.pid):
                    argv = cmdline(pid).replace(b"\0", b" ").split()
                    if argv and argv[0].startswith(b"nginx") and b"-p" in argv:
                        runtime_dir = Path(argv[argv.index(b"-p") + 1].decode())
            if runtime_dir is not None and (runtime_dir / "migrated").exists():
                flagged_at = now
            time.sleep(0.01)
        assert migrated_at is not None, stack.output()
        assert flagged_at is not None, stack.output()
        assert flagged_at - migrated_at < 0.5
        stack.wait_ready(60)
    finally:
        stack.stop()


def test_wrong_database_password_is_named_not_echoed(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    wrong = "Wrong-DB-pass%word"
    url = postgres.url.replace(postgres.url.split("@")[0].rsplit(":", 1)[1], "Wrong-DB-pass%25word")
    env = heroku_env(port=free_port(), database_url=url, s3=s3, MLFLOW_HEROKU_DB_WAIT_SECONDS="1")
    stack = start_stack(env, wait_ready=False)
    try:
        code, _seconds = wait_exit(stack, 30)
        output = stack.output()
        assert code not in (0, None), output
        assert "password authentication failed" in output
        assert wrong not in output
        assert "Wrong-DB-pass%25word" not in output
    finally:
        stack.stop()


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        ("DATABASE_URL", "DATABASE_URL is not set"),
        ("S3_URI", "S3_URI is not set"),
        ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD is not set"),
        ("PORT", "PORT is not set"),
    ],
)
def test_missing_variable_on_a_dyno_exits_before_starting_anything(
    s3: S3Server, removed: str, message: str
) -> None:
    env = heroku_env(port=free_port(), database_url="postgres://u:pw@127.0.0.1:1/d", s3=s3)
    del env[removed]
    stack = start_stack(env, wait_ready=False)
    try:
        code, _seconds = wait_exit(stack, 30)
        assert code == 2
        output = stack.output()
        assert f"configuration error: {message}" in output
        assert "nginx" not in output
        assert "Traceback" not in output
    finally:
        stack.stop()


def test_local_mode_refused_on_a_dyno(s3: S3Server) -> None:
    env = heroku_env(port=free_port(), database_url="postgres://u:pw@127.0.0.1:1/d", s3=s3)
    stack = start_stack(env, args=["--local"], wait_ready=False)
    try:
        code, _seconds = wait_exit(stack, 30)
        assert code == 2
        assert "--local is refused on a Heroku dyno" in stack.output()
    finally:
        stack.stop()


@pytest.mark.parametrize("mode", ["local", "dyno"])
def test_a_taken_port_stops_the_start_with_one_line(tmp_path: Path, mode: str) -> None:
    """Another program listens on the port nginx would bind: one configuration-error line
    naming the address and the fix, exit 2 at once; nginx never starts (no bind() retries in
    the output), no runtime directory is created and no process is left."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        if mode == "local":
            args = ["--local", "--port", str(port), "--data-dir", str(tmp_path / "data")]
            env = {"TMPDIR": str(scratch)}
            fix = "pass --port N for another port"
        else:
            args = []
            env = {
                **heroku_env(port=port, database_url="postgres://u:pw@db.example.com/d", s3=None),
                "S3_URI": "s3://bucket/prefix",
                "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "secret-example",
                "TMPDIR": str(scratch),
            }
            fix = "another process in this dyno took $PORT"
        stack = start_stack(env, args=args, wait_ready=False, port=port)
        try:
            code, seconds = wait_exit(stack, 30)
            output = stack.output()
            assert code == 2, output
            assert seconds < 10
            lines = [line for line in output.splitlines() if line.strip()]
            assert len(lines) == 1, output
            assert lines[0].startswith(
                f"entrypoint: configuration error: 127.0.0.1:{port} is already in use: "
            ), output
            assert fix in lines[0]
            assert list(scratch.iterdir()) == []
            assert group_members(stack.process.pid) == []
        finally:
            stack.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_mlflow_ports_hold_requests_from_before_nginx_listens(tmp_path: Path, workers: int) -> None:
    """From the moment nginx listens, each of MLflow's ports accepts connections although
    MLflow is still importing, /health says 503 at once, and a request sent then waits and is
    answered 200 once MLflow serves. Only MLflow keeps the ports once it runs (a MLflow that
    dies takes the waiting connections with it: the previous test). A port taken between
    prepare's choice and the supervisor's bind is named (tests/image/test_supervisor.py)."""
    port = free_port()
    stack = start_stack(
        {"WEB_CONCURRENCY": str(workers)},
        args=["--local", "--port", str(port)],
        cwd=tmp_path,
        wait_ready=False,
        port=port,
    )
    try:
        assert wait_for_port(port, 15), stack.output()
        ports = mlflow_ports_of(stack)
        assert len(ports) == workers
        for mlflow_port in ports:  # nothing of MLflow serves yet, but the port takes it
            socket.create_connection(("127.0.0.1", mlflow_port), timeout=1).close()
        # Answered by nginx without waiting: MLflow would have answered 200 once ready.
        asked = time.monotonic()
        health = requests.get(f"{stack.url}/health", timeout=10)
        assert health.status_code == 503, (health.text, stack.output()[-2000:])
        assert time.monotonic() - asked < 2, time.monotonic() - asked
        login = ("mlflow", (tmp_path / ".local-data" / "password").read_text().strip())
        before = stack.output()
        answer = requests.post(
            f"{stack.url}{API}/experiments/search",
            json={"max_results": 1},
            auth=login,
            timeout=60,
        )
        assert answer.status_code == 200, (answer.text, stack.output()[-2000:])
        # Sent before MLflow was ready, so it waited for it.
        assert "MLflow ready after" not in before, before
        assert "MLflow ready after" in stack.wait_for_output("MLflow ready after", 10)
        assert requests.get(f"{stack.url}/health", timeout=10).status_code == 200
        assert listening_ports(stack.process.pid) & set(ports) == set(), ports
        assert listening_ports(mlflow_pid_of(stack)) >= set(ports), ports
    finally:
        stack.stop()


def test_a_request_held_past_nginx_s_timeout_is_answered_504_and_never_run(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    """A boot longer than nginx's read timeout (here 5 s, while another process holds the
    migration lock): the create waiting in MLflow's queue gets nginx's 504 at the timeout, and
    when MLflow starts it does not run it (stale_requests.py), so no experiment exists that
    the client was told had failed."""
    with own_database(postgres, "held_too_long") as (name, database_url):
        env = heroku_env(
            port=free_port(),
            database_url=database_url,
            s3=s3,
            WEB_CONCURRENCY="1",
            MLFLOW_HEROKU_PROXY_READ_TIMEOUT="5",
        )
        with migration_lock_held(postgres, name):
            stack = start_stack(env, wait_ready=False)
            try:
                assert wait_for_port(stack.port, 10), stack.output()
                sent = time.monotonic()
                answer = requests.post(
                    f"{stack.url}{API}/experiments/create",
                    json={"name": "held-too-long"},
                    auth=stack.auth,
                    timeout=30,
                )
                assert answer.status_code == 504, answer.text
                assert answer.json()["error_code"] == "DEADLINE_EXCEEDED"
                assert 4.5 < time.monotonic() - sent < 8
            except BaseException:
                stack.stop()
                raise
        try:
            stack.wait_ready(90)
            output = stack.wait_for_output("not running POST /api/2.0/mlflow/experiments/create")
            assert "not running POST /api/2.0/mlflow/experiments/create: it waited" in output
            found = requests.get(
                f"{stack.url}{API}/experiments/get-by-name",
                params={"experiment_name": "held-too-long"},
                auth=stack.auth,
                timeout=30,
            )
            assert found.status_code == 404, found.text
            assert found.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        finally:
            stack.stop()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process pid has a listening socket on."""
    return {
        connection.laddr.port
        for connection in psutil.Process(pid).net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN
    }


def test_a_stack_that_cannot_launch_leaves_nothing_behind(tmp_path: Path) -> None:
    """start_stack itself: when the process cannot even start (here: no such working
    directory), its output file and directory are removed, as after any other failure."""
    before = set(Path(tempfile.gettempdir()).glob("mlflow-heroku-stack-*"))
    with pytest.raises(FileNotFoundError):
        start_stack({}, args=["--local"], cwd=tmp_path / "missing", port=free_port())
    assert set(Path(tempfile.gettempdir()).glob("mlflow-heroku-stack-*")) <= before


def test_local_mode_runs_on_embedded_defaults(tmp_path: Path) -> None:
    port = free_port()
    stack = start_stack(
        {}, args=["--local", "--port", str(port)], cwd=tmp_path, ready_timeout=90, port=port
    )
    try:
        password = (tmp_path / ".local-data" / "password").read_text().strip()
        assert (tmp_path / ".local-data" / "password").stat().st_mode & 0o077 == 0
        deadline = time.monotonic() + 10
        while f"password: {password}" not in stack.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"MLflow is running at http://127.0.0.1:{port}" in stack.output()
        assert f"password: {password}" in stack.output()
        answer = requests.get(
            f"{stack.url}{API}/experiments/search?max_results=1",
            auth=("mlflow", password),
            timeout=30,
        )
        assert answer.status_code == 200
        assert (tmp_path / ".local-data" / "mlflow.db").exists()
        stack.username, stack.password = "mlflow", password
        experiment_id = create_experiment(stack, "local")
        upload = SlowUpload(stack, experiment_id, create_run(stack, experiment_id)).start()
        # Ctrl-C: the terminal sends SIGINT to every process of its foreground group, nginx
        # included; nginx_graceful_term.so makes that a graceful stop, so the upload finishes.
        os.killpg(stack.process.pid, signal.SIGINT)
        code, seconds = wait_exit(stack, 15)
        upload.thread.join(30)
        assert upload.result.get("status") == 200, (upload.result, stack.output()[-3000:])
        stored = list((tmp_path / ".local-data" / "artifacts").rglob("in-flight.bin"))
        assert [path.stat().st_size for path in stored] == [len(upload.payload)]
        assert code == 0, stack.output()[-2000:]
        assert seconds < 10
        assert "(SIGINT) received" not in stack.output()  # nginx saw SIGQUIT instead
        assert group_members(stack.process.pid) == []
    finally:
        stack.stop()


def test_run_local_script_preloads_the_nginx_library_it_builds(tmp_path: Path) -> None:
    """The README's main command: scripts/run-local builds nginx_graceful_term.so like the
    Dockerfile, and nginx runs with it, so Ctrl-C to the whole group is a graceful stop."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_HEROKU_NGINX_PRELOAD"}
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    output_file = (output_dir / "output.log").open("wb")
    run_local = str(REPO_ROOT / "scripts" / "run-local")
    process = subprocess.Popen(
        ["bash", run_local, "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack = Stack(port, "mlflow", "", process, output_dir / "output.log", output_file)
    try:
        stack.wait_ready(120)
        library = REPO_ROOT / ".venv" / "lib" / "mlflow-heroku" / "nginx_graceful_term.so"
        nginx = [pid for pid in descendants(process.pid) if b"nginx" in cmdline(pid)]
        assert len(nginx) == 2, stack.output()  # master + worker
        for pid in nginx:  # loaded (nginx overwrites its environ with its process title)
            assert str(library) in Path(f"/proc/{pid}/maps").read_text()
        assert "nginx_graceful_term.so not found" not in stack.output()
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        code, seconds = wait_exit(stack, 15)
        assert code == 0, stack.output()[-2000:]
        assert seconds < 10
        assert "(SIGINT) received" not in stack.output()
        assert group_members(process.pid) == []
    finally:
        stack.stop()


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(
        st.sampled_from(
            [
                "PORT",
                "DATABASE_URL",
                "S3_URI",
                "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD",
                "WEB_CONCURRENCY",
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
                "MLFLOW_HEROKU_MAX_BODY_SIZE",
                "AWS_DEFAULT_REGION",
                "MLFLOW_S3_ENDPOINT_URL",
            ]
        ),
        st.text(
            alphabet=st.characters(
                codec="utf-8", exclude_categories=["Cs"], exclude_characters="\0"
            ),
            max_size=30,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzzed_environment_starts_nothing(
    changes: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Generated bad values: exit 2 with named errors, no traceback, nothing started."""
    from mlflow_heroku_runtime.errors import ConfigError
    from mlflow_heroku_runtime.settings import load_settings

    port = free_port()
    env = {
        **heroku_env(port=port, database_url="postgres://u:pw@db.example.com/d", s3=None),
        "S3_URI": "s3://bucket/prefix",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret-example",
        **changes,
    }
    try:
        load_settings(env)
        assume(False)  # only invalid environments are of interest here
    except ConfigError:
        pass
    scratch = tmp_path_factory.mktemp("fuzz-tmp")
    stack = start_stack({**env, "TMPDIR": str(scratch)}, wait_ready=False, port=port)
    try:
        code, _seconds = wait_exit(stack, 30)
        output = stack.output()
        assert code == 2, output
        assert "Traceback" not in output
        lines = [line for line in output.splitlines() if line.strip()]
        assert lines
        assert all(line.startswith("entrypoint: configuration error: ") for line in lines), output
        assert list(scratch.iterdir()) == []  # no runtime directory was created
        assert not wait_for_port(port, 0.1)
    finally:
        stack.stop()
