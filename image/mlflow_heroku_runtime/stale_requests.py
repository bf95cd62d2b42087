"""An ASGI filter that answers, without running it, a request nginx has already given up on.

While MLflow boots, nginx's requests wait for it in the kernel's queue of its port
(supervisor.py). A boot longer than nginx's read timeout (``MLFLOW_HEROKU_PROXY_READ_TIMEOUT``,
28 s: a long migration, or another dyno's) leaves requests there that nginx has answered with
504 and closed; MLflow would still run each when it starts, so a create the client was told
had failed would exist after all. nginx stamps every request with the time it sent it on
(``SENT_HEADER``, its ``$msec``, replacing any the client sent); a request older than the read
timeout, less ``MARGIN_SECONDS`` for the answer to get back, is answered 503 here and never
reaches MLflow. Requests without the stamp (the supervisor's readiness probes) pass.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SENT_HEADER = b"x-mlflow-heroku-sent"  # nginx.conf.j2 sets it on every proxied request
# The supervisor passes nginx's read timeout to MLflow's processes in this variable.
READ_TIMEOUT_VARIABLE = "_MLFLOW_HEROKU_PROXY_READ_TIMEOUT"
MARGIN_SECONDS = 1.0
GONE_BODY = json.dumps(
    {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": "the request waited longer than the proxy's read timeout and was not run",
    }
).encode()


def sent_at(scope: Scope) -> float | None:
    """nginx's send time of the request, in seconds since the epoch (None: no stamp)."""
    for name, value in scope.get("headers", ()):
        if name == SENT_HEADER:
            try:
                return float(value)
            except ValueError:
                return None
    return None


class DropStaleRequests:
    def __init__(self, app: ASGIApp, read_timeout_seconds: float) -> None:
        self.app = app
        self.limit = read_timeout_seconds - MARGIN_SECONDS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = sent_at(scope) if scope["type"] == "http" else None
        waited = time.time() - sent if sent is not None else 0.0
        if waited <= self.limit:
            await self.app(scope, receive, send)
            return
        print(
            f"mlflow-heroku: not running {scope.get('method')} {scope.get('path')}: it waited "
            f"{waited:.0f} s for MLflow, and nginx gives up after {self.limit + MARGIN_SECONDS:.0f}"
            " s (MLFLOW_HEROKU_PROXY_READ_TIMEOUT)",
            file=sys.stderr,
            flush=True,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(GONE_BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": GONE_BODY, "more_body": False})
