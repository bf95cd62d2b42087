"""The filter that keeps the server's internals out of error bodies and MLflow's message in
them. The database texts below are MLflow 3.17.2's answers on PostgreSQL (psycopg 3), as
stock ``mlflow server`` sends them."""

from __future__ import annotations

import asyncio
import json

import pytest
from mlflow_heroku_runtime.error_filter import (
    Scrubber,
    ScrubDatabaseErrors,
    known_values_from_environment,
    scrub_body,
)

DUPLICATE_EXPERIMENT = (
    "Experiment(name=dup) already exists. Error: (psycopg.errors.UniqueViolation) duplicate key "
    'value violates unique constraint "uq_experiments_workspace_name"\n'
    "DETAIL:  Key (workspace, name)=(default, dup) already exists.\n"
    "[SQL: INSERT INTO experiments (name, workspace, artifact_location, lifecycle_stage, "
    "creation_time, last_update_time) VALUES (%(name)s::VARCHAR, %(workspace)s::VARCHAR, "
    "%(artifact_location)s::VARCHAR, %(lifecycle_stage)s::VARCHAR, %(creation_time)s::BIGINT, "
    "%(last_update_time)s::BIGINT) RETURNING experiments.experiment_id]\n"
    "[parameters: {'name': 'dup', 'workspace': 'default', 'artifact_location': '', "
    "'lifecycle_stage': 'active', 'creation_time': 1796222081223, 'last_update_time': "
    "1796222081223}]\n"
    "(Background on this error at: https://sqlalche.me/e/21/gkpj)"
)
RENAMED_TO_EXISTING_MODEL = (
    "Registered Model (name=m) already exists. Error: (raised as a result of Query-invoked "
    "autoflush; consider using a session.no_autoflush block if this flush is occurring "
    "prematurely)\n(psycopg.errors.UniqueViolation) duplicate key value violates unique "
    'constraint "registered_model_pk"\nDETAIL:  Key (workspace, name)=(default, m) already '
    "exists.\n[SQL: UPDATE registered_models SET name=%(name)s::VARCHAR WHERE "
    "registered_models.workspace = %(registered_models_workspace)s::VARCHAR AND "
    "registered_models.name = %(registered_models_name)s::VARCHAR]\n[parameters: {'name': 'm', "
    "'registered_models_workspace': 'default', 'registered_models_name': 'm2'}]\n"
    "(Background on this error at: https://sqlalche.me/e/21/gkpj)"
)
EXPERIMENT_ID_OUT_OF_RANGE = (
    "(psycopg.errors.NumericValueOutOfRange) integer out of range\n"
    "[SQL: SELECT experiments.experiment_id AS experiments_experiment_id \nFROM experiments \n"
    "WHERE experiments.experiment_id = %(experiment_id_1)s::INTEGER]\n"
    "[parameters: {'experiment_id_1': 99999999999999999999}]\n"
    "(Background on this error at: https://sqlalche.me/e/21/9h9h)"
)
LEAKS = ("[SQL:", "INSERT INTO", "SELECT ", "UPDATE ", "[parameters:", "DETAIL:", "psycopg")


def error_body(message: str, error_code: str = "RESOURCE_ALREADY_EXISTS") -> bytes:
    """An error body as MLflow's Flask handlers write it."""
    return json.dumps(
        {
            "error_code": error_code,
            "message": message,
            "sqlstate": "KAM00",
            "error_class": "RESOURCE_ALREADY_EXISTS",
        }
    ).encode()


def scrubber(
    secrets: tuple[str, ...] = (),
    identities: tuple[str, ...] = (),
    top_directories: tuple[str, ...] = ("app", "tmp", "usr"),
) -> Scrubber:
    return Scrubber(secrets, identities, top_directories)


def run_filtered(
    status: int,
    chunks: list[bytes],
    filter_scrubber: Scrubber | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[dict[str, object]]:
    """What the client side receives when a fake MLflow sends chunks behind the filter."""
    if headers is None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"999")]

    async def fake_mlflow(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})  # type: ignore[operator]

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    app = ScrubDatabaseErrors(fake_mlflow, filter_scrubber or scrubber())
    scope = {"type": "http", "method": "POST", "path": "/api/2.0/mlflow/experiments/create"}
    # A private loop: asyncio.run() would leave the thread without a current loop afterwards,
    # which breaks later tests whose libraries call asyncio.get_event_loop() (Pulumi's SDK).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app(scope, receive, send))  # type: ignore[arg-type]
    finally:
        loop.close()
    return sent


