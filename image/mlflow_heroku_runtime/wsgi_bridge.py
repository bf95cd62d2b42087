"""Serve MLflow's Flask app over ASGI with one thread hand-off per call (``WsgiBridge``).

MLflow mounts Flask through Starlette's WSGI bridge, which runs the app in a thread and has
that thread wait for the event loop at every step of the response: the status line, each body
chunk and the end, each a blocking round trip between the two threads (and two GIL hand-offs).
A tracking call's answer is one small JSON document, so here the thread runs the whole call and
hands back the finished response; only a response larger than ``buffer_bytes`` (an artifact
file MLflow streams from the store) is sent on in pieces, each fetched in a thread, until the
body ends or the client leaves.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import anyio

from .error_filter import Message, Receive, Scope, Send
from .internals import wsgi_environ

WsgiApp = Callable[[dict[str, Any], Callable[..., Callable[[bytes], None]]], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]

BUFFER_BYTES = 1 << 20  # a response up to this size is sent in one piece
STREAM_CHUNK_BYTES = 256 << 10  # a larger one goes on in pieces of about this size


class WsgiCall:
    """One WSGI call, run in a worker thread: ``start`` calls the app and reads its body until
    the body ends or ``buffer_bytes`` are held; ``next_chunk`` reads on from there."""

    def __init__(self, app: WsgiApp, environ: dict[str, Any], buffer_bytes: int) -> None:
        self.app = app
        self.environ = environ
        self.buffer_bytes = buffer_bytes
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pending: list[bytes] = []  # body read but not yet sent
        self.finished = False
        self._body: Iterator[bytes] | None = None
        self._result: Iterable[bytes] | None = None
        self._headers_sent = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self._headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        self.status = int(status.split(" ", 1)[0])
        self.headers = [
            (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            for name, value in headers
        ]
        return self.pending.append  # the legacy write() callable

    def start(self) -> None:
        self._result = self.app(self.environ, self.start_response)
        self._body = iter(self._result)
        self._read(self.buffer_bytes)
        if not self.status:
            raise RuntimeError("the WSGI app returned a body without calling start_response")
        self._headers_sent = True

    def next_chunk(self) -> bytes | None:
        """The next piece of the body, ``STREAM_CHUNK_BYTES`` or more unless the body ends
        first, or None at its end. Flask's send_file reads 8 KiB at a time (artifacts on local
        disk, as in local mode; a temporary copy from S3 is read 1 MiB at a time): one thread
        hand-off per read would hold the download back (docs/image.md)."""
        self._read(STREAM_CHUNK_BYTES)
        return self.take_pending() if self.pending else None

    def _read(self, limit: int) -> None:
        """Move the body into ``pending`` until ``limit`` bytes are held or the body ends."""
        assert self._body is not None  # start() set it
        held = sum(len(chunk) for chunk in self.pending)
        while held < limit and not self.finished:
            chunk = next(self._body, None)
            if chunk is None:
                self.close()
                self.finished = True
            else:
                self.pending.append(chunk)  # after anything write() added while it ran
                held += len(chunk)

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        self._result = None
        if close is not None:
            close()


class WsgiBridge:
    """An ASGI app serving ``app`` (a WSGI app): the request body is read in the event loop,
    the call runs in a worker thread, and the response goes out from the event loop."""

    def __init__(self, app: WsgiApp, buffer_bytes: int = BUFFER_BYTES) -> None:
        self.app = app
        self.buffer_bytes = buffer_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        chunks: list[bytes] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its whole request
            chunks.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        call = WsgiCall(self.app, wsgi_environ(scope, b"".join(chunks)), self.buffer_bytes)
        del chunks
        # Every step of the call runs in this one context, as if in one thread: a streamed body
        # may set a context variable in one step and reset it in another (Flask's
        # stream_with_context does, for its request context).
        context = contextvars.copy_context()
        try:
            await anyio.to_thread.run_sync(context.run, call.start)
            await send(
                {"type": "http.response.start", "status": call.status, "headers": call.headers}
            )
            if call.finished:
                await send({"type": "http.response.body", "body": call.take_pending()})
                return
            await send(
                {"type": "http.response.body", "body": call.take_pending(), "more_body": True}
            )
            # uvicorn drops what is sent after the client left, without an error, and says so
            # through receive() instead: the stream stops there rather than reading the rest
            # of the file for no one.
            client_gone = asyncio.ensure_future(receive())
            try:
                while (
                    not left(client_gone)
                    and (chunk := await anyio.to_thread.run_sync(context.run, call.next_chunk))
                    is not None
                ):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if call.finished:
                    await send({"type": "http.response.body", "body": b""})
            finally:
                client_gone.cancel()
        finally:
            if not call.finished:
                # Cancelled or failed mid-body: release what the app holds (an open file).
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(context.run, call.close)


def left(client_gone: asyncio.Future[Message]) -> bool:
    """After the request body, the next ASGI message is ``http.disconnect``: the client left."""
    return (
        client_gone.done()
        and not client_gone.cancelled()
        and (client_gone.result()["type"] == "http.disconnect")
    )
