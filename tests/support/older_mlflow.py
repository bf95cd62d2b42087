"""An older MLflow in a virtualenv of its own, to write a database the way a previous
release of the image left it (tests/image/test_image_older_database.py).

``older_mlflow_python()`` creates the virtualenv once with uv (the test environment's
``uv``, from PyPI) and reuses it from ``OLDER_MLFLOW_CACHE`` (gitignored) on later runs.
``older_head_revision()`` is its schema's Alembic head;
``write_tracking_content(database_url, artifact_root)`` runs tests/support/tracking_content.py
in it against the database directly (no old server needed) and returns the content's
snapshot as that MLflow read it back. ``older_database(cluster, prefix, owner)`` is a database
holding that content, copied from a template written once per cluster and owner (a copy takes
a fraction of a second, the writing several). ``schema_revision`` and
``installed_head_revision`` say where a database's schema and the pinned MLflow's stand.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from tests.support import tracking_content
from tests.support.services import (
    REPO_ROOT,
    PostgresCluster,
    Role,
    database_url,
    own_database,
    sql,
)

# The oldest 3.x (every 3.x is a pure-Python wheel that installs on 3.11): its schema is the
# furthest behind the pinned MLflow's, so the upgrade runs every migration a 3.x database can
# still need. mlflow-skinny carries the SQL stores and their
# migrations without the server's heavy dependencies; SQLAlchemy, Alembic and psycopg2 (the
# driver SQLAlchemy 2.0 picks for postgresql://) are what it needs for a database.
OLDER_MLFLOW_VERSION = "3.0.0"
OLDER_MLFLOW_REQUIREMENTS = (
    f"mlflow-skinny=={OLDER_MLFLOW_VERSION}",
    "sqlalchemy",
    "alembic",
    "psycopg2-binary",
)
# The day after its upload to PyPI: its dependencies resolve to what a user installing it
# then got, and later releases of them cannot change the test.
OLDER_MLFLOW_EXCLUDE_NEWER = "2025-06-11T00:00:00Z"
OLDER_MLFLOW_CACHE = REPO_ROOT / ".older-mlflow"
INSTALL_TIMEOUT = 240  # within pytest's per-test timeout (pyproject.toml)


def older_mlflow_python() -> Path:
    """The interpreter of a virtualenv holding OLDER_MLFLOW_REQUIREMENTS; created on first
    use (under a lock, so parallel sessions build it once) and cached."""
    spec = json.dumps([*OLDER_MLFLOW_REQUIREMENTS, OLDER_MLFLOW_EXCLUDE_NEWER])
    venv = OLDER_MLFLOW_CACHE / f"mlflow-{OLDER_MLFLOW_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / "installed.json"
    OLDER_MLFLOW_CACHE.mkdir(exist_ok=True)
    with _locked(OLDER_MLFLOW_CACHE / "lock"):
        if _is_current(python, marker, spec):
            return python
        shutil.rmtree(venv, ignore_errors=True)
        uv = Path(sys.executable).parent / "uv"
        if not uv.exists():
            raise RuntimeError(f"{uv} is missing: run scripts/setup test (uv is in the test lock)")
        _run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)])
        _run(
            [
                str(uv),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(python),
                "--exclude-newer",
                OLDER_MLFLOW_EXCLUDE_NEWER,
                *OLDER_MLFLOW_REQUIREMENTS,
            ]
        )
        marker.write_text(spec)
    return python


def _is_current(python: Path, marker: Path, spec: str) -> bool:
    if not marker.exists() or marker.read_text() != spec:
        return False
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('mlflow-skinny'))"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return probe.returncode == 0 and probe.stdout.strip() == OLDER_MLFLOW_VERSION


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str]) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{result.stdout}{result.stderr}")


@functools.cache
def older_head_revision() -> str:
    """The head revision of the older MLflow's migrations, read in its own interpreter
    (its migration scripts import its own MLflow)."""
    probe = (
        "import os, mlflow.store.db_migrations as m;"
        "from alembic.script import ScriptDirectory;"
        "print(*ScriptDirectory(os.path.dirname(m.__file__)).get_heads())"
    )
    result = subprocess.run(
        [str(older_mlflow_python()), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def sqlalchemy_uri(database_url: str) -> str:
    """Heroku's postgres:// URL as the older MLflow's SQLAlchemy wants it (psycopg2)."""
    parts = urllib.parse.urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql+psycopg2"))


def _without_password(text: str, database_url: str) -> str:
    password = urllib.parse.urlsplit(database_url).password
    if not password:
        return text
    for form in {password, urllib.parse.unquote(password)}:
        text = text.replace(form, "***")
    return text


def write_tracking_content(database_url: str, artifact_root: Path) -> dict[str, Any]:
    """Fill the database with tracking_content.write using the older MLflow; return that
    MLflow's snapshot of it. The URL travels in the environment, never on a command line."""
    python = older_mlflow_python()
    artifact_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="older-mlflow-writer-") as work:
        out = Path(work) / "snapshot.json"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": work,
            tracking_content.DATABASE_URI_VARIABLE: sqlalchemy_uri(database_url),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
        result = subprocess.run(
            [str(python), tracking_content.__file__, str(artifact_root), str(out)],
            env=env,
            cwd=artifact_root,  # where the Default experiment's ./mlruns lands
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"MLflow {OLDER_MLFLOW_VERSION} failed to write its content:\n"
                + _without_password(result.stderr, database_url)
            )
        content: dict[str, Any] = json.loads(out.read_text())
        return content


# (cluster port, owner) -> the template database written by the older MLflow.
_TEMPLATES: dict[tuple[int, str | None], str] = {}


@contextlib.contextmanager
def older_database(
    cluster: PostgresCluster, prefix: str, owner: Role | None = None
) -> Iterator[tuple[str, str]]:
    """A database as the older MLflow left it, holding tracking_content's content (its
    artifacts are not kept): (name, Heroku-style URL as ``owner``), dropped at exit."""
    key = (cluster.port, owner.name if owner else None)
    with _locked(OLDER_MLFLOW_CACHE.parent / ".older-mlflow-template.lock"):
        if key not in _TEMPLATES:
            name = f"older_template_{time.time_ns()}"
            owned = f' OWNER "{owner.name}"' if owner else ""
            sql(cluster, f'CREATE DATABASE "{name}"{owned}')
            url = database_url(cluster, name, owner)
            with tempfile.TemporaryDirectory(prefix="older-mlflow-artifacts-") as artifacts:
                write_tracking_content(url, Path(artifacts))
            _TEMPLATES[key] = name  # the cluster is thrown away with it
    with own_database(cluster, prefix, owner=owner, template=_TEMPLATES[key]) as database:
        yield database


def installed_migrations() -> ScriptDirectory:
    """The Alembic migrations of the MLflow the image pins (this environment's)."""
    import mlflow

    return ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))


def installed_head_revision() -> str:
    heads = installed_migrations().get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def schema_revision(cluster: PostgresCluster, database: str) -> str:
    """The Alembic revision the database's schema is at."""
    ((revision,),) = sql(cluster, "SELECT version_num FROM alembic_version", database)
    return str(revision)
