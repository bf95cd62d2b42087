"""What the short-lived ``prepare`` child hands the resident supervisor (as JSON on a pipe).

Kept in its own light module: the supervisor imports only this, never SQLAlchemy, jinja2 or
bcrypt, which ``prepare`` needs (~23 MB of PSS the dyno would otherwise carry for its life).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOCAL_PORT = 8080
# nginx drops an idle keep-alive connection to an MLflow worker after this; uvicorn keeps one
# 10 s longer (supervisor.py), so it is always nginx that closes, never uvicorn under a request
# nginx is already sending.
UPSTREAM_IDLE_SECONDS = 50
# How long uvicorn lets in-flight requests finish after SIGTERM (one worker or forked workers).
MLFLOW_GRACEFUL_SECONDS = 6
# Set in MLflow's environment when gunicorn forks two or more workers from one import.
FORKED_WORKERS_VARIABLE = "_MLFLOW_HEROKU_FORKED_WORKERS"


@dataclass(frozen=True)
class Plan:
    runtime_dir: str  # private temp dir: nginx.conf, htpasswd, temp paths, flag file
    nginx_config: str
    port: int
    # One loopback port per MLflow worker, each served by that worker alone: nginx picks the
    # worker and keeps its connections to each (docs/image.md, "Upstream").
    mlflow_ports: list[int]
    backend_store_uri: str  # includes the DB password: never log it
    database_description: str  # host:port/db, safe to log
    artifacts_destination: str
    workers: int
    db_wait_seconds: int
    local: bool
    username: str
    password: str
    mlflow_env: dict[str, str] = field(default_factory=dict)
    nginx_preload: str | None = None  # LD_PRELOAD library: nginx stops gracefully on SIGTERM
    nginx_reachable_at: str = "127.0.0.1"  # where the supervisor checks that nginx listens
    secrets: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entrypoint.py",
        description="Run nginx (basic auth) in front of the MLflow tracking server. Without "
        "--local it follows Heroku's environment contract (see docs/image.md).",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="local mode: SQLite and artifacts under --data-dir, a generated password",
    )
    parser.add_argument(
        "--port", type=int, default=LOCAL_PORT, help=f"local mode's port (default {LOCAL_PORT})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".local-data"),
        help="local mode's data directory (default ./.local-data)",
    )
    return parser
