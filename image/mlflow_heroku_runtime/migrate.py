"""Child process: wait for the database (bounded), then bring MLflow's schema up to date.

Run as ``python -m mlflow_heroku_runtime.migrate`` by the supervisor with the backend URL in
``_MLFLOW_SERVER_FILE_STORE`` (the variable MLflow's server reads too) and the wait budget in
``MLFLOW_HEROKU_DB_WAIT_SECONDS``. Exit 0 when migrated, 3 when the database stayed
unreachable, 4 when the migration failed or the schema is newer than this image's, 5 when a
web dyno found a schema to upgrade (the release phase does that: release_phase.py). On
PostgreSQL every step runs under an advisory lock, so of every process on one database
(dynos booting, release phases) exactly one migrates and the others wait, then find the
schema current. Messages never contain the URL; the supervisor removes any password from
this output as from every child's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

UNREACHABLE = 3
MIGRATION_FAILED = 4
RELEASE_PHASE_MIGRATES = 5
# pg_advisory_lock's key for "MLflow's schema in this database is being migrated": any fixed
# 64-bit number other software on the database would not pick (these are "mlflowhk" in ASCII).
MIGRATION_LOCK_KEY = 0x6D6C666C6F77686B
LOCK_POLL_SECONDS = 0.5
LOCK_LOG_SECONDS = 10.0
# Set by the supervisor for MLflow's uvicorn: the file it creates once the schema is current,
# and its own process id.
MIGRATED_FLAG_VARIABLE = "_MLFLOW_HEROKU_MIGRATED_FLAG"
SUPERVISOR_PID_VARIABLE = "_MLFLOW_HEROKU_SUPERVISOR_PID"


def log(message: str) -> None:
    print(f"migrate: {message}", file=sys.stderr, flush=True)


def reason_of(error: BaseException) -> str:
    """The root cause's class and first line (the supervisor redacts secrets from it)."""
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(getattr(root, "orig", None) or root).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(root).__name__}: {first}"[:300]


def hold_migration_lock(connection: Connection, where: str) -> None:
    """Take the session-level advisory lock that makes this process the schema's one writer;
    closing the connection releases it. Waits as long as another writer migrates (a large
    database's upgrade can take minutes; requests wait for MLflow meanwhile, up to nginx's
    read timeout, and /health answers 503)."""
    import sqlalchemy

    waited = time.monotonic()
    logged = 0.0
    statement = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
    while not connection.execute(statement, {"key": MIGRATION_LOCK_KEY}).scalar():
        connection.commit()
        if time.monotonic() - logged >= LOCK_LOG_SECONDS:
            logged = time.monotonic()
            log(
                f"waiting for another process's migration of {where} (PostgreSQL advisory lock "
                f"{MIGRATION_LOCK_KEY}, {logged - waited:.0f} s so far)"
            )
        time.sleep(LOCK_POLL_SECONDS)
    connection.commit()  # a session-level lock outlives the transaction; no snapshot is kept


@dataclass(frozen=True)
class SchemaState:
    """Where a database's MLflow schema stands against this image's MLflow."""

    revision: str | None  # the database's Alembic revision; None before MLflow's first run
    head: str  # the installed MLflow's newest revision
    known: bool  # the revision is one of the installed MLflow's migrations
    empty: bool  # no MLflow table yet (Alembic's own bookkeeping table does not count)

    @property
    def at_head(self) -> bool:
        return not self.empty and self.revision == self.head

    @property
    def ahead(self) -> bool:
        """Migrated by a newer MLflow: this image cannot serve it, nor migrate it back."""
        return not self.empty and self.revision is not None and not self.known

    @property
    def behind(self) -> bool:
        return not (self.empty or self.at_head or self.ahead)


def schema_state(connection: Connection) -> SchemaState:
    """Read the database's revision (Alembic's public API) and compare it with the installed
    MLflow's migrations."""
    import sqlalchemy
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from . import internals

    tables = sqlalchemy.inspect(connection).get_table_names()
    # MLflow's own test for "empty" (mlflow.store.db.utils._is_empty_database): a failed
    # first run may leave only Alembic's table behind.
    empty = all(name.startswith("alembic_") for name in tables)
    revision = MigrationContext.configure(connection).get_current_revision()
    scripts = ScriptDirectory(str(internals.mlflow_migrations_directory()))
    (head,) = scripts.get_heads()  # MLflow's history is linear (internals.py checks it)
    try:
        known = revision is not None and scripts.get_revision(revision) is not None
    except CommandError:  # "No such revision": written by a newer MLflow (or by hand)
        known = False
    return SchemaState(revision, head, known, empty)


def newer_schema_message(state: SchemaState, where: str) -> str:
    """What to do when the database was migrated by a newer release than this image."""
    import importlib.metadata

    version = importlib.metadata.version("mlflow")
    return (
        f"{where} is at schema revision {state.revision}, which this image's MLflow {version} "
        f"(newest revision {state.head}) does not know: a newer release migrated it. Release "
        "the newer image again, or restore the backup taken before that upgrade "
        '(docs/operations.md, "Upgrading MLflow")'
    )


