"""Scheduled upkeep, run in a one-off dyno (``python -m mlflow_heroku_runtime.maintenance``).

    maintenance backup [--time-limit S]   backup create --label scheduled, then prune backups
                                          older than MLFLOW_HEROKU_BACKUP_RETENTION_DAYS
    maintenance gc [--time-limit S]       purge what was deleted more than
                                          MLFLOW_HEROKU_GC_AFTER_DAYS ago, artifacts included
    maintenance all [--time-limit S]      backup, then gc if the backup succeeded

The gc takes the steps of ``mlflow gc`` (mlflow/cli/__init__.py, _gc_tracking_resources), one
run, logged model or experiment at a time, instead of calling the command: the command stops
at the first run whose artifact deletion raises (mlflow/mlflow#15461: a proxied run without
artifacts), and resolves ``mlflow-artifacts:/`` locations only through a running server. Here
such a location resolves as the server resolves it, to the same path under S3_URI (the
server's --artifacts-destination); a run that fails is logged, counted and kept (its rows
still point at what is left), and the rest go on. A purged experiment also takes its logged
models' artifacts (the database cascades their rows, which ``mlflow gc`` leaves orphaned).

Maintenance runs exclude each other: a session-level PostgreSQL advisory lock of its own, so a
second one exits at once (status 4). Each purge holds the schema-migration lock (migrate.py)
for its duration, so no schema upgrade runs meanwhile, and one waits for at most one purge; a
schema that changed since the start stops the gc. Messages never contain a password or key.
Runbook: docs/operations.md, "Clean-up and scheduled backups".
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import backup
from .database_url import describe, to_sqlalchemy_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

DONE = 0
FAILED = 1  # a backup, or some runs, logged models or experiments failed (each logged)
USAGE = 2  # bad arguments or configuration: nothing ran
INCOMPLETE = 3  # stopped at the time limit with work left; the next run continues
BUSY = 4  # another maintenance run holds the lock: this one did nothing

RETENTION_DAYS_VARIABLE = "MLFLOW_HEROKU_BACKUP_RETENTION_DAYS"
GC_AFTER_DAYS_VARIABLE = "MLFLOW_HEROKU_GC_AFTER_DAYS"
VARIABLES = (RETENTION_DAYS_VARIABLE, GC_AFTER_DAYS_VARIABLE)
DEFAULTS: Mapping[str, int] = {RETENTION_DAYS_VARIABLE: 30, GC_AFTER_DAYS_VARIABLE: 30}
# Allowed values; 0 days for the gc means "off" (deleted runs stay restorable).
RANGES: Mapping[str, tuple[int, int]] = {
    RETENTION_DAYS_VARIABLE: (1, 3650),
    GC_AFTER_DAYS_VARIABLE: (0, 3650),
}
COMMANDS = ("all", "backup", "gc")  # all: backup, then gc if the backup succeeded
BACKUP_LABEL = "scheduled"
# Well inside a one-off dyno's life and the scheduled job's timeout (.github/workflows/
# maintenance.yml), which also covers installing the Heroku CLI and starting the dyno.
DEFAULT_TIME_LIMIT_SECONDS = 1200
MAX_TIME_LIMIT_SECONDS = 6 * 3600
# pg_advisory_lock's key for "a maintenance run is under way" ("mlflowmt" in ASCII), beside
# migrate.py's MIGRATION_LOCK_KEY ("mlflowhk").
MAINTENANCE_LOCK_KEY = 0x6D6C666C6F776D74
DAY_MS = 24 * 3600 * 1000
PAGE_SIZE = 1000


class MaintenanceError(Exception):
    """A failure with a message that names the problem and the fix (never a secret)."""


class StopGcError(Exception):
    """The gc cannot go on safely (the schema moved, the database went away): stop it."""

    def __init__(self, why: str, failed: bool) -> None:
        super().__init__(why)
        self.failed = failed  # False: nothing went wrong, the next run goes on


_secrets: list[str] = []


def log(message: str) -> None:
    for secret in _secrets:
        message = message.replace(secret, "***")
    print(f"maintenance: {message}", file=sys.stderr, flush=True)


def reason(error: BaseException) -> str:
    """An error's class and first line, short (boto3's and psycopg's name no secret; log()
    removes any that would)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