def message_of(body: bytes, filter_scrubber: Scrubber | None = None) -> str:
    scrubbed = scrub_body(filter_scrubber or scrubber(), body)
    assert scrubbed is not None, "nothing was removed"
    message: str = json.loads(scrubbed[0])["message"]
    return message


def test_mlflows_sentence_and_the_drivers_reason_stay_the_rest_of_the_database_text_goes() -> None:
    sent = run_filtered(400, [error_body(DUPLICATE_EXPERIMENT)])
    start, body = sent
    assert start["status"] == 400
    payload = json.loads(body["body"])  # type: ignore[arg-type]
    assert payload == {
        "error_code": "RESOURCE_ALREADY_EXISTS",
        "message": "Experiment(name=dup) already exists. Error: duplicate key value violates "
        'unique constraint "uq_experiments_workspace_name"',
        "sqlstate": "KAM00",
        "error_class": "RESOURCE_ALREADY_EXISTS",
    }
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"content-length"] == str(len(body["body"])).encode()  # type: ignore[arg-type]
    assert headers[b"content-type"] == b"application/json"


def test_sqlalchemys_note_before_the_driver_error_goes_too() -> None:
    assert message_of(error_body(RENAMED_TO_EXISTING_MODEL)) == (
        "Registered Model (name=m) already exists. Error: duplicate key value violates unique "
        'constraint "registered_model_pk"'
    )


def test_a_message_that_is_only_the_database_text_keeps_the_drivers_reason() -> None:
    assert message_of(error_body(EXPERIMENT_ID_OUT_OF_RANGE, "BAD_REQUEST")) == (
        "integer out of range"
    )


def test_a_message_with_nothing_left_names_the_kind_of_failure() -> None:
    only_sql = "(psycopg.errors.SyntaxError) \n[SQL: SELECT 1]\n[parameters: {'a': 1}]"
    assert message_of(error_body(only_sql)) == "The database refused the request (SyntaxError)."


def test_text_after_sqlalchemys_link_is_mlflows_again_and_stays() -> None:
    message = (
        "Could not log. Error: (psycopg.errors.DataError) bad value\n[SQL: SELECT 1]\n"
        "(Background on this error at: https://sqlalche.me/e/21/9h9h) Try a shorter value."
    )
    assert message_of(error_body(message)) == "Could not log. Error: bad value Try a shorter value."


def test_a_driver_error_without_sql_keeps_its_sentence() -> None:
    message = (
        "(sqlalchemy.exc.TimeoutError) QueuePool limit of size 3 overflow 1 reached, "
        "connection timed out, timeout 30.00 (Background on this error at: "
        "https://sqlalche.me/e/21/3o7r)"
    )
    assert message_of(error_body(message)) == (
        "QueuePool limit of size 3 overflow 1 reached, connection timed out, timeout 30.00"
    )


def test_a_dotted_name_in_parentheses_is_not_taken_for_a_driver_error() -> None:
    plain = error_body("Tag (mlflow.runName) and run_name (x) must match. See (docs.page) here")
    assert scrub_body(scrubber(), plain) is None


def test_a_streamed_error_body_is_scrubbed_whole() -> None:
    body = error_body(DUPLICATE_EXPERIMENT)
    # Split inside the driver's class name and inside the SQL, and end with an empty chunk.
    cut_one, cut_two = body.index(b"psycopg") + 3, body.index(b"INSERT") + 2
    sent = run_filtered(400, [body[:cut_one], body[cut_one:cut_two], body[cut_two:], b""])
    assert len(sent) == 2, "one start and one body, after the last chunk"
    start, scrubbed = sent
    assert scrubbed["more_body"] is False
    text = scrubbed["body"].decode()  # type: ignore[attr-defined]
    assert json.loads(text)["message"].startswith("Experiment(name=dup) already exists. Error: ")
    for leak in LEAKS:
        assert leak not in text
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"content-length"] == str(len(text.encode())).encode()


