"""User errors answered by the stack as stock MLflow answers them, minus only what could leak.

Stock ``mlflow server`` (the pinned MLflow, its own database in the session's PostgreSQL
cluster, the same S3 server) and the shared stack get the same requests. Where stock's
message carries SQLAlchemy's text (the driver's class, DETAIL, the SQL and its parameters),
ours is stock's with that text reduced to the driver's first line; every other answer is
stock's, byte for byte once the run IDs are aligned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.services import LOOPBACK, PostgresCluster, S3Server, Stack, free_port

pytestmark = pytest.mark.integration
API = "/api/2.0/mlflow"
# SQLAlchemy's only note before a driver error (an autoflush that failed).
AUTOFLUSH_NOTE = (
    "(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
    "block if this flush is occurring prematurely)"
)
LEAKS = (
    "[SQL:",
    "[parameters:",
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DETAIL:",
    "psycopg",
    "sqlalchemy",
    "postgresql://",
    "postgres://",
    "postgres_owner",  # the cluster's user (tests/support/services.py)
    "/tmp/",
)
SESSION = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Server:
    url: str
    auth: requests.auth.AuthBase | None
    run_id: str  # an active run in an experiment of its own


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # under /api/2.0/mlflow unless it starts with "/"; {name} and {run} filled in
    body: Any = None


@dataclass(frozen=True)
class Case:
    calls: tuple[Call, ...]  # the last one's answer is compared; earlier ones set it up
    database_text: bool  # stock's message carries SQLAlchemy's text


NUL = "\x00"
CASES = {
    # Stock answers with SQLAlchemy's text.
    "duplicate experiment name": Case(
        (
            Call("POST", "experiments/create", {"name": "{name}"}),
            Call("POST", "experiments/create", {"name": "{name}"}),
        ),
        database_text=True,
    ),
    "experiment renamed to an existing name": Case(
        (
            Call("POST", "experiments/create", {"name": "{name}"}),
            Call(
                "POST",
                "experiments/update",
                {"experiment_id": "{experiment}", "new_name": "{name}"},
            ),
        ),
        database_text=True,
    ),
    "registered model renamed to an existing name": Case(
        (
            Call("POST", "registered-models/create", {"name": "{name}"}),
            Call("POST", "registered-models/create", {"name": "{name}-2"}),
            Call("POST", "registered-models/rename", {"name": "{name}-2", "new_name": "{name}"}),
        ),
        database_text=True,
    ),
    "experiment id out of the integer range": Case(
        (Call("GET", "experiments/get?experiment_id=99999999999999999999"),),
        database_text=True,
    ),
    "run created in an experiment id out of range": Case(
        (Call("POST", "runs/create", {"experiment_id": "99999999999999999999"}),),
        database_text=True,
    ),
    "runs searched in an experiment id out of range": Case(
        (Call("POST", "runs/search", {"experiment_ids": ["99999999999999999999"]}),),
        database_text=True,
    ),
    "NUL in an experiment name": Case(
        (Call("POST", "experiments/create", {"name": f"{{name}}{NUL}x"}),), database_text=True
    ),
    "NUL in a tag value": Case(
        (Call("POST", "runs/set-tag", {"run_id": "{run}", "key": "t", "value": f"a{NUL}b"}),),
        database_text=True,
    ),
    "NUL in a run name (after SQLAlchemy's autoflush note)": Case(
        (Call("POST", "runs/update", {"run_id": "{run}", "run_name": f"n{NUL}"}),),
        database_text=True,
    ),
    # Stock answers without it: ours must be the same.
    "duplicate registered model": Case(
        (
            Call("POST", "registered-models/create", {"name": "{name}"}),
            Call("POST", "registered-models/create", {"name": "{name}"}),
        ),
        database_text=False,
    ),
    "unknown run id": Case((Call("GET", f"runs/get?run_id={'0' * 32}"),), database_text=False),
    "malformed run id": Case((Call("GET", "runs/get?run_id=' OR 1=1 --"),), database_text=False),
    "param value of the wrong type": Case(
        (Call("POST", "runs/log-parameter", {"run_id": "{run}", "key": "p", "value": 1}),),
        database_text=False,
    ),
    "too long param value (truncated)": Case(
        (Call("POST", "runs/log-parameter", {"run_id": "{run}", "key": "l", "value": "v" * 9000}),),
        database_text=False,
    ),
    "too long param key": Case(
        (Call("POST", "runs/log-parameter", {"run_id": "{run}", "key": "k" * 300, "value": "v"}),),
        database_text=False,
    ),
    "changed param value": Case(
        (
            Call("POST", "runs/log-parameter", {"run_id": "{run}", "key": "q", "value": "a"}),
            Call("POST", "runs/log-parameter", {"run_id": "{run}", "key": "q", "value": "b"}),
        ),
        database_text=False,
    ),
    "duplicate param keys in a batch": Case(
        (
            Call(
                "POST",
                "runs/log-batch",
                {
                    "run_id": "{run}",
                    "params": [{"key": "z", "value": "1"}, {"key": "z", "value": "2"}],
                },
            ),
        ),
        database_text=False,
    ),
    "metric with a NaN key": Case(
        (
            Call(
                "POST",
                "runs/log-metric",
                {"run_id": "{run}", "key": float("nan"), "value": 1, "timestamp": 1},
            ),
        ),
        database_text=False,
    ),
    "metric value not a number": Case(
        (
            Call(
                "POST",
                "runs/log-metric",
                {"run_id": "{run}", "key": "m", "value": "abc", "timestamp": 1},
            ),
        ),
        database_text=False,
    ),
    "search filter with OR": Case(
        (
            Call(
                "POST",
                "runs/search",
                {"experiment_ids": ["0"], "filter": "attributes.status = 'x' OR 1=1"},
            ),
        ),
        database_text=False,
    ),
    "search order_by that does not parse": Case(
        (
            Call(
                "POST",
                "runs/search",
                {"experiment_ids": ["0"], "order_by": ["metrics.x DESC NULLS"]},
            ),
        ),
        database_text=False,
    ),
    "search page token that does not decode": Case(
        (Call("POST", "runs/search", {"experiment_ids": ["0"], "page_token": "garbage"}),),
        database_text=False,
    ),
    "restoring a run that is not deleted": Case(
        (Call("POST", "runs/restore", {"run_id": "{run}"}),), database_text=False
    ),
    "experiment name too long": Case(
        (Call("POST", "experiments/create", {"name": "x" * 100_000}),), database_text=False
    ),
    "missing experiment name": Case((Call("POST", "experiments/create", {}),), database_text=False),
    "experiment id that is not a number": Case(
        (Call("GET", "experiments/get?experiment_id=1;DROP TABLE runs"),), database_text=False
    ),
    "unknown registered model": Case(
        (Call("GET", "registered-models/get?name={name}"),), database_text=False
    ),
    "unknown trace (FastAPI route)": Case(
        (Call("GET", "/ajax-api/3.0/mlflow/traces/tr-{name}"),), database_text=False
    ),
    "unknown route (HTML)": Case((Call("GET", "nonexistent"),), database_text=False),
    "wrong method (HTML)": Case((Call("DELETE", "experiments/create"),), database_text=False),
}


def _fill(value: Any, fields: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in fields.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_fill(item, fields) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, fields) for key, item in value.items()}
    return value


def _send(server: Server, call: Call, fields: dict[str, str]) -> requests.Response:
    path = _fill(call.path, fields)
    url = server.url + (path if path.startswith("/") else f"{API}/{path}")
    # NaN and NUL are sent as MLflow's clients would (json.dumps allows NaN).
    data = None if call.body is None else json.dumps(_fill(call.body, fields))
    return requests.request(
        call.method,
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        auth=server.auth,
        timeout=60,
    )


def _answer(server: Server, case_id: str, case: Case) -> tuple[int, str]:
    """Status and body of the case's last call, the server's run ID written as <run>."""
    name = f"errors-{SESSION}-{list(CASES).index(case_id)}"
    experiment = _send(server, Call("POST", "experiments/create", {"name": f"{name}-own"}), {})
    fields = {"name": name, "run": server.run_id, "experiment": experiment.json()["experiment_id"]}
    for call in case.calls[:-1]:
        setup = _send(server, call, fields)
        assert setup.status_code == 200, (call, setup.text[:500])
    answer = _send(server, case.calls[-1], fields)
    return answer.status_code, answer.text.replace(server.run_id, "<run>")


def _new_run(url: str, auth: requests.auth.AuthBase | None) -> str:
    name = f"errors-{SESSION}-runs"
    created = requests.post(
        f"{url}{API}/experiments/create", json={"name": name}, auth=auth, timeout=30
    )
    if created.status_code == 200:
        experiment_id = created.json()["experiment_id"]
    else:
        found = requests.get(
            f"{url}{API}/experiments/get-by-name",
            params={"experiment_name": name},
            auth=auth,
            timeout=30,
        )
        experiment_id = found.json()["experiment"]["experiment_id"]
    run = requests.post(
        f"{url}{API}/runs/create", json={"experiment_id": experiment_id}, auth=auth, timeout=30
    )
    run_id: str = run.json()["run"]["info"]["run_id"]
    return run_id


@contextlib.contextmanager
def _database(postgres: PostgresCluster, name: str) -> Iterator[str]:
    """A database of its own in the session's cluster: its SQLAlchemy URL."""
    import psycopg

    def admin() -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=LOOPBACK,
            port=postgres.port,
            user=postgres.user,
            password=postgres.password,
            dbname="postgres",
            autocommit=True,
        )

    with admin() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        password = urllib.parse.quote(postgres.password, safe="")
        yield f"postgresql+psycopg://{postgres.user}:{password}@{LOOPBACK}:{postgres.port}/{name}"
    finally:
        with admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stock(postgres: PostgresCluster, s3: S3Server) -> Iterator[Server]:
    """Stock ``mlflow server`` of the pinned MLflow, as its documentation runs it."""
    port = free_port()
    with (
        _database(postgres, f"stock_errors_{SESSION}") as database_uri,
        tempfile.TemporaryFile() as output,
    ):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tempfile.gettempdir(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": s3.region,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
        }
        argv = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            database_uri,
            "--artifacts-destination",
            f"s3://{s3.bucket}/stock-errors",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        process = subprocess.Popen(
            argv, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://{LOOPBACK}:{port}"
            _wait_healthy(url, process, output)
            yield Server(url, None, _new_run(url, None))
        finally:
            _stop(process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], output: Any) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    output.seek(0)
    raise RuntimeError(
        f"stock mlflow server did not start:\n{output.read().decode(errors='replace')}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group (uvicorn and its worker), SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


@pytest.fixture(scope="module")
def ours(stack: Stack) -> Server:
    return Server(stack.url, stack.auth, _new_run(stack.url, stack.auth))


def stock_without_database_text(message: str) -> str:
    """Stock's message with SQLAlchemy's text reduced to the driver's first line: its note,
    the driver's class in parentheses, and every line after the first go."""
    head, marker, driver_error = message.partition("(psycopg.")
    assert marker, f"no driver error in {message!r}"
    head = head.removesuffix(AUTOFLUSH_NOTE + "\n")
    first_line = driver_error.split(") ", 1)[1].split("\n", 1)[0]
    return head + first_line


@pytest.mark.parametrize("case_id", list(CASES))
def test_user_errors_read_as_stock_mlflows_minus_what_could_leak(
    case_id: str, stock: Server, ours: Server, postgres: PostgresCluster, s3: S3Server
) -> None:
    case = CASES[case_id]
    stock_status, stock_text = _answer(stock, case_id, case)
    our_status, our_text = _answer(ours, case_id, case)
    assert our_status == stock_status, (stock_text[:500], our_text[:500])
    assert ("[SQL: " in stock_text) == case.database_text, stock_text[:1000]
    for leak in (*LEAKS, postgres.password, s3.secret_key):
        assert leak not in our_text, (leak, our_text[:1000])
    if not case.database_text:
        assert our_text == stock_text
        return
    stock_body, our_body = json.loads(stock_text), json.loads(our_text)
    assert our_body["message"] == stock_without_database_text(stock_body["message"])
    assert {**our_body, "message": None} == {**stock_body, "message": None}


def test_the_log_names_the_driver_error_only(ours: Server, stack: Stack) -> None:
    name = f"errors-{SESSION}-logged"
    for _ in range(2):
        requests.post(
            f"{ours.url}{API}/experiments/create", json={"name": name}, auth=ours.auth, timeout=30
        )
    line = (
        "removed database error details from an error response to POST "
        f"{API}/experiments/create (psycopg.errors.UniqueViolation)"
    )
    output = stack.wait_for_output(line)
    assert line in output
    assert "[SQL: " not in output
    assert f"(workspace, name)=(default, {name})" not in output
