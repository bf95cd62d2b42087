"""The WSGI bridge that serves MLflow's Flask app with one thread hand-off per call."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from mlflow_heroku_runtime.error_filter import Message
from mlflow_heroku_runtime.wsgi_bridge import WsgiBridge

SCOPE = {
    "type": "http",
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/api/2.0/mlflow/runs/log-metric",
    "root_path": "",
    "query_string": b"a=1",
    "headers": [(b"host", b"app.herokuapp.com"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 5001),
}


def serve(
    bridge: WsgiBridge,
    body_parts: list[bytes] | None = None,
    *,
    fail_send_at: int | None = None,
    leave_after: int | None = None,
    sent: list[Message] | None = None,
) -> list[Message]:
    """Run one request through the bridge; the ASGI messages it sent (also into ``sent``, which
    keeps them when the bridge raises). As uvicorn does, receive() after the request body waits
    until the response is complete or the client has left (after ``leave_after`` messages),
    then says http.disconnect, and later sends are dropped without an error."""
    parts = list(body_parts or [b""])
    sent = [] if sent is None else sent

    async def run() -> None:
        over = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if parts:
                body = parts.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(parts)}
            await over.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if fail_send_at is not None and len(sent) == fail_send_at:
                raise OSError("client went away")
            if over.is_set():
                return
            sent.append(message)
            last_body = message["type"] == "http.response.body" and not message.get("more_body")
            if last_body or len(sent) == leave_after:
                over.set()

        await bridge(dict(SCOPE), receive, send)

    asyncio.run(run())
    return sent


@pytest.fixture
def hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions the bridge sends to a worker thread, one entry per hand-off."""
    names: list[str] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(function: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(function.__name__)
        return await real_run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    return names


def test_a_small_response_is_one_start_and_one_body_from_a_single_thread_hand_off(
    hand_offs: list[str],
) -> None:
    seen: dict[str, Any] = {}
    loop_thread = threading.get_ident()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ, thread=threading.get_ident(), body=environ["wsgi.input"].read())
        start_response("201 CREATED", [("Content-Type", "application/json"), ("X-Run", "r1")])
        return [b'{"a": ', b"1}"]

    sent = serve(WsgiBridge(app), [b'{"run_id": ', b'"r1"}'])

    assert sent == [
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json"), (b"x-run", b"r1")],
        },
        {"type": "http.response.body", "body": b'{"a": 1}'},
    ]
    assert hand_offs == ["run"]  # context.run(call.start): one trip to a thread
    assert seen["thread"] != loop_thread  # the app never blocks the event loop
    assert seen["body"] == b'{"run_id": "r1"}'  # the request body, whole
    assert seen["PATH_INFO"] == "/api/2.0/mlflow/runs/log-metric"
    assert seen["QUERY_STRING"] == "a=1"
    assert seen["HTTP_HOST"] == "app.herokuapp.com"
    assert seen["REQUEST_METHOD"] == "POST"


class CountedBody:
    """A streamed WSGI body that records how far it was read and whether it was closed."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size = chunks, size
        self.read = 0
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index in range(self.chunks):
            self.read += 1
            yield bytes([65 + index % 26]) * self.size

    def close(self) -> None:
        self.closed += 1


def test_a_large_response_streams_after_the_buffer_and_the_body_is_closed_once() -> None:
    body = CountedBody(chunks=6, size=400 * 1024)
    read_when_sent: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body

    bridge = WsgiBridge(app, buffer_bytes=1 << 20)
    sent: list[Message] = []

    async def run() -> None:
        received: list[str] = []

        async def receive() -> dict[str, Any]:
            if not received:
                received.append("body")
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # a client that stays, until the bridge stops asking
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            read_when_sent.append(body.read)
            sent.append(message)

        await bridge(dict(SCOPE), receive, send)

    asyncio.run(run())
    bodies = [message for message in sent if message["type"] == "http.response.body"]
    assert b"".join(message["body"] for message in bodies) == b"".join(
        bytes([65 + index]) * 400 * 1024 for index in range(6)
    )
    assert len(bodies[0]["body"]) == 3 * 400 * 1024  # held up to the buffer, then sent
    assert read_when_sent[1] == 3  # ...before the rest of the body was read
    assert all(message["more_body"] for message in bodies[:-1])
    assert bodies[-1] == {"type": "http.response.body", "body": b""}
    assert body.closed == 1


def test_a_file_in_small_reads_goes_out_in_few_large_pieces(hand_offs: list[str]) -> None:
    """Flask streams a file in werkzeug's 8 KiB reads: the bridge gathers them into pieces of
    about STREAM_CHUNK_BYTES, one thread hand-off each, not one per read."""
    from mlflow_heroku_runtime.wsgi_bridge import STREAM_CHUNK_BYTES

    body = CountedBody(chunks=512, size=8 * 1024)  # 4 MiB

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    sent = serve(WsgiBridge(app, buffer_bytes=1 << 20))
    pieces = [message["body"] for message in sent[1:] if message["body"]]
    assert b"".join(pieces) == b"".join(bytes([65 + index % 26]) * 8192 for index in range(512))
    assert len(pieces[0]) == 1 << 20  # the buffer
    assert {len(piece) for piece in pieces[1:]} == {STREAM_CHUNK_BYTES}
    assert len(hand_offs) == 1 + 12 + 1  # start, 3 MiB in 256 KiB pieces, the end
    assert body.closed == 1


def test_a_body_that_fits_the_buffer_is_closed_once() -> None:
    body = CountedBody(chunks=2, size=10)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    sent = serve(WsgiBridge(app))
    assert sent[1] == {"type": "http.response.body", "body": b"A" * 10 + b"B" * 10}
    assert body.closed == 1


def test_a_streamed_body_sees_one_context_across_its_chunks() -> None:
    """Flask's stream_with_context sets its request context when the body starts and resets it
    when the body ends, in different steps of the bridge: they must share one context."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")

    def streamed() -> Iterator[bytes]:
        token = request_id.set("r1")
        try:
            for _ in range(4):
                yield request_id.get().encode() * (512 * 1024)
        finally:
            request_id.reset(token)  # ValueError if resumed in another context

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return streamed()

    sent = serve(WsgiBridge(app, buffer_bytes=1 << 20))
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert body == b"r1" * (4 * 512 * 1024)
    assert len(sent) > 3  # it did stream past the buffer, in several steps