def test_a_non_json_error_body_is_scrubbed_as_text_and_keeps_its_type() -> None:
    page = (
        b"<html><body><p>Experiment(name=dup) already exists. Error: "
        b"(psycopg.errors.UniqueViolation) duplicate key\nDETAIL:  Key (name)=(dup)\n"
        b"[SQL: INSERT INTO experiments (name) VALUES (%(name)s)]\n[parameters: {'name': 'dup'}]\n"
        b"(Background on this error at: https://sqlalche.me/e/21/gkpj)</p></body></html>"
    )
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"9")]
    start, body = run_filtered(409, [page], headers=headers)
    assert body["body"] == (
        b"<html><body><p>Experiment(name=dup) already exists. Error: duplicate key"
        b"</p></body></html>"
    )
    assert dict(start["headers"])[b"content-type"] == b"text/html; charset=utf-8"  # type: ignore[call-overload]


def test_a_body_that_only_looks_like_json_is_scrubbed_as_text() -> None:
    broken = b'{"message": "(psycopg.errors.DataError) bad\n[SQL: SELECT secret_column FROM t]'
    scrubbed = scrub_body(scrubber(), broken)
    assert scrubbed is not None
    assert scrubbed[0] == b'{"message": "bad'


def test_connection_diagnostics_lose_host_port_and_user() -> None:
    message = (
        '(psycopg.OperationalError) connection failed: connection to server at "10.1.2.3" '
        '(10.1.2.3), port 5432 failed: FATAL:  password authentication failed for user "u9x8"\n'
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)"
    )
    kept = message_of(error_body(message, "TEMPORARILY_UNAVAILABLE"))
    assert kept == (
        "connection failed: connection to server at *** failed: FATAL:  password authentication "
        "failed for user ***"
    )


def test_connection_strings_go_wherever_they_appear() -> None:
    message = (
        "cannot open postgresql+psycopg://u9x8:pw@db.example.com:5432/d1 nor "
        "sqlite:///srv/mlflow.db nor https://key:secret@bucket.example.com/x; "
        "conninfo host=db.example.com port=5432 user=u9x8 dbname=d1 password=pw. "
        "The filter params.port=3 stays."
    )
    kept = message_of(error_body(message))
    assert kept == "cannot open *** nor *** nor ***; conninfo ***. The filter params.port=3 stays."


def test_known_secrets_and_the_databases_identity_go_in_every_spelling() -> None:
    secret = "p@ss:w/rd%20&é $!'"
    environ = {
        "_MLFLOW_SERVER_FILE_STORE": "postgresql+psycopg://owner_u9x8:p%40ss%3Aw%2Frd%2520%26"
        "%C3%A9%20%24%21%27@ec2-1-2-3-4.compute.example.com:5432/d1",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-key-value",
    }
    secrets, identities = known_values_from_environment(environ)
    assert secret in secrets
    assert "aws-secret-key-value" in secrets
    assert set(identities) == {"owner_u9x8", "ec2-1-2-3-4.compute.example.com"}
    filter_scrubber = Scrubber(secrets, identities, ())
    message = (
        f"raw {secret} quoted p%40ss%3Aw%2Frd%2520%26%C3%A9%20%24%21%27 key aws-secret-key-value "
        "server ec2-1-2-3-4.compute.example.com user owner_u9x8"
    )
    assert message_of(error_body(message), filter_scrubber) == (
        "raw *** quoted *** key *** server *** user ***"
    )
    # In a text body the JSON- and HTML-escaped forms go too.
    page = f"<p>{json.dumps(secret)[1:-1]} and p@ss:w/rd%20&amp;é $!&#x27;</p>".encode()
    scrubbed = scrub_body(filter_scrubber, page)
    assert scrubbed is not None
    assert scrubbed[0] == b"<p>*** and ***</p>"


def test_short_or_missing_values_are_not_secrets() -> None:
    secrets, identities = known_values_from_environment(
        {"_MLFLOW_SERVER_FILE_STORE": "sqlite:////app/.local-data/mlflow.db", "X": "y"}
    )
    assert secrets == []
    assert identities == []
    # A three-letter password would remove "abc" from every message.
    assert scrub_body(Scrubber(["abc"], ["db"], ()), error_body("abc db here")) is None


