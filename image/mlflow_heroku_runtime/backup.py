"""Backups of MLflow's database to S3, and their restore (``python -m ...backup``).

    backup create [--label L]          pg_dump of $DATABASE_URL to the backup prefix
    backup list                        the backups there, oldest first
    backup restore KEY|latest          into $DATABASE_URL, which must be an empty database
    backup prune --keep-days N         delete backups older than N days (never the newest)

The backups live beside the artifacts, under their own prefix (``MLFLOW_HEROKU_BACKUP_URI``,
default ``s3://<S3_URI's bucket>/backups``), so the IAM user's key reaches both and nothing
else. A dump is written to a local file first and uploaded only when pg_dump succeeded, so a
failed dump never leaves a partial backup behind. The database password reaches pg_dump and
pg_restore through libpq's environment (PGPASSWORD), never their command line.
Runbook: docs/operations.md, "Backups and restore".
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .database_url import describe, to_sqlalchemy_url

FAILED = 1
USAGE = 2
DUMP_SUFFIX = ".dump"
DEFAULT_PREFIX = "backups"
# pg_dump's custom format: compressed, and pg_restore can restore it selectively.
PG_DUMP_ARGS = ("--format=custom", "--no-owner", "--no-privileges")
PG_RESTORE_ARGS = ("--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction")
LABEL = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class BackupError(Exception):
    """A failure with a message that names the problem and the fix (never a secret)."""


def log(message: str) -> None:
    print(f"backup: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Target:
    bucket: str
    prefix: str  # without a trailing slash


def backup_target(environ: Mapping[str, str]) -> Target:
    """Where backups go: MLFLOW_HEROKU_BACKUP_URI, else ``backups`` in S3_URI's bucket."""
    variable = "MLFLOW_HEROKU_BACKUP_URI" if environ.get("MLFLOW_HEROKU_BACKUP_URI") else "S3_URI"
    raw = environ.get(variable, "")
    if not raw:
        raise BackupError("S3_URI is not set: set it (or MLFLOW_HEROKU_BACKUP_URI) to s3://BUCKET")
    parts = urlsplit(raw)
    if parts.scheme != "s3" or not parts.netloc:
        raise BackupError(f"{variable} must look like s3://BUCKET/PREFIX")
    prefix = parts.path.strip("/") if variable == "MLFLOW_HEROKU_BACKUP_URI" else DEFAULT_PREFIX
    return Target(parts.netloc, prefix or DEFAULT_PREFIX)


def libpq_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """pg_dump's and pg_restore's connection, from DATABASE_URL, as libpq variables."""
    try:
        url = to_sqlalchemy_url(environ.get("DATABASE_URL", ""))
    except ValueError as error:
        raise BackupError(str(error)) from None
    env = {"PATH": environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    env.update(
        PGHOST=str(url.host),
        PGPORT=str(url.port or 5432),
        PGDATABASE=str(url.database),
        PGUSER=str(url.username or ""),
        PGPASSWORD=str(url.password or ""),
    )
    sslmode = url.query.get("sslmode")
    if isinstance(sslmode, str):
        env["PGSSLMODE"] = sslmode
    return env


def s3_client(environ: Mapping[str, str]) -> Any:
    import boto3  # type: ignore[import-untyped]

    # From ``environ`` (what the caller passed), each falling back to boto3's own chain.
    return boto3.client(
        "s3",
        endpoint_url=environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
    )


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed: install PostgreSQL's client (postgresql-client)"
        )
    return found


def run_pg(argv: list[str], env: Mapping[str, str], what: str) -> None:
    result = subprocess.run(argv, env=dict(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # libpq's messages name hosts and users, never the password (it is in the environment).
        detail = result.stderr.strip().splitlines()[-1:] or ["no message"]
        raise BackupError(f"{what} failed (exit {result.returncode}): {detail[0]}")


def backup_keys(client: Any, target: Target) -> list[dict[str, Any]]:
    """The backups under the prefix, oldest first (S3 lists keys in order, and keys start
    with their UTC time)."""
    found: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=target.bucket, Prefix=f"{target.prefix}/"):
        found.extend(item for item in page.get("Contents", []) if item["Key"].endswith(DUMP_SUFFIX))
    return sorted(found, key=lambda item: item["Key"])


def create(environ: Mapping[str, str], label: str | None, now: datetime.datetime) -> str:
    if label is not None and not LABEL.match(label):
        raise BackupError("--label takes 1-63 of a-z 0-9 . - (e.g. before-3.18.0)")
    target = backup_target(environ)
    pg_env = libpq_environment(environ)
    client = s3_client(environ)
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"{target.prefix}/mlflow-{stamp}{'-' + label if label else ''}{DUMP_SUFFIX}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlflow-backup-") as scratch:
        dump = Path(scratch) / "mlflow.dump"
        log(f"dumping {pg_env['PGHOST']}:{pg_env['PGPORT']}/{pg_env['PGDATABASE']}")
        run_pg([tool("pg_dump"), *PG_DUMP_ARGS, f"--file={dump}"], pg_env, "pg_dump")
        size = dump.stat().st_size
        client.upload_file(str(dump), target.bucket, key)
    log(f"wrote s3://{target.bucket}/{key} ({size} bytes, {time.monotonic() - started:.1f} s)")
    return key