def test_flasks_own_streamed_response_works_through_the_bridge() -> None:
    from flask import Flask, request, stream_with_context

    flask_app = Flask("bridge-test")

    @flask_app.post("/api/2.0/mlflow/runs/log-metric")
    def streamed() -> Any:
        def chunks() -> Iterator[bytes]:
            for _ in range(3):
                yield request.path.encode() * 20_000  # needs the request context throughout

        return flask_app.response_class(stream_with_context(chunks()))

    sent = serve(WsgiBridge(flask_app.wsgi_app, buffer_bytes=1 << 20))
    assert sent[0]["status"] == 200
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert body == b"/api/2.0/mlflow/runs/log-metric" * 60_000


def test_a_client_that_leaves_mid_stream_gets_the_body_closed() -> None:
    body = CountedBody(chunks=6, size=400 * 1024)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    with pytest.raises(OSError, match="client went away"):
        serve(WsgiBridge(app, buffer_bytes=1 << 20), fail_send_at=2)
    assert body.closed == 1
    assert body.read < 6  # the rest was never read


def test_a_client_that_leaves_mid_stream_stops_the_stream() -> None:
    """uvicorn drops sends to a client that has left, without an error, and tells the app
    through receive(): the bridge stops reading the body there and closes it."""
    body = CountedBody(chunks=200, size=64 * 1024)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    sent = serve(WsgiBridge(app, buffer_bytes=64 * 1024), leave_after=3)
    assert len(sent) == 3  # the start and two pieces of the body reached the client
    assert body.closed == 1
    assert body.read < 10  # not the 200 chunks of the whole file


def test_under_uvicorn_a_download_the_client_abandons_stops_being_read() -> None:
    """The same through a real uvicorn (uvloop, httptools, as in the image) on loopback: a
    client reads the start of a 64 MiB download and hangs up."""
    import socket
    import time

    import uvicorn

    from tests.support.services import LOOPBACK, free_port

    body = CountedBody(chunks=1024, size=64 * 1024)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body

    port = free_port()
    config = uvicorn.Config(
        WsgiBridge(app, buffer_bytes=64 * 1024),
        host=LOOPBACK,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection((LOOPBACK, port), timeout=5) as client:
            client.sendall(b"GET /file HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while not body.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert body.closed == 1
        assert body.read < 100  # of 1,024 chunks
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_app_error_before_any_response_propagates_and_nothing_is_sent() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise LookupError("store failed")

    sent: list[Message] = []
    with pytest.raises(LookupError, match="store failed"):
        serve(WsgiBridge(app), sent=sent)
    assert sent == []


def test_a_body_without_start_response_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return [b"no status"]

    with pytest.raises(RuntimeError, match="without calling start_response"):
        serve(WsgiBridge(app))


def test_an_error_page_may_replace_the_headers_before_they_are_sent() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("500 INTERNAL SERVER ERROR", [("X-Error", "1")], sys.exc_info())
        return [b"error"]

    sent = serve(WsgiBridge(app))
    assert sent[0]["status"] == 500
    assert sent[0]["headers"] == [(b"x-error", b"1")]
    assert sent[1]["body"] == b"error"


def test_data_from_the_legacy_write_callable_comes_first() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"written ")
        return [b"returned"]

    assert serve(WsgiBridge(app))[1]["body"] == b"written returned"


def test_a_client_that_leaves_before_its_request_ends_never_reaches_the_app() -> None:
    called: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(True)
        return []

    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(WsgiBridge(app)(dict(SCOPE), receive, send))
    assert called == []
    assert sent == []


def test_a_websocket_is_refused() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(WsgiBridge(lambda environ, start: [])({"type": "websocket"}, None, send))  # type: ignore[arg-type]
    assert sent == [{"type": "websocket.close", "code": 1000}]
