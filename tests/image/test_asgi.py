"""The app module: forked workers never share a database connection with gunicorn's master."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import ENTRYPOINT, LOOPBACK, PostgresCluster

# Imports the app as gunicorn's master does (--preload, forked workers), then plays a worker:
# forks and asks for a connection there. Prints what each process saw, as JSON.
FORK_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import psycopg, sqlalchemy
from mlflow_heroku_runtime import asgi, internals

def connections_to_the_database():
    with psycopg.connect(sys.argv[2], autocommit=True) as monitor:
        return monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (sys.argv[3],)
        ).fetchone()[0]

def backend_pids(engine, count):
    # The server-side pids of `count` pooled connections held at once.
    held = [engine.connect() for _ in range(count)]
    try:
        return [c.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar() for c in held]
    finally:
        for connection in held:
            connection.close()

seen = {
    "noted": len(asgi.pooled_connections),
    "open_after_warm_up": connections_to_the_database(),
}
engine = internals.open_tracking_store().engine
# A connection the master opens after its warm-up, still pooled (idle) at the fork.
seen["parent"] = backend_pids(engine, 1)[0]
idle = engine.pool.checkedin()  # every entry of the pool, the parent's live one among them
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.write(write_end, json.dumps(backend_pids(engine, idle)).encode())
    os._exit(0)
os.close(write_end)
os.waitpid(child, 0)
seen["child"] = json.loads(os.read(read_end, 1000))
seen["parent_again"] = backend_pids(engine, idle)
print(json.dumps(seen))
"""


def accounts_mode(url: str, tmp_path: Path) -> dict[str, str]:
    """Accounts mode's worker environment on ``url``, with the migration step done."""
    from mlflow_heroku_runtime import accounts, prepare
    from mlflow_heroku_runtime.settings import load_settings

    from tests.image.runtime_values import ACCOUNTS_ENV

    accounts.migrate_and_sync(url, ACCOUNTS_ENV)
    settings = dataclasses.replace(load_settings(ACCOUNTS_ENV), backend_store_uri=url)
    return prepare.write_auth_config(settings, tmp_path).mlflow_env


@pytest.fixture
def database(postgres: PostgresCluster) -> Iterator[str]:
    """A database of its own in the session's cluster (the shared stack uses the other)."""
    import psycopg

    name = f"asgi_{uuid.uuid4().hex[:8]}"
    admin = postgres.url.replace(f"/{postgres.database}", "/postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("login_mode", ["shared", "accounts"])
def test_forked_workers_never_share_a_database_connection(
    postgres: PostgresCluster, database: str, tmp_path: Path, login_mode: str
) -> None:
    """The master closes the connections its warm-up opened before gunicorn forks, and a
    worker forgets any it inherits (one the master opened later) and opens its own; the
    master's connection keeps working after the worker used the database. In accounts mode
    the auth app's store opens its own engine in the master too."""
    password = urllib.parse.quote(postgres.password, safe="")
    url = f"postgresql+psycopg://{postgres.user}:{password}@{LOOPBACK}:{postgres.port}/{database}"
    accounts_env = accounts_mode(url, tmp_path) if login_mode == "accounts" else {}
    env = {
        **os.environ,
        "_MLFLOW_HEROKU_FORKED_WORKERS": "1",
        "_MLFLOW_SERVER_FILE_STORE": url,
        "_MLFLOW_SERVER_REGISTRY_STORE": url,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "_MLFLOW_SGI_NAME": "uvicorn",
        **accounts_env,
    }
    env.pop("_MLFLOW_HEROKU_MIGRATED_FLAG", None)
    probe = subprocess.run(
        [sys.executable, "-c", FORK_PROBE, str(ENTRYPOINT.parent), postgres.url, database],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.splitlines()[-1])
    # The warm-up did open connections (else this proves nothing); the auth store's too.
    assert seen["noted"] >= (2 if login_mode == "accounts" else 1), seen
    assert seen["open_after_warm_up"] == 0, seen  # the master closed its own
    assert seen["parent"] not in seen["child"], seen  # the worker opened its own
    assert seen["parent"] in seen["parent_again"], seen  # and left the master's working
