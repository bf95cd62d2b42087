"""Accounts mode through nginx: a login per person, checked by MLflow's basic-auth app.

One accounts-mode stack (forked workers, its own database) serves the module: the admin, an
editor and a reader from MLFLOW_HEROKU_PEOPLE. Each deliberate failed login sends its own
X-Forwarded-For client address (the stack runs as on a dyno, where the last entry is the
client), so one test's failures never meet another's rate limit.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow_heroku_runtime import internals, prepare
from mlflow_heroku_runtime.settings import load_settings

from tests.support.services import (
    ENTRYPOINT,
    PostgresCluster,
    S3Server,
    Stack,
    free_port,
    heroku_env,
    mlflow_ports_of,
    own_database,
    running_stack,
    start_stack,
)

pytestmark = pytest.mark.integration

ADMIN = ("team-admin", "admin password 1234")
EDITOR = ("ed.editor", "editor initial pw")
READER = ("rita.reader", "reader initial pw")
# How long a worker trusts a checked login here: short, so the tests can wait it out.
CACHE_SECONDS = 3
FAILURES_PER_MINUTE = 6
_addresses = itertools.count(1)


def client_address() -> str:
    """A fresh address (198.18.0.0/15, for benchmarks) for one client's X-Forwarded-For."""
    number = next(_addresses)
    return f"198.18.{number // 250}.{number % 250 + 1}"


def accounts_env(
    port: int,
    database_url: str,
    s3: S3Server,
    people: dict[str, tuple[str, str]],
    **extra: str,
) -> dict[str, str]:
    """A dyno's environment in accounts mode; ``people``: role -> (username, password)."""
    env = heroku_env(
        port=port,
        database_url=database_url,
        s3=s3,
        s3_prefix=f"accounts-{uuid.uuid4().hex[:8]}",
        MLFLOW_HEROKU_LOGIN_MODE="accounts",
        MLFLOW_AUTH_ADMIN_USERNAME=ADMIN[0],
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
        MLFLOW_HEROKU_PEOPLE=json.dumps(
            [{"username": login[0], "role": role} for role, login in people.items()]
        ),
        MLFLOW_HEROKU_PEOPLE_PASSWORDS=json.dumps(
            {login[0]: login[1] for login in people.values()}
        ),
        MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS=str(CACHE_SECONDS),
        **extra,
    )
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        del env[name]  # no shared login
    return env


@pytest.fixture(scope="module")
def stack_env(postgres: PostgresCluster, s3: S3Server) -> Iterator[dict[str, str]]:
    """The module stack's environment, on a database of its own."""
    with own_database(postgres, "accounts_stack") as (_name, database_url):
        yield accounts_env(
            free_port(),
            database_url,
            s3,
            {"editor": EDITOR, "reader": READER},
            MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE=str(FAILURES_PER_MINUTE),
        )


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], nginx_preload: Path) -> Iterator[Stack]:
    with running_stack(stack_env, ready_timeout=120) as running:
        yield running