def test_server_paths_go_api_paths_and_artifact_uris_stay() -> None:
    message = (
        "No such file: '/app/.local-data/artifacts/0/x' (file:///tmp/mlflow/a.txt), "
        'File "/usr/lib/python3/site.py", line 3. Call /api/2.0/mlflow/runs/get for '
        "mlflow-artifacts:/0/abc/artifacts or s3://bucket/usr/x, a/tmp/b, /tmpfoo, 1/2"
    )
    assert message_of(error_body(message)) == (
        "No such file: '***' (***), "
        'File "***", line 3. Call /api/2.0/mlflow/runs/get for '
        "mlflow-artifacts:/0/abc/artifacts or s3://bucket/usr/x, a/tmp/b, /tmpfoo, 1/2"
    )


def test_ordinary_errors_and_successes_pass_unchanged() -> None:
    plain = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run \'x\' not found"}'
    sent = _bodies(run_filtered(404, [plain]))
    assert sent == [plain]
    # Success bodies are never read, so also not scrubbed, and keep their chunks.
    streamed = _bodies(run_filtered(200, [b"part one ", b"(psycopg.errors.X) [SQL: stays]"]))
    assert streamed == [b"part one ", b"(psycopg.errors.X) [SQL: stays]"]


def test_a_compressed_error_body_is_left_alone() -> None:
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    body = error_body(DUPLICATE_EXPERIMENT)
    assert _bodies(run_filtered(400, [body], headers=headers)) == [body]


def test_the_log_names_the_driver_error_never_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    filter_scrubber = Scrubber(["hunter2-password"], [], ())
    message = DUPLICATE_EXPERIMENT.replace("'dup'", "'hunter2-password'")
    run_filtered(400, [error_body(message)], filter_scrubber)
    logged = capsys.readouterr().err
    assert "psycopg.errors.UniqueViolation" in logged
    assert "POST /api/2.0/mlflow/experiments/create" in logged
    for leak in ("INSERT", "hunter2-password", "duplicate key", "dup"):
        assert leak not in logged


def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))

    loop = asyncio.new_event_loop()
    try:
        app = ScrubDatabaseErrors(lifespan_app, scrubber())  # type: ignore[arg-type]
        loop.run_until_complete(app({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    finally:
        loop.close()
    assert seen == ["lifespan"]


def _bodies(sent: list[dict[str, object]]) -> list[object]:
    return [message.get("body") for message in sent if message["type"] == "http.response.body"]


READ_ONLY_WRITE = (
    "(psycopg.errors.ReadOnlySqlTransaction) cannot execute INSERT in a read-only transaction\n"
    "[SQL: INSERT INTO experiments (name, workspace) VALUES (%(name)s::VARCHAR, "
    "%(workspace)s::VARCHAR) RETURNING experiments.experiment_id]\n"
    "[parameters: {'name': 'e', 'workspace': 'default'}]\n"
    "(Background on this error at: https://sqlalche.me/e/21/2j85)"
)


def test_a_write_refused_by_the_read_only_database_answers_503_with_retry_after() -> None:
    """While a release phase upgrades the schema (MLflow answers such a refusal with 400)."""
    from mlflow_heroku_runtime.error_filter import READ_ONLY_MESSAGE, READ_ONLY_RETRY_AFTER_SECONDS

    start, body = run_filtered(400, [error_body(READ_ONLY_WRITE, "BAD_REQUEST")])
    assert start["status"] == 503
    assert json.loads(body["body"]) == {  # type: ignore[arg-type]
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": READ_ONLY_MESSAGE,
    }
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"retry-after"] == str(READ_ONLY_RETRY_AFTER_SECONDS).encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body["body"])).encode()  # type: ignore[arg-type]
    assert len(start["headers"]) == 3  # type: ignore[arg-type]


def test_only_the_drivers_read_only_error_turns_into_503() -> None:
    """A message that merely names the error (here a user's experiment name) keeps its status."""
    named = error_body(
        "Experiment 'ReadOnlySqlTransaction' does not exist", "RESOURCE_DOES_NOT_EXIST"
    )
    start, body = run_filtered(404, [named])
    assert start["status"] == 404
    assert body["body"] == named
    other = run_filtered(400, [error_body(DUPLICATE_EXPERIMENT)])[0]
    assert other["status"] == 400