@dataclass(frozen=True)
class Config:
    database_url: str  # SQLAlchemy's form, with the password: never log it
    database: str  # host:port/database, for messages
    artifacts_destination: str  # S3_URI: where `mlflow-artifacts:/` locations live
    retention_days: int
    gc_after_days: int  # 0: off


def read_days(environ: Mapping[str, str], variable: str) -> int:
    low, high = RANGES[variable]
    raw = environ.get(variable)
    if raw is None:
        return DEFAULTS[variable]
    allowed = f"a whole number of days, {low} to {high}" + (" (0 turns it off)" if low == 0 else "")
    if not raw.strip().isascii() or not raw.strip().isdigit():
        raise MaintenanceError(f"{variable}={raw[:20]!r} is not {allowed}; set it or unset it")
    value = int(raw)
    if not low <= value <= high:
        raise MaintenanceError(f"{variable}={value} is out of range: use {allowed}")
    return value


def load_config(environ: Mapping[str, str]) -> Config:
    """The settings, checked before anything runs; raises MaintenanceError naming the variable."""
    retention = read_days(environ, RETENTION_DAYS_VARIABLE)
    gc_after = read_days(environ, GC_AFTER_DAYS_VARIABLE)
    destination = environ.get("S3_URI", "")
    if not destination:
        raise MaintenanceError("S3_URI is not set: set it to s3://BUCKET/PREFIX, the artifact root")
    parts = urlsplit(destination)
    if parts.scheme != "s3" or not parts.netloc:
        raise MaintenanceError("S3_URI must look like s3://BUCKET[/PREFIX] (the artifact root)")
    try:
        url = to_sqlalchemy_url(environ.get("DATABASE_URL", ""))
    except ValueError as error:
        raise MaintenanceError(str(error)) from None
    return Config(
        database_url=url.render_as_string(hide_password=False),
        database=describe(url),
        artifacts_destination=destination.rstrip("/"),
        retention_days=retention,
        gc_after_days=gc_after,
    )


# ----------------------------------------------------------------------------- locks


@contextmanager
def database_connection(config: Config) -> Iterator[Connection]:
    """One connection for the advisory locks, for the whole run (closing it frees them)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        config.database_url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": 10},
    )
    try:
        try:
            connection = engine.connect()
        except Exception as error:
            raise MaintenanceError(
                f"cannot reach {config.database}: {reason(error)} (check DATABASE_URL)"
            ) from None
        with connection:
            yield connection
    finally:
        engine.dispose()


def try_maintenance_lock(connection: Connection) -> bool:
    """Take this command's own lock, without waiting: True when this run may go on."""
    import sqlalchemy

    statement = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
    taken = bool(connection.execute(statement, {"key": MAINTENANCE_LOCK_KEY}).scalar())
    connection.commit()
    return taken


