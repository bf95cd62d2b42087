"""The filter that answers, without running it, a request nginx has already given up on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from mlflow_heroku_runtime.stale_requests import SENT_HEADER, DropStaleRequests

READ_TIMEOUT = 28.0


def call(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the filter once: (what reached the app, what was sent back)."""
    reached: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(DropStaleRequests(app, READ_TIMEOUT)(scope, receive, send))
    return reached, sent


def http(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/2.0/mlflow/runs/create",
        "headers": list(headers),
    }


def stamped(seconds_ago: float) -> tuple[bytes, bytes]:
    return (SENT_HEADER, f"{time.time() - seconds_ago:.3f}".encode())


@pytest.mark.parametrize("waited", [0.0, 5.0, READ_TIMEOUT - 1.5])
def test_a_request_nginx_still_waits_for_runs(waited: float) -> None:
    reached, sent = call(http(stamped(waited)))
    assert len(reached) == 1
    assert sent[0]["status"] == 200


@pytest.mark.parametrize("waited", [READ_TIMEOUT - 0.5, READ_TIMEOUT + 30])
def test_a_request_older_than_nginx_s_timeout_is_answered_and_not_run(
    waited: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """Within a second of nginx's timeout its answer could not arrive in time either."""
    reached, sent = call(http(stamped(waited)))
    assert reached == []
    assert sent[0]["status"] == 503
    assert b"TEMPORARILY_UNAVAILABLE" in sent[1]["body"]
    log = capsys.readouterr().err
    assert "not running POST /api/2.0/mlflow/runs/create: it waited" in log
    assert "MLFLOW_HEROKU_PROXY_READ_TIMEOUT" in log


@pytest.mark.parametrize(
    "scope",
    [
        http(),  # no stamp: the supervisor's probes, or a request sent to MLflow directly
        http((SENT_HEADER, b"not-a-time")),
        {"type": "lifespan"},
    ],
)
def test_requests_without_a_stamp_pass(scope: dict[str, Any]) -> None:
    reached, _sent = call(scope)
    assert reached == [scope]