def call(
    stack: Stack,
    method: str,
    path: str,
    login: tuple[str, str] | None = None,
    base: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    headers = {"X-Forwarded-For": client_address(), **kwargs.pop("headers", {})}
    return requests.request(
        method, (base or stack.url) + path, auth=login, headers=headers, timeout=30, **kwargs
    )


def created(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def editors_things(stack: Stack) -> dict[str, str]:
    """What the editor made: an experiment with a run, a registered model, a prompt."""
    experiment = created(
        call(stack, "POST", "/api/2.0/mlflow/experiments/create", EDITOR, json={"name": "ed-exp"})
    )["experiment_id"]
    run = created(
        call(
            stack, "POST", "/api/2.0/mlflow/runs/create", EDITOR, json={"experiment_id": experiment}
        )
    )["run"]["info"]["run_id"]
    model = "ed-model"
    created(
        call(
            stack, "POST", "/api/2.0/mlflow/registered-models/create", EDITOR, json={"name": model}
        )
    )
    prompt = "ed-prompt"
    created(
        call(
            stack,
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            EDITOR,
            json={"name": prompt, "tags": [{"key": "mlflow.prompt.is_prompt", "value": "true"}]},
        )
    )
    return {"experiment": experiment, "run": run, "model": model, "prompt": prompt}


# ----------------------------------------------------------------------------- no login


def test_health_is_open_and_answered_by_mlflow(stack: Stack) -> None:
    health = requests.get(stack.url + "/health", timeout=10)
    assert (health.status_code, health.text) == (200, "OK")
    assert requests.head(stack.url + "/health", timeout=10).status_code == 200
    assert call(stack, "POST", "/health").status_code == 403  # GET and HEAD only


# One request per route family MLflow serves: the tracking API (2.0 and 3.0, REST and the
# UI's ajax paths, through the Flask shortcut and through FastAPI), artifacts (FastAPI's
# streaming routes and Flask's), OTLP traces, the AI gateway, jobs, the assistant, MCP
# servers, the auth app's own users and roles, GraphQL, the UI's page.
ROUTE_FAMILIES = [
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=1"),
    ("POST", "/ajax-api/2.0/mlflow/runs/search"),
    ("GET", "/api/3.0/mlflow/traces/search?experiment_ids=0"),
    ("POST", "/ajax-api/3.0/mlflow/traces/search"),
    ("POST", "/api/3.0/mlflow/traces"),
    ("GET", "/api/2.0/mlflow/registered-models/search"),
    ("POST", "/api/2.0/mlflow/registered-models/create"),
    ("POST", "/ajax-api/3.0/mlflow/datasets/search"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/a.txt"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/a.txt"),
    ("PUT", "/ajax-api/2.0/mlflow-artifacts/artifacts/0/x/artifacts/a.txt"),
    ("GET", "/ajax-api/2.0/mlflow-artifacts/artifacts?path=0"),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/create/0/x/artifacts/a.bin"),
    ("GET", "/api/2.0/mlflow-artifacts/presigned/0/x/artifacts/a.bin"),
    ("GET", "/get-artifact?path=a&run_uuid=x"),
    ("GET", "/model-versions/get-artifact?path=a&name=m&version=1"),
    ("POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid=x&path=a"),
    ("POST", "/v1/traces"),
    ("POST", "/gateway/mlflow/v1/chat/completions"),
    ("POST", "/gateway/an-endpoint/mlflow/invocations"),
    ("GET", "/gateway/mlflow/v1/models"),
    ("POST", "/gateway/proxy/an-endpoint/v1/x"),
    ("POST", "/ajax-api/3.0/mlflow/gateway/secrets/create"),
    ("POST", "/ajax-api/3.0/jobs/search"),
    ("GET", "/ajax-api/3.0/jobs/a-job"),
    ("POST", "/ajax-api/3.0/jobs/"),
    ("GET", "/ajax-api/3.0/mlflow/assistant/config"),
    ("GET", "/api/3.0/mlflow/mcp-servers"),
    ("GET", "/api/2.0/mlflow/users/list"),
    ("GET", "/api/3.0/mlflow/roles/list"),
    ("POST", "/graphql"),
    ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids=x&metric_key=m"),
    ("GET", "/"),
    ("GET", "/signup"),
    ("GET", "/version"),
]


@pytest.mark.parametrize(("method", "path"), ROUTE_FAMILIES, ids=lambda x: str(x))
def test_every_route_family_refuses_anonymous_requests(
    stack: Stack, method: str, path: str
) -> None:
    for login in (None, (READER[0], "not the password"), ("nobody-here", READER[1])):
        answer = call(stack, method, path, login, headers={"Content-Type": "application/json"})
        assert answer.status_code == 401, (login, answer.text[:300])
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
        assert b'"experiments"' not in answer.content
        assert b"<!doctype html>" not in answer.content.lower()


def test_what_mlflow_serves_without_a_login(stack: Stack) -> None:
    """MLflow's own public answers: its server-info (how to talk to it, no data) and the UI's
    build under /static-files/ (the same files in every MLflow; nginx sends them)."""
    info = call(stack, "GET", "/ajax-api/3.0/mlflow/server-info")
    assert info.status_code == 200
    assert set(info.json()) <= {"store_type", "workspaces_enabled", "trace_archival_enabled"} | set(
        info.json()
    )
    assert "experiments" not in info.text
    page = call(stack, "GET", "/static-files/index.html")
    assert page.status_code == 200
    assert "<html" in page.text.lower()


def test_failed_logins_are_rate_limited_per_client_right_logins_never(stack: Stack) -> None:
    attacker = client_address()
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    with requests.Session() as session:
        codes = [
            session.get(
                stack.url + api,
                auth=(READER[0], f"guess {index}"),
                # The attacker varies the part it controls; the router appends the real one.
                headers={"X-Forwarded-For": f"10.0.0.{index}, {attacker}"},
                timeout=10,
            ).status_code
            for index in range(20)
        ]
        assert codes[:10] == [401] * 10, codes  # the burst
        assert codes.count(429) >= 8, codes
        # Someone else's right login from the same address, and the attacked person's own,
        # pass while the limit holds: only MLflow's 401 answers are counted.
        for login in (EDITOR, READER):
            right = session.get(
                stack.url + api, auth=login, headers={"X-Forwarded-For": attacker}, timeout=10
            )
            assert right.status_code == 200, right.text
        limited = session.get(
            stack.url + api, auth=(READER[0], "guess"), headers={"X-Forwarded-For": attacker}
        )
        assert limited.status_code == 429
        bystander = session.get(
            stack.url + api,
            auth=(READER[0], "guess"),
            headers={"X-Forwarded-For": client_address()},
        )
        assert bystander.status_code == 401
        assert bystander.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'


def test_the_remote_assistant_stays_refused(stack: Stack) -> None:
    """MLflow serves its Assistant only to clients on the server's own host, which it tells
    from uvicorn's client address, taken from nginx's X-Forwarded-For: the real client's
    (Heroku's last entry), whatever the client itself sends."""
    path = "/ajax-api/3.0/mlflow/assistant/providers/claude_code/health"
    faked = {
        "Forwarded": "for=127.0.0.1",
        "X-Real-IP": "127.0.0.1",
        "X-Forwarded-Host": "localhost",
    }
    for forwarded_for in ("198.51.100.9", "127.0.0.1, 198.51.100.9", "::1, 198.51.100.9"):
        for login in (ADMIN, READER):
            refused = call(
                stack, "GET", path, login, headers={**faked, "X-Forwarded-For": forwarded_for}
            )
            assert refused.status_code == 403, (forwarded_for, refused.text)
            assert "only accessible from the same host" in refused.text
    # The refusal is the client address's doing: a client on the server's own host (no
    # router in between, as in local mode) gets past it to the provider's own answer.
    local = requests.get(stack.url + path, auth=ADMIN, timeout=30)
    assert local.status_code != 403, local.text


# ----------------------------------------------------------------------------- roles


def test_the_ui_page_comes_after_the_login(stack: Stack) -> None:
    page = call(stack, "GET", "/", READER)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    me = created(call(stack, "GET", "/api/2.0/mlflow/users/current", READER))
    assert me["user"]["username"] == READER[0]
    assert me["user"]["is_admin"] is False


def test_roles_from_the_people_list(stack: Stack) -> None:
    assert created(call(stack, "GET", "/api/2.0/mlflow/users/current", ADMIN))["user"]["is_admin"]
    roles = created(call(stack, "GET", "/api/2.0/mlflow/users/list", ADMIN))
    names = {user["username"] for user in roles["users"]}
    assert {ADMIN[0], EDITOR[0], READER[0]} <= names
    # Every account may list the accounts (MLflow's roster, no secrets in it); only an admin
    # makes or changes them.
    roster = call(stack, "GET", "/api/2.0/mlflow/users/list", READER)
    assert roster.status_code == 200
    assert "password" not in roster.text
    promote = {"username": READER[0], "is_admin": True}
    assert (
        call(stack, "PATCH", "/api/2.0/mlflow/users/update-admin", READER, json=promote).status_code
        == 403
    )
    denied = call(
        stack,
        "POST",
        "/api/2.0/mlflow/users/create",
        EDITOR,
        json={"username": "editors-friend", "password": "a long password"},
    )
    assert denied.status_code == 403


def write_requests(things: dict[str, str]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """One write per route family, into what the editor made: name -> (method, path, kwargs)."""
    experiment, run, model, prompt = (things[k] for k in ("experiment", "run", "model", "prompt"))
    artifacts = f"{experiment}/{run}/artifacts"
    trace = {
        "trace": {
            "trace_info": {
                "trace_id": f"tr-{uuid.uuid4().hex}",
                "trace_location": {
                    "type": "MLFLOW_EXPERIMENT",
                    "mlflow_experiment": {"experiment_id": experiment},
                },
                "request_time": "2026-01-01T00:00:00Z",
                "execution_duration": "1s",
                "state": "OK",
            }
        }
    }
    return {
        "log a metric (shortcut to Flask)": (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"json": {"run_id": run, "key": "m", "value": 1, "timestamp": 0}},
        ),
        "log a batch (the UI's path)": (
            "POST",
            "/ajax-api/2.0/mlflow/runs/log-batch",
            {
                "json": {
                    "run_id": run,
                    "params": [{"key": f"p{uuid.uuid4().hex[:6]}", "value": "1"}],
                }
            },
        ),
        "rename the experiment": (
            "POST",
            "/api/2.0/mlflow/experiments/update",
            {"json": {"experiment_id": experiment, "new_name": f"ed-exp-{uuid.uuid4().hex[:6]}"}},
        ),
        "create a run in it": (
            "POST",
            "/api/2.0/mlflow/runs/create",
            {"json": {"experiment_id": experiment}},
        ),
        "upload an artifact (FastAPI)": (
            "PUT",
            f"/api/2.0/mlflow-artifacts/artifacts/{artifacts}/{uuid.uuid4().hex[:6]}.txt",
            {"data": b"written"},
        ),
        "upload an artifact (the UI's FastAPI path)": (
            "PUT",
            f"/ajax-api/2.0/mlflow-artifacts/artifacts/{artifacts}/{uuid.uuid4().hex[:6]}.txt",
            {"data": b"written"},
        ),
        "upload an artifact (Flask)": (
            "POST",
            f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path={uuid.uuid4().hex[:6]}.txt",
            {"data": b"written"},
        ),
        "log a model": (
            "POST",
            "/api/2.0/mlflow/logged-models",
            {"json": {"experiment_id": experiment, "name": "a-model"}},
        ),
        "start a trace (3.0 API)": ("POST", "/api/3.0/mlflow/traces", {"json": trace}),
        "send OTLP spans": (
            "POST",
            "/v1/traces",
            {
                "data": b"",
                "headers": {
                    "Content-Type": "application/x-protobuf",
                    "X-Mlflow-Experiment-Id": experiment,
                },
            },
        ),
        "update a registered model": (
            "PATCH",
            "/api/2.0/mlflow/registered-models/update",
            {"json": {"name": model, "description": "changed"}},
        ),
        "register a model version": (
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {"json": {"name": model, "source": f"runs:/{run}/model", "run_id": run}},
        ),
        "add a prompt version": (
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {
                "json": {
                    "name": prompt,
                    "source": "dummy-source",
                    "tags": [
                        {"key": "mlflow.prompt.is_prompt", "value": "true"},
                        {"key": "mlflow.prompt.text", "value": "Hello {{name}}"},
                    ],
                }
            },
        ),
        "tag a prompt": (
            "POST",
            "/api/2.0/mlflow/registered-models/set-tag",
            {"json": {"name": prompt, "key": "owner", "value": "changed"}},
        ),
    }


WRITES = list(write_requests({"experiment": "", "run": "", "model": "", "prompt": ""}))


@pytest.mark.parametrize("write", WRITES)
def test_a_reader_cannot_write_what_an_editor_can(
    stack: Stack, editors_things: dict[str, str], write: str
) -> None:
    method, path, kwargs = write_requests(editors_things)[write]
    refused = call(stack, method, path, READER, **kwargs)
    assert refused.status_code == 403, refused.text[:300]
    assert refused.text == "Permission denied"
    method, path, kwargs = write_requests(editors_things)[write]
    allowed = call(stack, method, path, EDITOR, **kwargs)
    # The editor's request passed the permission check (OTLP then wants real spans).
    assert allowed.status_code in (200, 400), allowed.text[:300]
    assert allowed.status_code == 200 or "no spans found" in allowed.text


def test_a_reader_reads_what_the_editor_made(stack: Stack, editors_things: dict[str, str]) -> None:
    run = editors_things["run"]
    assert call(stack, "GET", f"/api/2.0/mlflow/runs/get?run_id={run}", READER).status_code == 200
    model = call(
        stack,
        "GET",
        f"/api/2.0/mlflow/registered-models/get?name={editors_things['model']}",
        READER,
    )
    assert model.status_code == 200


def test_the_admin_creates_a_user_who_gets_the_default_then_a_grant(
    stack: Stack, editors_things: dict[str, str]
) -> None:
    """An account made in MLflow's REST API (as in its admin UI) logs in and holds the default
    permission (READ) on what it did not make; an experiment permission then lets it write,
    at once on every worker (a refusal is checked again on fresh grants)."""
    login = (f"dana-{uuid.uuid4().hex[:6]}", "dana's own password")
    created(
        call(
            stack,
            "POST",
            "/api/2.0/mlflow/users/create",
            ADMIN,
            json={"username": login[0], "password": login[1]},
        )
    )
    run, experiment = editors_things["run"], editors_things["experiment"]
    metric: dict[str, Any] = {"json": {"run_id": run, "key": "dana", "value": 1, "timestamp": 0}}
    first, second = (f"http://127.0.0.1:{port}" for port in mlflow_ports_of(stack))
    for worker in (first, second):
        reading = call(stack, "GET", f"/api/2.0/mlflow/runs/get?run_id={run}", login, base=worker)
        assert reading.status_code == 200
        writing = call(
            stack, "POST", "/api/2.0/mlflow/runs/log-metric", login, base=worker, **metric
        )
        assert writing.status_code == 403
    grant = {
        "username": login[0],
        "resource_type": "experiment",
        "resource_id": experiment,
        "permission": "EDIT",
    }
    created(
        call(
            stack, "POST", "/api/3.0/mlflow/users/permissions/grant", ADMIN, base=first, json=grant
        )
    )
    for worker in (first, second):
        writing = call(
            stack, "POST", "/api/2.0/mlflow/runs/log-metric", login, base=worker, **metric
        )
        assert writing.status_code == 200, writing.text
    # Through nginx, whichever worker answers.
    assert call(stack, "POST", "/api/2.0/mlflow/runs/log-metric", login, **metric).ok


def test_a_password_change_works(stack: Stack) -> None:
    login = (f"pat-{uuid.uuid4().hex[:6]}", "pat's first password")
    created(
        call(
            stack,
            "POST",
            "/api/2.0/mlflow/users/create",
            ADMIN,
            json={"username": login[0], "password": login[1]},
        )
    )
    assert call(stack, "GET", "/api/2.0/mlflow/users/current", login).status_code == 200
    new_password = "pat's second password"
    created(
        call(
            stack,
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            login,
            json={"username": login[0], "password": new_password, "current_password": login[1]},
        )
    )
    assert call(stack, "GET", "/api/2.0/mlflow/users/current", (login[0], new_password)).ok
    time.sleep(CACHE_SECONDS + 0.5)  # the other worker may trust the old one until then
    for _ in range(4):  # both workers
        assert call(stack, "GET", "/api/2.0/mlflow/users/current", login).status_code == 401


def test_what_a_removed_account_can_do_while_a_worker_trusts_its_login(
    stack: Stack, editors_things: dict[str, str]
) -> None:
    """The credential cache (MLflow's) and the account and grants cache (the runtime's) live in
    each worker: the worker that deletes an account refuses it at once; another worker that
    checked its login shortly before still serves it as before, its grants too, for at most the
    cache's time, and refuses it after that."""
    login = (f"gone-{uuid.uuid4().hex[:6]}", "soon to be removed")
    created(
        call(
            stack,
            "POST",
            "/api/2.0/mlflow/users/create",
            ADMIN,
            json={"username": login[0], "password": login[1]},
        )
    )
    grant = {
        "username": login[0],
        "resource_type": "experiment",
        "resource_id": editors_things["experiment"],
        "permission": "EDIT",
    }
    created(call(stack, "POST", "/api/3.0/mlflow/users/permissions/grant", ADMIN, json=grant))
    first, second = (f"http://127.0.0.1:{port}" for port in mlflow_ports_of(stack))
    read = ("GET", f"/api/2.0/mlflow/runs/get?run_id={editors_things['run']}")
    metric = {"run_id": editors_things["run"], "key": "gone", "value": 1, "timestamp": 0}
    write: tuple[str, str, dict[str, Any]] = (
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        {"json": metric},
    )
    for worker in (first, second):  # each worker checks (and caches) the login
        assert call(stack, *read, login, base=worker).status_code == 200
        assert call(stack, write[0], write[1], login, base=worker, **write[2]).status_code == 200
    deleted = call(
        stack,
        "DELETE",
        "/api/2.0/mlflow/users/delete",
        ADMIN,
        base=first,
        json={"username": login[0]},
    )
    assert deleted.status_code == 200, deleted.text
    assert call(stack, *read, login, base=first).status_code == 401
    assert call(stack, *read, login, base=second).status_code == 200
    assert call(stack, write[0], write[1], login, base=second, **write[2]).status_code == 200
    time.sleep(CACHE_SECONDS + 0.5)
    assert call(stack, *read, login, base=second).status_code == 401


# ----------------------------------------------------------------------------- the shortcut

SHORTCUT_PROBE = """
import asyncio, base64, json, sys
sys.path.insert(0, sys.argv[1])
import uvicorn  # loaded before MLflow, as on the dyno
from mlflow_heroku_runtime import asgi
from mlflow_heroku_runtime.flask_shortcut import FlaskShortcut

if sys.argv[2] == "without-the-auth-hooks":
    for functions in asgi.flask_app.before_request_funcs.values():
        functions[:] = [f for f in functions if not f.__module__.startswith("mlflow.server.auth")]

shortcut = asgi.shortcut
assert isinstance(shortcut, FlaskShortcut)
reached_fastapi = []

async def fastapi_sentinel(scope, receive, send):
    reached_fastapi.append(scope["path"])
    await send({"type": "http.response.start", "status": 599, "headers": []})
    await send({"type": "http.response.body", "body": b""})

shortcut.fastapi_app = fastapi_sentinel

async def call(login, body):
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if login:
        token = base64.b64encode(login.encode()).decode()
        headers.append((b"authorization", f"Basic {token}".encode()))
    path = "/api/2.0/mlflow/runs/log-metric"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 5000), "state": {}}
    messages, sent = [], False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
    async def send(message):
        messages.append(message)
    await asyncio.wait_for(asgi.app(scope, receive, send), 60)
    return next(m for m in messages if m["type"] == "http.response.start")["status"]

async def main():
    body = json.dumps({"run_id": sys.argv[3], "key": "probe", "value": 1, "timestamp": 0}).encode()
    print(json.dumps({
        "anonymous": await call(None, body),
        "reader": await call(sys.argv[4], body),
        "editor": await call(sys.argv[5], body),
        "reached_fastapi": reached_fastapi,
    }))

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["as-on-the-dyno", "without-the-auth-hooks"])
def test_the_flask_shortcut_runs_the_auth_apps_checks(
    stack_env: dict[str, str], editors_things: dict[str, str], tmp_path: Path, mode: str
) -> None:
    """The tracking API goes straight to Flask (FlaskShortcut), past MLflow's FastAPI app and
    its permission middleware: the login and permission checks the auth app hooks into Flask
    itself run there. Without those hooks the same requests would pass. (The app is imported
    as a worker imports it, on the module stack's database, with the settings' environment.)"""
    settings = prepare.write_auth_config(load_settings(stack_env), tmp_path)
    env = {
        **os.environ,
        **settings.mlflow_env,
        **internals.mlflow_server_environment(
            settings.backend_store_uri, str(tmp_path / "artifacts"), uuid.uuid4().hex
        ),
    }
    for name in ("_MLFLOW_HEROKU_MIGRATED_FLAG", "_MLFLOW_HEROKU_FORKED_WORKERS"):
        env.pop(name, None)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            SHORTCUT_PROBE,
            str(ENTRYPOINT.parent),
            mode,
            editors_things["run"],
            ":".join(READER),
            ":".join(EDITOR),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert seen["reached_fastapi"] == []  # every request took the shortcut
    if mode == "as-on-the-dyno":
        assert (seen["anonymous"], seen["reader"], seen["editor"]) == (401, 403, 200)
    else:
        assert (seen["anonymous"], seen["reader"], seen["editor"]) == (200, 200, 200)


# ----------------------------------------------------------------------------- releases


def test_a_removed_person_is_refused_after_the_next_release(
    postgres: PostgresCluster, s3: S3Server, nginx_preload: Path
) -> None:
    """People as code on uvicorn alone (WEB_CONCURRENCY=1): the list at each start is what
    the migration step makes of the accounts; the admin's password follows its variable."""
    extra = {"WEB_CONCURRENCY": "1"}
    with own_database(postgres, "accounts_release") as (_name, database_url):
        port = free_port()
        first = accounts_env(port, database_url, s3, {"editor": EDITOR, "reader": READER}, **extra)
        with running_stack(first, ready_timeout=120) as stack:
            assert call(stack, "GET", "/api/2.0/mlflow/users/current", READER).ok
            assert "accounts: created the account rita.reader (reader)" in stack.output()
        rotated = ("team-admin", "the admin password, rotated")
        second = {
            **accounts_env(port, database_url, s3, {"editor": EDITOR}, **extra),
            "MLFLOW_AUTH_ADMIN_PASSWORD": rotated[1],
        }
        with running_stack(second, ready_timeout=120) as stack:
            assert call(stack, "GET", "/api/2.0/mlflow/users/current", READER).status_code == 401
            assert call(stack, "GET", "/api/2.0/mlflow/users/current", EDITOR).ok
            assert call(stack, "GET", "/api/2.0/mlflow/users/list", rotated).ok
            assert call(stack, "GET", "/api/2.0/mlflow/users/current", ADMIN).status_code == 401
            output = stack.output()
            assert "accounts: removed the account rita.reader" in output
            assert "the admin account team-admin was given MLFLOW_AUTH_ADMIN_PASSWORD" in output
            for secret in (ADMIN[1], rotated[1], EDITOR[1], READER[1], "test-kek-passphrase"):
                assert secret not in output


def test_bad_accounts_settings_stop_the_start_with_their_names(
    postgres: PostgresCluster, s3: S3Server
) -> None:
    env = accounts_env(free_port(), postgres.url, s3, {"editor": EDITOR, "reader": READER})
    env["MLFLOW_HEROKU_DEFAULT_PERMISSION"] = "EDIT"
    del env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    del env["MLFLOW_CRYPTO_KEK_PASSPHRASE"]
    stack = start_stack(env, wait_ready=False)
    try:
        assert stack.process.wait(60) == 2
    finally:
        stack.stop()
    output = stack.output()
    assert "configuration error: MLFLOW_AUTH_ADMIN_PASSWORD is not set" in output
    assert "configuration error: MLFLOW_HEROKU_DEFAULT_PERMISSION=EDIT would let" in output
    assert "configuration error: MLFLOW_CRYPTO_KEK_PASSPHRASE is not set" in output
    for secret in (EDITOR[1], READER[1]):
        assert secret not in output
