"""The filter that keeps database internals out of error bodies."""

from __future__ import annotations


def _run_filtered(status: int, chunks: list[bytes]) -> list[dict[str, object]]:
    import asyncio

    from mlflow_heroku_runtime.error_filter import ScrubDatabaseErrors

    async def fake_mlflow(scope: object, receive: object, send: object) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"999")]
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})  # type: ignore[operator]

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    # A private loop: asyncio.run() would leave the thread without a current loop afterwards,
    # which breaks later tests whose libraries call asyncio.get_event_loop() (Pulumi's SDK).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            ScrubDatabaseErrors(fake_mlflow)({"type": "http"}, receive, send)  # type: ignore[arg-type]
        )
    finally:
        loop.close()
    return sent


def test_database_text_in_an_error_is_replaced_status_and_code_kept() -> None:
    import json

    leaked = json.dumps(
        {
            "error_code": "BAD_REQUEST",
            "message": "(psycopg.errors.NumericValueOutOfRange) integer out of range\n"
            "[SQL: SELECT experiments.experiment_id FROM experiments WHERE id = %(id)s]\n"
            "(Background on this error at: https://sqlalche.me/e/20/9h9h)",
        }
    ).encode()
    sent = _run_filtered(400, [leaked[:50], leaked[50:]])
    start, body = sent
    assert start["status"] == 400
    payload = json.loads(body["body"])  # type: ignore[arg-type]
    assert payload["error_code"] == "BAD_REQUEST"
    assert "NumericValueOutOfRange" in payload["message"]
    assert "SELECT" not in payload["message"]
    assert "psycopg" not in payload["message"]
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"content-length"] == str(len(body["body"])).encode()  # type: ignore[arg-type]


def test_ordinary_errors_and_successes_pass_unchanged() -> None:
    plain = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run \'x\' not found"}'
    sent = _run_filtered(404, [plain])
    assert sent[1]["body"] == plain
    streamed = _run_filtered(200, [b"part one ", b"sqlalchemy. in a 200 body stays"])
    assert [message.get("body") for message in streamed[1:]] == [
        b"part one ",
        b"sqlalchemy. in a 200 body stays",
    ]
