"""The release phase: the one place a Heroku release migrates MLflow's schema.

Heroku runs the ``release`` process type's image (this image's CMD, ``image/entrypoint.py``,
which comes here when DYNO is ``release.<N>``) in a one-off dyno before any web dyno of the new
release boots, on every release: a new image, a config var change, a rollback (not an add-on's
own config change, such as a credential rotation). A non-zero exit fails the release and the
current one keeps serving; the phase may take one hour at most
(devcenter.heroku.com/articles/release-phase). By hand: ``python -m
mlflow_heroku_runtime.release_phase`` (``heroku run`` in a one-off dyno).

Under the migration lock (migrate.py: every release phase and booting dyno waits for it) the
database's Alembic revision is compared with the installed MLflow's newest:

- at head: nothing to do (most releases: config var changes);
- an empty database (the first release): MLflow's tables are created;
- newer than this image (a rollback across a migrating release): exit 1, saying what to do;
- behind: the writers are stopped (new sessions of the database are read-only through its
  ``default_transaction_read_only``, and the other sessions are ended, so the old release's
  dynos reconnect read-only: reads work, writes answer 503, error_filter.py), a backup goes to
  S3 (backup.py), MLflow's migrations run once in a session that may write, and the database
  is made writable again whatever happened. MLflow's Alembic environment runs every pending
  migration in one transaction (mlflow/store/db_migrations/env.py: no
  ``transaction_per_migration``), and PostgreSQL's DDL is transactional, so a failed upgrade
  leaves the schema and the data as they were.

Each step logs one line; no line holds a secret or the database URL. Exit 0 when the schema
is current, 1 when it is not. Runbook: docs/operations.md, "Upgrading MLflow".
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from . import backup, migrate
from .database_url import describe, to_sqlalchemy_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection

FAILED = 1
# The release phase's own sessions: they may write while the database is read-only, and
# the release phase never ends them (a second release phase waits on the lock in one).
APPLICATION_NAME = "mlflow-heroku release phase"
WRITABLE_SESSION_OPTION = "-c default_transaction_read_only=off"
# How long pg_terminate_backend waits for each ended session to be gone (PostgreSQL >= 14).
END_SESSION_WAIT_MS = 5000
RESTORE_HINT = (
    "restore it, if you must, into an empty database with `python -m "
    'mlflow_heroku_runtime.backup restore {key}` (docs/operations.md, "Backups and restore")'
)

# The database's own default, changed for every later session (ALTER DATABASE needs its
# owner, which Heroku's default credential is). Run as one statement that quotes the name.
SET_READ_ONLY = (
    "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', "
    "current_database()); END$$"
)
RESET_READ_ONLY = (
    "DO $$BEGIN EXECUTE format('ALTER DATABASE %I RESET default_transaction_read_only', "
    "current_database()); END$$"
)
IS_READ_ONLY = """
SELECT coalesce(bool_or(setting = 'default_transaction_read_only=on'), false)
FROM pg_db_role_setting, unnest(setconfig) AS setting
WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# Every other client session of this database, except release phases'. PostgreSQL lets a
# role end the sessions of roles whose privileges it has (the same role, on Heroku: every
# dyno connects with DATABASE_URL's credential), never a superuser's (signalfuncs.c,
# pg_signal_backend); the others are counted, not ended. CASE keeps the order: only a session
# that may be ended is signalled.
END_OTHER_SESSIONS = """
WITH other AS (
    SELECT a.pid,
           pg_has_role(a.usesysid, 'USAGE')
           AND (NOT r.rolsuper OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
           AS endable
    FROM pg_stat_activity AS a JOIN pg_roles AS r ON r.oid = a.usesysid
    WHERE a.datname = current_database()
      AND a.pid <> pg_backend_pid()
      AND a.backend_type = 'client backend'
      AND coalesce(a.application_name, '') <> :ours
)
SELECT count(*) FILTER (WHERE CASE WHEN endable THEN pg_terminate_backend(pid, :wait_ms)
                                   ELSE false END),
       count(*) FILTER (WHERE NOT endable)
FROM other
"""


def log(message: str) -> None:
    print(f"release phase: {message}", file=sys.stderr, flush=True)


class StoppedError(Exception):
    """SIGTERM from the dyno manager (the phase's hour is up, or the release was cancelled)."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StoppedError("stopped by SIGTERM")


def writable_url(url: URL) -> URL:
    """The database URL whose sessions may write while the database is read-only, named as the
    release phase's (MLflow's upgrade opens its own engine from it)."""
    given = url.query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else given
    options = " ".join(filter(None, [given, WRITABLE_SESSION_OPTION]))
    return url.update_query_dict({"options": options, "application_name": APPLICATION_NAME})


def backup_label(state: migrate.SchemaState) -> str:
    """``pre-upgrade-<from>-to-<to>`` within backup.py's label rules (a-z 0-9 . -, 63 at most)."""
    label = f"pre-upgrade-{state.revision}-to-{state.head}".lower()
    cleaned = "".join(c if c.isalnum() or c in ".-" else "-" for c in label)
    return cleaned[:63]


def database_is_read_only(control: Connection) -> bool:
    import sqlalchemy

    return bool(control.execute(sqlalchemy.text(IS_READ_ONLY)).scalar())


def set_read_only(control: Connection, read_only: bool) -> None:
    import sqlalchemy

    control.execute(sqlalchemy.text(SET_READ_ONLY if read_only else RESET_READ_ONLY))