def migrate_schemas(url: str) -> None:
    """Bring every schema this image owns to its newest revision: MLflow's tracking schema
    (tables created in an empty database) and, in accounts mode, the auth app's schema and the
    people as code. The caller holds the migration lock, so every schema has the same writer."""
    from . import accounts, internals

    # What `mlflow db upgrade` does, by its own code (internals.py says why).
    internals.upgrade_database_schema(url)
    accounts.migrate_and_sync(url, os.environ)


def connect_engine(url: str, connect_timeout: int = 5, **connect_args: object) -> Engine:
    """An engine without a pool (each connection is closed after use), whose PostgreSQL
    connections fail fast on a dead host."""
    import sqlalchemy

    arguments = dict(connect_args)
    if url.startswith("postgresql"):
        arguments.setdefault("connect_timeout", connect_timeout)
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=arguments)


def wait_for_database(engine: Engine, where: str, budget: float) -> bool:
    """True once a connection succeeds; False after ``budget`` seconds of failures (each
    logged with its reason)."""
    import sqlalchemy

    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        attempt += 1
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
            return True
        except Exception as error:
            remaining = deadline - time.monotonic()
            log(f"database {where} unreachable (attempt {attempt}): {reason_of(error)}")
            if remaining <= 0:
                log(
                    f"giving up after {budget:.0f} s (MLFLOW_HEROKU_DB_WAIT_SECONDS): check "
                    "DATABASE_URL and that the database is running"
                )
                return False
            time.sleep(min(2.0, max(remaining, 0.1)))


def on_heroku_dyno(environ: Mapping[str, str]) -> bool:
    """Heroku sets DYNO in every dyno (web.1, run.4821, release.9768); local runs have none."""
    return bool(environ.get("DYNO"))


def main() -> int:
    from .internals import BACKEND_STORE_VARIABLE

    url = os.environ[BACKEND_STORE_VARIABLE]
    where = os.environ.get("_MLFLOW_HEROKU_DB_DESCRIPTION", "the database")
    budget = float(os.environ.get("MLFLOW_HEROKU_DB_WAIT_SECONDS", "40"))

    # Connect first with a short timeout per attempt, so a dead host fails fast and the
    # whole wait stays within Heroku's boot window (docs/image.md, "Process layout and why").
    engine = connect_engine(url)
    if not wait_for_database(engine, where, budget):
        engine.dispose()
        return UNREACHABLE

    started = time.monotonic()
    try:
        with engine.connect() as connection:
            # Held until the upgrade is done, so every other dyno (or an old and a new release
            # booting together) waits here and then finds the schema current.
            if url.startswith("postgresql"):
                hold_migration_lock(connection, where)
            state = schema_state(connection)
            if state.ahead:
                log(newer_schema_message(state, where))
                return MIGRATION_FAILED
            if state.behind and on_heroku_dyno(os.environ):
                # Upgrading here would skip the release phase's backup and pause of writers.
                log(
                    f"{where} is at schema revision {state.revision}, this image's MLflow "
                    f"needs {state.head}: not migrating from a web dyno. The release phase "
                    "migrates: release both the web and the release process types (pulumi up "
                    "does), or run `python -m mlflow_heroku_runtime.release_phase` in a "
                    "one-off dyno (heroku run)"
                )
                return RELEASE_PHASE_MIGRATES
            if state.empty:
                log(f"creating MLflow's tables in {where}")
            connection.commit()
            migrate_schemas(url)
    except Exception as error:
        log(f"schema migration of {where} failed: {reason_of(error)}")
        return MIGRATION_FAILED
    finally:
        engine.dispose()
    log(f"schema of {where} is up to date ({time.monotonic() - started:.1f} s)")
    return 0


def _alive(pid: int) -> bool:
    """True while pid runs (Linux, like the rest of the image); a zombie (killed, not yet
    reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_migration(poll_seconds: float = 0.05) -> None:
    """Block MLflow's uvicorn (at its import of the app, before it listens) until the
    supervisor's flag file says the schema is current.

    No time limit: migrating a large database can take minutes (requests wait meanwhile and
    /health answers 503; Heroku only times out the binding of $PORT), and the supervisor
    already stops this
    process when the migration fails or the dyno stops. Only a supervisor that is gone
    (killed outright) ends the wait, so nothing waits for ever.
    """
    flag = os.environ.get(MIGRATED_FLAG_VARIABLE)
    if not flag:
        return
    supervisor = int(os.environ.get(SUPERVISOR_PID_VARIABLE) or os.getppid())
    while not Path(flag).exists():
        if not _alive(supervisor):
            raise SystemExit("mlflow: the supervisor exited before the database was migrated")
        time.sleep(poll_seconds)


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown of everything MLflow and alembic imported: uvicorn waits
    # for this exit before it may serve. (The server ends the upgrade's idle connection at EOF.)
    os._exit(status)
