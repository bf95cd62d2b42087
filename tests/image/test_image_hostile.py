"""Hostile but authenticated-or-not input on the shared stack: slow clients, error bodies,
and the logs."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.parse
import uuid

import pytest
import requests

from tests.support.services import PostgresCluster, S3Server, Stack, mlflow_ports_of

pytestmark = pytest.mark.integration
API = "/api/2.0/mlflow"
LEAK_MARKERS = ("SELECT ", "INSERT INTO", "sqlalchemy", "psycopg", "Traceback", "postgresql://")


def test_slow_clients_do_not_block_others(stack: Stack) -> None:
    """Slowloris headers and slow bodies wait in nginx; MLflow keeps answering."""
    sockets: list[socket.socket] = []
    try:
        for index in range(60):
            sock = socket.create_connection(("127.0.0.1", stack.port), 5)
            # Headers that never end (each probe from its own client address).
            sock.sendall(
                f"GET /health HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.{index}\r\n".encode()
            )
            sockets.append(sock)
        token = requests.auth._basic_auth_str(stack.username.encode(), stack.password.encode())
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", stack.port), 5)
            # An authenticated body that trickles in: buffered by nginx, never at MLflow.
            sock.sendall(
                (
                    f"POST {API}/runs/log-batch HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
                ).encode()
            )
            sockets.append(sock)
        started = time.monotonic()
        for _ in range(5):
            answer = requests.get(
                f"{stack.url}{API}/experiments/search?max_results=1", auth=stack.auth, timeout=10
            )
            assert answer.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/runs/get?run_id=' OR 1=1 --", None),
        ("GET", "/experiments/get?experiment_id=1;DROP TABLE runs", None),
        (
            "POST",
            "/runs/search",
            {"experiment_ids": ["0"], "filter": "attributes.status = 'x' OR 1=1"},
        ),
        ("POST", "/experiments/create", {"name": "x" * 100_000}),
        (
            "POST",
            "/runs/log-metric",
            {"run_id": "nope", "key": "k" * 5000, "value": 1, "timestamp": 1},
        ),
        ("POST", "/experiments/create", {"name": None}),
        ("POST", "/runs/create", {"experiment_id": "99999999999999999999999999"}),
    ],
)
def test_errors_do_not_echo_sql_or_secrets(
    stack: Stack, postgres: PostgresCluster, method: str, path: str, body: object
) -> None:
    answer = requests.request(
        method, f"{stack.url}{API}{path}", json=body, auth=stack.auth, timeout=30
    )
    assert 400 <= answer.status_code < 600
    for marker in LEAK_MARKERS:
        assert marker not in answer.text, (marker, answer.text[:500])
    assert postgres.password not in answer.text
    assert stack.password not in answer.text
    if answer.status_code >= 500:
        assert answer.json()["error_code"] in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")


def test_no_secret_in_the_logs(stack: Stack, postgres: PostgresCluster, s3: S3Server) -> None:
    # Make sure the log has seen wrong logins and errors by now.
    requests.post(
        f"{stack.url}{API}/experiments/create",
        json={"name": f"log-{uuid.uuid4().hex}"},
        auth=stack.auth,
        timeout=10,
    )
    wrong_login = f"{API}/experiments/search?wrong-login={uuid.uuid4().hex}"
    requests.get(f"{stack.url}{wrong_login}", auth=("x", stack.password + "x"), timeout=10)
    output = stack.wait_for_output(f"GET {wrong_login}")
    assert f"GET {wrong_login}" in output, "nginx's access log did not arrive within 5 s"
    for secret in (
        stack.password,
        postgres.password,
        urllib.parse.quote(postgres.password, safe=""),
        s3.secret_key,
    ):
        assert secret not in output
    assert "Authorization" not in output


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* shows them) of sockets listening on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


def test_tests_keep_nginx_and_mlflow_on_loopback(stack: Stack) -> None:
    # heroku_env sets MLFLOW_HEROKU_LISTEN_ADDRESS=127.0.0.1: nothing the tests start may be
    # reachable from outside this machine, although DYNO is set (a dyno listens on 0.0.0.0).
    assert _listening_addresses(stack.port) == {"0100007F"}  # 127.0.0.1, nothing else
    ports = mlflow_ports_of(stack)
    assert len(ports) == 2, ports  # the shared stack's default: one per forked worker
    for port in ports:
        assert _listening_addresses(port) == {"0100007F"}  # MLflow's workers too
