"""Session-wide real services shared by every test directory (see tests/support/services.py).

Most tests share one stack (PostgreSQL + moto S3 + the entrypoint) to keep the suite fast;
tests that stop, break or reconfigure a stack start their own with ``start_stack``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    ENTRYPOINT,
    PostgresCluster,
    S3Server,
    Stack,
    build_nginx_preload,
    free_port,
    heroku_env,
    postgres_cluster,
    running_stack,
    s3_server,
)

# Unit tests import the image's runtime package the way image/entrypoint.py does.
sys.path.insert(0, str(ENTRYPOINT.parent))


@pytest.fixture(scope="session", autouse=True)
def nginx_preload() -> Iterator[Path]:
    """image/nginx_graceful_term.c compiled like the Dockerfile does. Every stack started by
    start_stack preloads it into nginx (MLFLOW_HEROKU_NGINX_PRELOAD, as in the image)."""
    # Not under pytest's tmp_path: stacks run as nobody must reach it (that is 0700).
    build_dir = Path(tempfile.mkdtemp(prefix="mlflow-heroku-preload-"))
    try:
        library = build_nginx_preload(build_dir)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_HEROKU_NGINX_PRELOAD", str(library))
            yield library
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL 15 cluster shared by the session (URL in Heroku's form)."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server with the artifact bucket, shared by the session."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def stack(postgres: PostgresCluster, s3: S3Server, nginx_preload: Path) -> Iterator[Stack]:
    """The shared running stack, configured like a Heroku dyno. Do not stop or break it:
    start your own with ``tests.support.services.start_stack`` for that."""
    # Unauthenticated probes from every test arrive from 127.0.0.1 and count as failed
    # logins: a looser limit than the default (10/min) keeps them from meeting 429.
    env = heroku_env(
        port=free_port(),
        database_url=postgres.url,
        s3=s3,
        MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE="120",
    )
    with running_stack(env, ready_timeout=90) as running:
        yield running