def end_other_sessions(control: Connection) -> tuple[int, int]:
    """(sessions ended, sessions of other roles left running)."""
    import sqlalchemy

    row = control.execute(
        sqlalchemy.text(END_OTHER_SESSIONS),
        {"ours": APPLICATION_NAME, "wait_ms": END_SESSION_WAIT_MS},
    ).one()
    return int(row[0]), int(row[1])


@contextmanager
def writers_stopped(control: Connection, where: str) -> Iterator[None]:
    """New sessions read-only and the others ended for the body; writable again afterwards,
    also when the body failed (then the sessions opened meanwhile, read-only for their whole
    life, are ended too, so the release that keeps serving writes again)."""
    paused = time.monotonic()
    set_read_only(control, True)
    log(f"writes paused: new sessions of {where} are read-only")
    try:
        ended, others = end_other_sessions(control)
        left = f"; {others} session(s) of other roles cannot be ended and may write" * bool(others)
        log(f"ended {ended} other session(s); the old release reconnects read-only{left}")
        yield
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nothing may cut the reset short
        _make_writable(control, where, paused)
        try:
            ended, _others = end_other_sessions(control)
        except Exception as error:
            log(f"could not end the read-only sessions ({migrate.reason_of(error)}): the old "
                "release writes again once its connections are renewed")  # fmt: skip
        else:
            log(f"ended {ended} read-only session(s): the old release writes again")
        raise
    # Success: the old release's sessions stay read-only; its dynos are being replaced by
    # the new release's, which connect writable to the migrated schema.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _make_writable(control, where, paused)


def _make_writable(control: Connection, where: str, paused: float) -> None:
    try:
        set_read_only(control, False)
    except Exception as error:
        log(
            f"could not make {where} writable again ({migrate.reason_of(error)}): writes fail "
            "until the next release phase does it, or `heroku pg:psql` runs ALTER DATABASE "
            "<name> RESET default_transaction_read_only"
        )
        raise
    log(f"writes resumed: {where} is writable again (paused {time.monotonic() - paused:.1f} s)")


def upgrade(
    control: Connection,
    state: migrate.SchemaState,
    url: URL,
    environ: Mapping[str, str],
    where: str,
    now: datetime.datetime,
) -> int:
    """Stop the writers, back up, migrate once, resume the writers (module docstring)."""
    import mlflow.db  # noqa: F401  (imported before the pause, which then holds only the work)

    key = None
    migrated = False
    try:
        with writers_stopped(control, where):
            key = backup.create(environ, backup_label(state), now)
            log(f"migrating {where} from revision {state.revision} to {state.head}")
            started = time.monotonic()
            migrate.migrate_schemas(url.render_as_string(hide_password=False))
            migrated = True
            log(f"schema at revision {state.head} ({time.monotonic() - started:.1f} s)")
    except Exception as error:
        reason = str(error) if isinstance(error, backup.BackupError) else migrate.reason_of(error)
        if migrated:  # only making the database writable again failed (logged above)
            log(f"FAILED after migrating to {state.head}: {reason}")
        elif key is None:
            log(
                f"FAILED before migrating: {reason}. Nothing was migrated; the current release "
                "keeps serving. Fix it and release again"
            )
        else:
            backup_uri = f"s3://{backup.backup_target(environ).bucket}/{key}"
            log(
                f"FAILED: the migration from {state.revision} to {state.head} failed: {reason}. "
                "It ran in one transaction, so the schema and the data are as they were; the "
                f"current release keeps serving. The backup taken before it is {backup_uri}: "
                + RESTORE_HINT.format(key=key)
            )
        return FAILED
    return 0


def main(environ: Mapping[str, str] = os.environ, now: datetime.datetime | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(environ, now or datetime.datetime.now(datetime.UTC))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(environ: Mapping[str, str], now: datetime.datetime) -> int:
    started = time.monotonic()
    try:
        url = writable_url(to_sqlalchemy_url(environ.get("DATABASE_URL", "")))
    except ValueError as error:
        log(f"FAILED: {error}")
        return FAILED
    where = describe(url)
    budget = float(environ.get("MLFLOW_HEROKU_DB_WAIT_SECONDS", "40"))
    engine = migrate.connect_engine(url.render_as_string(hide_password=False), connect_timeout=10)
    try:
        if not migrate.wait_for_database(engine, where, budget):
            return FAILED
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as control:
            migrate.hold_migration_lock(control, where)
            if database_is_read_only(control):
                set_read_only(control, False)
                log(f"{where} was left read-only by a release phase that was stopped: reset")
            state = migrate.schema_state(control)
            version = importlib.metadata.version("mlflow")
            if state.at_head:
                took = time.monotonic() - started
                log(
                    f"{where} is at revision {state.head}, this image's MLflow {version}'s: "
                    f"no migrations; the release rolls as usual ({took:.1f} s)"
                )
                return 0
            if state.ahead:
                log(f"FAILED: {migrate.newer_schema_message(state, where)}")
                return FAILED
            if state.empty:
                log(f"{where} is empty (first release): creating MLflow {version}'s tables")
                migrate.migrate_schemas(url.render_as_string(hide_password=False))
                log(f"schema at revision {state.head} ({time.monotonic() - started:.1f} s)")
                return 0
            log(f"{where} is at revision {state.revision}; MLflow {version} needs {state.head}")
            return upgrade(control, state, url, environ, where, now)
    except Exception as error:  # one line, as every step's; the cause's class names it
        log(f"FAILED: {migrate.reason_of(error)}")
        return FAILED
    finally:
        engine.dispose()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # As migrate.py: skip the interpreter's teardown of what MLflow and Alembic imported.
    os._exit(status)