def resolve(client: Any, target: Target, wanted: str) -> str:
    keys: list[str] = [item["Key"] for item in backup_keys(client, target)]
    if not keys:
        raise BackupError(f"no backups under s3://{target.bucket}/{target.prefix}/")
    if wanted == "latest":
        return keys[-1]
    key = wanted if wanted.startswith(f"{target.prefix}/") else f"{target.prefix}/{wanted}"
    if key not in keys:
        raise BackupError(f"no backup {wanted!r}: `backup list` shows the ones there are")
    return key


def database_is_empty(pg_env: Mapping[str, str]) -> bool:
    import psycopg

    with psycopg.connect(
        host=pg_env["PGHOST"],
        port=int(pg_env["PGPORT"]),
        dbname=pg_env["PGDATABASE"],
        user=pg_env["PGUSER"],
        password=pg_env["PGPASSWORD"],
        sslmode=pg_env.get("PGSSLMODE", "prefer"),
        connect_timeout=10,
    ) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        ).fetchone()
    return row is not None and row[0] == 0


def restore(environ: Mapping[str, str], wanted: str) -> str:
    target = backup_target(environ)
    pg_env = libpq_environment(environ)
    client = s3_client(environ)
    key = resolve(client, target, wanted)
    where = describe(to_sqlalchemy_url(environ["DATABASE_URL"]))
    try:
        empty = database_is_empty(pg_env)
    except Exception as error:  # psycopg's message names host and user, never the password
        raise BackupError(f"cannot reach {where}: {type(error).__name__}: {error}") from None
    if not empty:
        raise BackupError(
            f"{where} already has tables: restore into a new, empty database (e.g. `heroku "
            "addons:create heroku-postgresql:<plan>`), then point DATABASE_URL at it"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlflow-restore-") as scratch:
        dump = Path(scratch) / "mlflow.dump"
        client.download_file(target.bucket, key, str(dump))
        run_pg([tool("pg_restore"), *PG_RESTORE_ARGS, f"--dbname={pg_env['PGDATABASE']}",
                str(dump)], pg_env, "pg_restore")  # fmt: skip
    log(f"restored s3://{target.bucket}/{key} into {where} ({time.monotonic() - started:.1f} s)")
    return key


def prune(environ: Mapping[str, str], keep_days: int, now: datetime.datetime) -> list[str]:
    if keep_days < 1:
        raise BackupError("--keep-days must be at least 1")
    target = backup_target(environ)
    client = s3_client(environ)
    backups = backup_keys(client, target)
    cutoff = now - datetime.timedelta(days=keep_days)
    # The newest backup stays whatever its age: pruning must never leave none.
    old = [item["Key"] for item in backups[:-1] if item["LastModified"] < cutoff]
    for key in old:
        client.delete_object(Bucket=target.bucket, Key=key)
        log(f"deleted s3://{target.bucket}/{key} (older than {keep_days} days)")
    log(f"kept {len(backups) - len(old)} backup(s)")
    return old


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_heroku_runtime.backup",
        description="Back up MLflow's database to S3 and restore it (docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="pg_dump $DATABASE_URL to the backup prefix")
    made.add_argument("--label", help="appended to the key, e.g. before-3.18.0")
    commands.add_parser("list", help="the backups, oldest first")
    restored = commands.add_parser("restore", help="restore into an empty $DATABASE_URL")
    restored.add_argument("backup", help="a key from `list`, or latest")
    pruned = commands.add_parser("prune", help="delete backups older than --keep-days")
    pruned.add_argument("--keep-days", type=int, required=True)
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    args = argument_parser().parse_args(argv)
    now = datetime.datetime.now(datetime.UTC)
    try:
        if args.command == "create":
            print(create(environ, args.label, now))
        elif args.command == "list":
            target = backup_target(environ)
            for item in backup_keys(s3_client(environ), target):
                print(f"{item['Key']}\t{item['Size']}\t{item['LastModified'].isoformat()}")
        elif args.command == "restore":
            print(restore(environ, args.backup))
        else:
            for key in prune(environ, args.keep_days, now):
                print(key)
    except BackupError as error:
        log(f"error: {error}")
        return FAILED
    except Exception as error:  # boto3's errors name the bucket and the operation, no secret
        if type(error).__module__.startswith(("botocore", "boto3")):
            log(f"error: S3 refused or failed: {error} (check the AWS_* variables and the bucket)")
            return FAILED
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
