"""What the short-lived ``prepare`` child hands the resident supervisor (as JSON on a pipe):
the validated ``Settings`` and the few facts prepare adds to them.

Kept in its own light module: the supervisor imports only this, never SQLAlchemy, jinja2 or
bcrypt, which ``prepare`` needs (docs/image.md, "Processes"). ``settings.py`` fills the
``Settings`` record; it is defined here so that the supervisor can read it without importing
the validation's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOCAL_PORT = 8080
LOOPBACK = "127.0.0.1"
# nginx drops an idle keep-alive connection to an MLflow worker after this; MLflow keeps one
# 10 s longer, so it is always nginx that closes, never MLflow under a request nginx is
# already sending.
UPSTREAM_IDLE_SECONDS = 50
MLFLOW_IDLE_SECONDS = UPSTREAM_IDLE_SECONDS + 10
# How long MLflow lets in-flight requests finish after SIGTERM.
MLFLOW_GRACEFUL_SECONDS = 6
# The listen backlog of MLflow's loopback ports. The supervisor listens on them before nginx
# starts, so while MLflow boots nginx's connections wait in this queue instead of being
# refused (docs/image.md, "Boot"); the kernel caps it at net.core.somaxconn.
HOLD_BACKLOG = 1024
# The file the supervisor creates in the runtime directory once every MLflow worker answers
# /health, and removes when the stop begins; nginx answers /health 503 without it.
READY_FLAG_NAME = "ready"
# Set in MLflow's environment when gunicorn forks the workers from one import (asgi.py).
FORKED_WORKERS_VARIABLE = "_MLFLOW_HEROKU_FORKED_WORKERS"
# Login modes (MLFLOW_HEROKU_LOGIN_MODE): one login checked by nginx, or a login per person
# checked by MLflow's basic-auth app (docs/image.md, "Accounts").
SHARED_LOGIN = "shared"
ACCOUNTS_LOGIN = "accounts"
# What only the migration step reads (the accounts' admin and people, accounts.py): MLflow's
# workers never get these variables.
MIGRATION_ONLY_VARIABLES = (
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_HEROKU_PEOPLE",
    "MLFLOW_HEROKU_PEOPLE_PASSWORDS",
)
# Every MLflow worker's uvicorn settings, as keywords of uvicorn.Config: the one worker
# (uvicorn alone, supervisor.uvicorn_argv: each becomes its command-line option) and forked
# workers (forked_workers.MlflowWorker, which passes them to Config) both run on these.
# MLflow's logging config (internals.mlflow_uvicorn_log_config) is added on both paths.
UVICORN_OPTIONS: dict[str, str | int | bool] = {
    # By name, so a missing one stops the start instead of uvicorn silently falling back to
    # asyncio + h11: what runs is what the benchmark measured.
    "loop": "uvloop",
    "http": "httptools",
    "timeout_graceful_shutdown": MLFLOW_GRACEFUL_SECONDS,
    # uvicorn listens again on the socket it is handed; keep the supervisor's queue length.
    "backlog": HOLD_BACKLOG,
    "timeout_keep_alive": MLFLOW_IDLE_SECONDS,
    "access_log": False,  # nginx logs every request already
    "server_header": False,
}


@dataclass(frozen=True)
class Settings:
    """Everything the environment contract says, already validated (settings.load_settings)."""

    port: int
    backend_store_uri: str  # SQLAlchemy URL string, password included: never log it
    database_description: str  # host:port/db, safe to log
    artifacts_destination: str  # s3://bucket/prefix or a local folder
    username: str  # the shared login (empty in accounts mode: MLflow checks each person's)
    password: str
    workers: int
    pool_size: int
    max_overflow: int
    db_wait_seconds: int
    max_body_size: str
    proxy_read_timeout: int
    auth_failures_per_minute: int
    listen_address: str  # where nginx binds $PORT: all interfaces on a dyno, loopback locally
    nginx_preload: str | None = None  # LD_PRELOAD for nginx (graceful SIGTERM), if present
    mlflow_env: dict[str, str] = field(default_factory=dict)  # extra env for MLflow children
    local: bool = False
    behind_heroku_router: bool = False  # DYNO is set: X-Forwarded-For's last entry is real
    secrets: tuple[str, ...] = ()  # every secret value, for redaction of child output
    login_mode: str = SHARED_LOGIN  # or ACCOUNTS_LOGIN
    # Accounts mode: MLflow's auth app's credential cache and default permission
    # (its basic_auth.ini, written by prepare).
    auth_cache_ttl_seconds: int = 0
    default_permission: str = "READ"

    @property
    def accounts(self) -> bool:
        return self.login_mode == ACCOUNTS_LOGIN

    @property
    def nginx_reachable_at(self) -> str:
        """Where the supervisor reaches nginx's $PORT."""
        return reachable_address(self.listen_address)


@dataclass(frozen=True)
class Plan:
    settings: Settings
    runtime_dir: str  # private temp dir: nginx.conf, htpasswd, temp paths, flag file
    nginx_config: str
    # One loopback port per MLflow worker, each served by that worker alone: nginx picks the
    # worker and keeps its connections to each (docs/image.md, "Upstream"). The supervisor
    # listens on them itself and hands the sockets to MLflow.
    mlflow_ports: list[int]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data: dict[str, Any] = json.loads(text)
        settings = data.pop("settings")
        settings["secrets"] = tuple(settings["secrets"])
        return cls(settings=Settings(**settings), **data)


def reachable_address(listen_address: str) -> str:
    """Where the supervisor reaches nginx's $PORT: loopback of the same family when nginx binds
    every interface (0.0.0.0, or [::], which nginx binds IPv6-only), else the address itself."""
    address = ipaddress.ip_address(listen_address.strip("[]"))
    if address.is_unspecified:
        return "::1" if address.version == 6 else LOOPBACK
    return str(address)


def bind_error(address: str, port: int) -> OSError | None:
    """Why a listener could not bind address:port right now (None: it could). Bound the way
    nginx and gunicorn bind (SO_REUSEADDR; IPv6 only for an IPv6 address), so a connection
    in TIME_WAIT is no obstacle while another program's listener is."""
    host = address.strip("[]")
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind((host, port))
    except OSError as error:
        return error
    return None


def listen_problem(settings: Settings) -> str | None:
    """One line on why nginx cannot bind $PORT (--port locally) where it listens, naming the
    fix; None when it can."""
    error = bind_error(settings.listen_address, settings.port)
    if error is None:
        return None
    where = f"{settings.listen_address}:{settings.port}"
    if settings.local:
        fix = "stop the program that listens there, or pass --port N for another port"
    elif settings.behind_heroku_router:
        fix = "another process in this dyno took $PORT, which only nginx may bind"
    else:
        fix = "stop the program that listens there, or set PORT to a free port"
    if error.errno == errno.EADDRINUSE:
        return f"{where} is already in use: {fix}"
    if error.errno == errno.EACCES:
        return f"{where} needs privileges to listen on (ports below 1024): use a port from 1024 up"
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {settings.listen_address} is not an address of this machine: set "
            "MLFLOW_HEROKU_LISTEN_ADDRESS to one of its addresses, or unset it"
        )
    return f"cannot listen on {where} ({error.strerror})"


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
