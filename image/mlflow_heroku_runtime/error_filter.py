"""An ASGI filter that keeps database internals out of error responses.

MLflow answers some database failures with a 4xx/5xx JSON body that carries SQLAlchemy's
text: the SQL statement, its parameters and the driver's message. The filter replaces such a
message with a generic one (status code and error_code unchanged, so clients still react
correctly) and logs the exception class. Everything else passes through untouched; only
error responses are buffered, and those are small.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SQL_MARKERS = (b"[SQL:", b"(Background on this error", b"(psycopg", b"(sqlite3.", b"sqlalchemy.")
DRIVER_ERROR = re.compile(r"\(((?:psycopg|sqlite3|sqlalchemy)[\w.]*)\)")


def scrub(body: bytes) -> bytes | None:
    """A replacement body when ``body`` shows database internals, else None."""
    if not any(marker in body for marker in SQL_MARKERS):
        return None
    text = body.decode("utf-8", errors="replace")
    match = DRIVER_ERROR.search(text)
    kind = match.group(1) if match else "database error"
    try:
        payload = json.loads(text)
        error_code = payload.get("error_code", "INTERNAL_ERROR")
    except (ValueError, AttributeError):
        error_code = "INTERNAL_ERROR"
    # Only the error's short name (e.g. NumericValueOutOfRange) goes to the client.
    message = (
        f"The database refused the request ({kind.rsplit('.', 1)[-1]}); "
        "details are in the server log."
    )
    print(f"mlflow: hid database details from a client: {kind}", file=sys.stderr, flush=True)
    return json.dumps({"error_code": error_code, "message": message}).encode()


class ScrubDatabaseErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: Message | None = None
        chunks: list[bytes] = []

        async def filtered_send(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held_start = message
                return
            if message["type"] != "http.response.body" or held_start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            replacement = scrub(body)
            if replacement is not None:
                body = replacement
                headers = [
                    (name, value)
                    for name, value in held_start.get("headers", [])
                    if name.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                held_start = {**held_start, "headers": headers}
            await send(held_start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, filtered_send)