@contextmanager
def no_schema_upgrade(connection: Connection, where: str) -> Iterator[None]:
    """Hold the schema-migration lock (migrate.py's helper: waits while one migrates)."""
    import sqlalchemy

    from .migrate import MIGRATION_LOCK_KEY, hold_migration_lock

    hold_migration_lock(connection, where)
    try:
        yield
    finally:
        connection.execute(
            sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
        connection.commit()


def schema_revision(connection: Connection) -> str | None:
    import sqlalchemy

    try:
        revision = connection.execute(
            sqlalchemy.text("SELECT version_num FROM alembic_version")
        ).scalar()
    except sqlalchemy.exc.ProgrammingError:  # no such table: no MLflow schema yet
        connection.rollback()
        return None
    connection.commit()
    return None if revision is None else str(revision)


# ----------------------------------------------------------------------------- backup


def run_backup(environ: Mapping[str, str], config: Config, now: datetime.datetime) -> bool:
    """backup.py's create (label ``scheduled``), then its prune; False when either failed."""
    try:
        backup.create(environ, BACKUP_LABEL, now)
    except Exception as error:  # BackupError, or S3's refusal (boto3 names no secret)
        log(f"backup failed: {reason(error)}")
        return False
    try:
        pruned = backup.prune(environ, config.retention_days, now)
    except Exception as error:
        log(f"pruning backups older than {config.retention_days} days failed: {reason(error)}")
        return False
    log(f"backup done; pruned {len(pruned)} backup(s) older than {config.retention_days} days")
    return True


# ----------------------------------------------------------------------------- gc


@dataclass
class GcReport:
    removed: dict[str, list[str]] = field(
        default_factory=lambda: {"run": [], "logged model": [], "experiment": []}
    )
    failed: dict[str, list[str]] = field(
        default_factory=lambda: {"run": [], "logged model": [], "experiment": []}
    )
    restored: list[str] = field(default_factory=list)  # live again: kept
    left: int = 0
    files: int = 0
    bytes: int = 0
    stopped: str | None = None  # why the gc stopped before the end
    aborted: bool = False  # stopped by a failure (not the time limit or a schema upgrade)


@dataclass(frozen=True)
class Item:
    kind: str  # "run", "logged model" or "experiment"
    id: str
    experiment_id: str | None = None  # the purged experiment it belongs to, if any


class ArtifactRemover:
    """Deletes one artifact location with MLflow's own artifact repositories; counts what it
    removes."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._destination_repository: Any = None

    def _repository_and_path(self, uri: str) -> tuple[Any, str | None]:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        from . import internals

        scheme = urlsplit(uri).scheme
        if scheme == "mlflow-artifacts" or (
            scheme in ("http", "https") and "/mlflow-artifacts/artifacts/" in uri
        ):
            path = internals.proxied_artifact_path(uri).strip("/")
            if not path:
                raise MaintenanceError(f"{uri} is the whole artifact store: not deleting it")
            if self._destination_repository is None:
                self._destination_repository = get_artifact_repository(self.destination)
            return self._destination_repository, path
        if not urlsplit(uri).path.strip("/") or uri.rstrip("/") == self.destination:
            raise MaintenanceError(f"{uri} is a whole bucket or artifact store: not deleting it")
        return get_artifact_repository(uri), None

    def remove(self, uri: str | None) -> tuple[int, int]:
        """Delete everything under ``uri``; (files, bytes) removed."""
        if not uri or urlsplit(uri).scheme in ("", "file"):
            return 0, 0  # a dyno's own disk, gone with that dyno: nothing to remove
        repository, path = self._repository_and_path(uri)
        files, size = 0, 0
        pending: list[str | None] = [path]
        while pending:
            for entry in repository.list_artifacts(pending.pop()):
                if entry.is_dir:
                    pending.append(entry.path)
                else:
                    files, size = files + 1, size + int(entry.file_size or 0)
        # Only when there is something: deleting nothing is where `mlflow gc` broke (#15461).
        if files:
            repository.delete_artifacts(path)
        return files, size


def open_store(config: Config) -> Any:
    """MLflow's SQL tracking store, one connection at a time (NullPool): the web dynos' pools
    and this must fit the Postgres plan's connection limit."""
    os.environ["MLFLOW_SQLALCHEMYSTORE_POOLCLASS"] = "NullPool"
    # The web dynos' pool sizes are config vars, so this dyno has them too; SQLAlchemy refuses
    # them beside NullPool.
    for name in ("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"):
        os.environ.pop(name, None)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(config.database_url, config.artifacts_destination)  # type: ignore[no-untyped-call]


def all_pages(search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Every result of a paged store search (``page_token`` in, ``.token`` out)."""
    token: str | None = None
    while True:
        page = search(*args, max_results=PAGE_SIZE, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def plan_gc(store: Any, older_than_ms: int, now_ms: int) -> list[Item]:
    """What ``mlflow gc --older-than`` would purge, in its order: deleted runs, deleted logged
    models, then deleted experiments, each after its own runs and logged models."""
    from mlflow.entities import ViewType

    from . import internals

    experiments = [
        experiment.experiment_id
        for experiment in all_pages(
            store.search_experiments,
            view_type=ViewType.DELETED_ONLY,
            filter_string=f"last_update_time < {now_ms - older_than_ms}",
        )
    ]
    in_purged: dict[str, list[Item]] = {}
    for experiment in experiments:
        # Every run of it, in any stage: the experiment's purge removes their rows in any case.
        in_purged[experiment] = [
            Item("run", run.info.run_id, experiment)
            for run in all_pages(store.search_runs, [experiment], "", ViewType.ALL)
        ] + [
            Item("logged model", model.model_id, experiment)
            for model in all_pages(store.search_logged_models, [experiment])
        ]
    for model_id in internals.deleted_logged_model_ids(store, 0):
        experiment = store.get_logged_model(model_id, allow_deleted=True).experiment_id
        if experiment in in_purged:  # deleted models of a purged experiment, of any age
            in_purged[experiment].append(Item("logged model", model_id, experiment))
    claimed = {item.id for items in in_purged.values() for item in items}
    plan = [
        Item("run", run_id)
        for run_id in internals.deleted_run_ids(store, older_than_ms)
        if run_id not in claimed
    ]
    plan += [
        Item("logged model", model_id)
        for model_id in internals.deleted_logged_model_ids(store, older_than_ms)
        if model_id not in claimed
    ]
    for experiment, items in in_purged.items():
        plan += [*items, Item("experiment", experiment)]
    return plan


def still_deleted(store: Any, item: Item) -> bool:
    """Whether the item is still in the deleted stage (someone may have restored it, or its
    experiment, since the plan was made): as `mlflow gc`, never purge a live one."""
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    experiment = item.id if item.kind == "experiment" else item.experiment_id
    if experiment is not None:
        return bool(store.get_experiment(experiment).lifecycle_stage == LifecycleStage.DELETED)
    if item.kind == "run":
        return bool(store.get_run(item.id).info.lifecycle_stage == LifecycleStage.DELETED)
    try:
        store.get_logged_model(item.id)  # finds live models only
    except MlflowException:
        return True
    return False


def purge(store: Any, remover: ArtifactRemover, item: Item) -> tuple[int, int]:
    from . import internals

    if item.kind == "run":
        run = store.get_run(item.id)
        files, size = remover.remove(run.info.artifact_uri)
        internals.hard_delete_run(store, item.id)
        where = f" of experiment {run.info.experiment_id}"
    elif item.kind == "logged model":
        model = store.get_logged_model(item.id, allow_deleted=True)
        files, size = remover.remove(model.artifact_location)
        internals.hard_delete_logged_model(store, item.id)
        where = f" of experiment {model.experiment_id}"
    else:
        internals.hard_delete_experiment(store, item.id)
        log(f"removed experiment {item.id} (after its runs and logged models)")
        return 0, 0
    log(f"removed {item.kind} {item.id}{where} ({files} artifact file(s), {size} bytes)")
    return files, size


def collect_garbage(
    store: Any,
    remover: ArtifactRemover,
    plan: Sequence[Item],
    deadline: float,
    lock_each: Callable[[], Any],
    clock: Callable[[], float] = time.monotonic,
) -> GcReport:
    """Purge the plan item by item until it is done or the deadline passes (checked between
    items). A failed item is logged, counted and kept, with whatever of its experiment."""
    report = GcReport()
    broken_experiments: set[str] = set()
    for index, item in enumerate(plan):
        if clock() >= deadline:
            report.left = len(plan) - index
            report.stopped = "at the time limit"
            break
        if item.kind == "experiment" and item.id in broken_experiments:
            log(f"kept experiment {item.id}: some of its runs or logged models failed")
            report.failed["experiment"].append(item.id)
            continue
        try:
            with lock_each():
                if not still_deleted(store, item):
                    log(f"kept {item.kind} {item.id}: restored since the gc began")
                    report.restored.append(item.id)
                    continue
                files, size = purge(store, remover, item)
        except StopGcError as error:
            report.left = len(plan) - index
            report.stopped = str(error)
            report.aborted = error.failed
            break
        except Exception as error:
            log(f"failed to remove {item.kind} {item.id}: {reason(error)}; kept for the next run")
            report.failed[item.kind].append(item.id)
            if item.experiment_id is not None:
                broken_experiments.add(item.experiment_id)
            continue
        report.removed[item.kind].append(item.id)
        report.files += files
        report.bytes += size
    return report


@contextmanager
def purge_lock(connection: Connection, where: str, revision: str | None) -> Iterator[None]:
    """Held around each purge: no schema upgrade meanwhile, still this run's maintenance lock,
    and the schema the plan was made for (else StopGcError)."""
    with ExitStack() as held:
        try:
            held.enter_context(no_schema_upgrade(connection, where))
            # SQLAlchemy reconnects a dropped connection silently, without the session's locks:
            # take ours again (a no-op while held), unless another run has it now.
            ours = try_maintenance_lock(connection)
            current = schema_revision(connection)
        except Exception as error:  # the lock's own connection: nothing can go on
            raise StopGcError(f"as the database went away ({reason(error)})", True) from None
        if not ours:
            raise StopGcError("as another maintenance run took its lock over", True)
        if current != revision:
            raise StopGcError("as the database schema was upgraded meanwhile", False)
        yield


def run_gc(connection: Connection, config: Config, deadline: float) -> GcReport | None:
    """None when the gc is off; otherwise what it did."""
    if config.gc_after_days == 0:
        log(f"gc is off ({GC_AFTER_DAYS_VARIABLE}=0): nothing is purged")
        return None
    started = time.monotonic()
    with no_schema_upgrade(connection, config.database):
        revision = schema_revision(connection)
        if revision is None:  # the web dyno creates the schema; this never does
            log(f"gc: {config.database} has no MLflow schema yet: nothing to purge")
            return GcReport()
        store = open_store(config)  # checks that the schema is the one this MLflow expects
        older_than_ms = config.gc_after_days * DAY_MS
        plan = plan_gc(store, older_than_ms, int(time.time() * 1000))
    log(
        f"gc: {len(plan)} item(s) deleted more than {config.gc_after_days} days ago "
        f"(planned in {time.monotonic() - started:.1f} s)"
    )

    remover = ArtifactRemover(config.artifacts_destination)
    report = collect_garbage(
        store, remover, plan, deadline, lambda: purge_lock(connection, config.database, revision)
    )
    removed, failed = report.removed, report.failed
    log(
        f"gc removed {len(removed['run'])} run(s), {len(removed['logged model'])} logged "
        f"model(s), {len(removed['experiment'])} experiment(s), {report.files} artifact file(s) "
        f"({report.bytes} bytes) in {time.monotonic() - started:.1f} s; failed: "
        f"{sum(len(ids) for ids in failed.values())}; restored meanwhile: "
        f"{len(report.restored)}; left: {report.left}"
    )
    if report.stopped is not None:
        log(
            f"stopped {report.stopped} with {report.left} item(s) left: the next run goes on "
            "(or run it again now, with a larger --time-limit)"
        )
    return report


# ----------------------------------------------------------------------------- command


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_heroku_runtime.maintenance",
        description="Scheduled backups and clean-up of deleted runs (docs/operations.md).",
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "--time-limit",
        type=int,
        default=DEFAULT_TIME_LIMIT_SECONDS,
        metavar="SECONDS",
        help=f"stop the gc between items after this long (default {DEFAULT_TIME_LIMIT_SECONDS})",
    )
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    deadline_start = time.monotonic()
    args = argument_parser().parse_args(argv)
    if not 1 <= args.time_limit <= MAX_TIME_LIMIT_SECONDS:
        log(f"error: --time-limit takes 1 to {MAX_TIME_LIMIT_SECONDS} seconds")
        return USAGE
    try:
        config = load_config(environ)
    except MaintenanceError as error:
        log(f"error: {error}")
        return USAGE
    password = to_sqlalchemy_url(environ["DATABASE_URL"]).password
    _secrets[:] = [
        value
        for value in (
            password,
            environ.get("AWS_SECRET_ACCESS_KEY"),
            environ.get("MLFLOW_TRACKING_PASSWORD"),
        )
        if isinstance(value, str) and len(value) >= 4
    ]
    deadline = deadline_start + args.time_limit
    try:
        with database_connection(config) as connection:
            if not try_maintenance_lock(connection):
                log(
                    "another maintenance run holds the lock (PostgreSQL advisory lock "
                    f"{MAINTENANCE_LOCK_KEY}): this one does nothing and exits"
                )
                return BUSY
            if args.command in ("backup", "all"):
                backed_up = run_backup(environ, config, datetime.datetime.now(datetime.UTC))
                if not backed_up:
                    if args.command == "all":
                        log("gc skipped: it purges for good, and today's backup failed")
                    return FAILED
            if args.command in ("gc", "all"):
                report = run_gc(connection, config, deadline)
                if report is not None:
                    if report.aborted or any(report.failed.values()):
                        return FAILED
                    if report.left:
                        return INCOMPLETE
    except MaintenanceError as error:
        log(f"error: {error}")
        return FAILED
    except Exception as error:  # the database or MLflow refused: one line, no traceback
        log(f"error: {reason(error)}")
        return FAILED
    return DONE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
