"""The MLflow 3.18 client emulation retries what 3.18 retries and nothing else, against a
scripted HTTP server on loopback (a real socket: refused, reset and answered connections)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests.auth

from tests.support.mlflow_318_client import CallFailedError, Mlflow318Client
from tests.support.services import free_port

RUN = {"run": {"info": {"run_id": "r1"}}}
# A scripted answer: (status, headers, JSON body), or None for a reset instead of an answer.
Step = tuple[int, dict[str, str], Any] | None


class ScriptedServer:
    """Answers each request with the next step of its script: (status, headers, body), or
    None to close the connection without an answer (what a reset looks like to a client)."""

    def __init__(self, port: int, script: list[Step]):
        self.script = list(script)
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                connection, _address = self.listener.accept()
                with connection:
                    self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        while len(body) < length:
            body += connection.recv(65536)
        self.requests.append(head.split(b"\r\n")[0].decode())
        step = self.script.pop(0) if self.script else (200, {}, {})
        if step is None:
            connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            return  # closing with SO_LINGER 0 sends a reset
        status, headers, payload = step
        text = json.dumps(payload).encode()
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(text)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + text)

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def scripted(port: int, *script: Step) -> Iterator[ScriptedServer]:
    server = ScriptedServer(port, list(script))
    try:
        yield server
    finally:
        server.close()


def client(port: int) -> Mlflow318Client:
    return Mlflow318Client(f"http://127.0.0.1:{port}", requests.auth.HTTPBasicAuth("u", "p"))


UNAVAILABLE = (503, {"Retry-After": "1"}, {"error_code": "TEMPORARILY_UNAVAILABLE"})


def test_a_create_is_not_repeated_after_a_503_with_retry_after() -> None:
    port = free_port()
    with (
        scripted(port, UNAVAILABLE, (200, {}, RUN)) as server,
        pytest.raises(CallFailedError) as failed,
    ):
        client(port).create_run("0", "r")
    assert server.requests == ["POST /api/2.0/mlflow/runs/create HTTP/1.1"]
    assert failed.value.call.outcome.startswith("HTTP 503")


def test_a_log_call_is_repeated_after_a_503() -> None:
    port = free_port()
    with scripted(port, UNAVAILABLE, (200, {}, {})) as server:
        api = client(port)
        api.log_metric("r1", "loss", 0.5, 1)
    assert len(server.requests) == 2
    assert api.calls[0].retried == ("status 503",)


def test_a_create_is_repeated_after_429() -> None:
    port = free_port()
    with scripted(port, (429, {}, {}), (200, {}, RUN)) as server:
        api = client(port)
        assert api.create_run("0", "r") == "r1"
    assert len(server.requests) == 2
    assert api.calls[0].retried == ("status 429",)


def test_a_create_ends_at_a_reset_and_a_log_call_is_repeated() -> None:
    """A reset after the request was sent is a read error: the create may have happened."""
    port = free_port()
    with scripted(port, None, None, (200, {}, {})) as server:
        api = client(port)
        with pytest.raises(CallFailedError):
            api.create_run("0", "r")
        assert len(server.requests) == 1
        api.log_param("r1", "lr", "0.1")
    assert len(server.requests) == 3
    assert api.calls[1].retried == ("read: ProtocolError",)


def test_a_create_waits_through_refused_connections_with_backoff() -> None:
    """Nothing listens for 2 s: the create is sent again at once, then after 4-5 s, and
    succeeds once a server is there (the wait of 3.18's backoff, 0 then 4 s + jitter)."""
    port = free_port()
    api = client(port)
    result: list[str] = []
    caller = threading.Thread(target=lambda: result.append(api.create_run("0", "r")))
    began = time.monotonic()
    caller.start()
    time.sleep(2)
    with scripted(port, (200, {}, RUN)) as server:
        caller.join(30)
    took = time.monotonic() - began
    assert result == ["r1"]
    assert server.requests == ["POST /api/2.0/mlflow/runs/create HTTP/1.1"]
    assert api.calls[0].retried == ("connect: NewConnectionError",) * 2
    assert 4 <= took <= 6.5
