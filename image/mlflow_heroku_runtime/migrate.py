"""Child process: wait for the database (bounded), then bring MLflow's schema up to date.

Run as ``python -m mlflow_heroku_runtime.migrate`` by the supervisor with the backend URL in
``_MLFLOW_SERVER_FILE_STORE`` (the variable MLflow's server reads too) and the wait budget in
``MLFLOW_HEROKU_DB_WAIT_SECONDS``. Exit 0 when migrated, 3 when the database stayed
unreachable, 4 when the migration failed. On PostgreSQL the upgrade runs under an advisory
lock, so of every process booting on one database exactly one migrates and the others wait,
then find the schema current. Messages never contain the URL; the supervisor removes any
password from this output as from every child's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

UNREACHABLE = 3
MIGRATION_FAILED = 4
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


def _reason(error: BaseException) -> str:
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
    database's upgrade can take minutes; nginx answers 503 meanwhile)."""
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


def main() -> int:
    from .internals import BACKEND_STORE_VARIABLE

    url = os.environ[BACKEND_STORE_VARIABLE]
    where = os.environ.get("_MLFLOW_HEROKU_DB_DESCRIPTION", "the database")
    budget = float(os.environ.get("MLFLOW_HEROKU_DB_WAIT_SECONDS", "40"))

    import sqlalchemy

    # Connect first with a short timeout per attempt, so a dead host fails fast and the
    # whole wait stays within Heroku's boot window (docs/image.md, "Process layout and why").
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
    )
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        attempt += 1
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
            break
        except Exception as error:
            remaining = deadline - time.monotonic()
            log(f"database {where} unreachable (attempt {attempt}): {_reason(error)}")
            if remaining <= 0:
                log(
                    f"giving up after {budget:.0f} s (MLFLOW_HEROKU_DB_WAIT_SECONDS): check "
                    "DATABASE_URL and that the database is running"
                )
                return UNREACHABLE
            time.sleep(min(2.0, max(remaining, 0.1)))

    started = time.monotonic()
    try:
        from . import accounts, internals

        with engine.connect() as connection:
            # Held until the upgrade is done, so every other dyno (or an old and a new release
            # booting together) waits here and then finds the schema current.
            if url.startswith("postgresql"):
                hold_migration_lock(connection, where)
            if not sqlalchemy.inspect(connection).get_table_names():
                log(f"creating MLflow's tables in {where}")
            connection.commit()
            # What `mlflow db upgrade` does, by its own code (internals.py says why).
            internals.upgrade_database_schema(url)
            # Accounts mode: the auth app's schema and the people as code, by the same writer.
            accounts.migrate_and_sync(url, os.environ)
    except Exception as error:
        log(f"schema migration of {where} failed: {_reason(error)}")
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

    No time limit: migrating a large database can take minutes (nginx answers 503 meanwhile,
    and Heroku only times out the binding of $PORT), and the supervisor already stops this
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
