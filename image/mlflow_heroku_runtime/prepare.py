"""Child process run first by the supervisor: validate, write nginx's files, report the plan.

``python -m mlflow_heroku_runtime.prepare [--local] [--port N] [--data-dir D]``: on bad
configuration prints one ``entrypoint: configuration error: ...`` line per problem to stderr
and exits 2 with nothing created. Otherwise it creates the private runtime directory with
``nginx.conf`` and ``htpasswd`` (accounts mode: ``basic_auth.ini``, MLflow's auth config,
instead of ``htpasswd``) and prints the ``Plan`` as JSON on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import nginx_config
from .errors import ConfigError
from .htpasswd import write_htpasswd
from .plan import LOOPBACK, Plan, argument_parser, listen_problem
from .settings import Settings, generate_local_password, load_settings

CONFIG_ERROR_EXIT = 2


def free_loopback_ports(count: int, avoid: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 for MLflow's workers, never $PORT (Heroku
    may hand out 5000). All are held at once while chosen, so none repeats."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
            if port != avoid:
                ports.append(port)
        return ports


def local_password(data_dir: Path) -> str:
    """Reuse the password of an earlier local run, or create and keep one (0600)."""
    path = data_dir / "password"
    if path.exists():
        return path.read_text().strip()
    password = generate_local_password()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` readable by this user only (0600) and write ``text``."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def auth_config_text(settings: Settings) -> str:
    """MLflow's basic_auth.ini for accounts mode (read through MLFLOW_AUTH_CONFIG_PATH): the
    tracking database, the default permission and the credential cache. The admin's name and
    password are not in it: the migration step creates the admin (accounts.py)."""
    # configparser's interpolation reads "%" as a reference: a URL-quoted password's %40
    # must be written %%40.
    values = {
        "default_permission": settings.default_permission,
        "database_uri": settings.backend_store_uri.replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(settings.auth_cache_ttl_seconds),
    }
    lines = [f"{name} = {value}" for name, value in values.items()]
    return "[mlflow]\n" + "\n".join(lines) + "\n"


def write_auth_config(settings: Settings, runtime_dir: Path) -> Settings:
    """Write basic_auth.ini into the runtime directory and point MLflow's workers at it."""
    path = runtime_dir / "basic_auth.ini"
    write_private_file(path, auth_config_text(settings))
    return dataclasses.replace(
        settings, mlflow_env={**settings.mlflow_env, "MLFLOW_AUTH_CONFIG_PATH": str(path)}
    )


def write_nginx_files(settings: Settings, runtime_dir: Path, mlflow_ports: list[int]) -> Path:
    htpasswd_path = runtime_dir / "htpasswd"
    if not settings.accounts:  # accounts mode: MLflow checks the logins, nginx knows none
        write_htpasswd(htpasswd_path, settings.username, settings.password)
    worker_user = ""
    if os.geteuid() == 0:
        # Root (a host, never a dyno): nginx workers run as nobody and must read the
        # htpasswd file and reach the temp dirs; nobody else may read the file.
        import grp
        import pwd

        nobody = pwd.getpwnam("nobody")
        if htpasswd_path.exists():
            os.chown(htpasswd_path, nobody.pw_uid, nobody.pw_gid)
        runtime_dir.chmod(0o711)
        worker_user = f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"
    config_path = runtime_dir / "nginx.conf"
    descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(
            nginx_config.render(
                settings,
                runtime_dir=runtime_dir,
                htpasswd_path=htpasswd_path,
                mlflow_ports=mlflow_ports,
                worker_user=worker_user,
            )
        )
    return config_path


def main(argv: Sequence[str]) -> int:
    args = argument_parser().parse_args(argv)
    try:
        data_dir: Path | None = None
        password_source = None
        if args.local and "DYNO" not in os.environ:
            data_dir = args.data_dir.resolve()
            (data_dir / "artifacts").mkdir(parents=True, exist_ok=True)
            data_dir.chmod(0o700)
            password_source = lambda: local_password(data_dir)  # noqa: E731
        settings = load_settings(
            os.environ,
            local=args.local,
            local_port=args.port,
            data_dir=data_dir,
            generate_password=password_source,
        )
        # Before anything exists: nginx would otherwise retry the bind, log it five times and
        # exit, and the supervisor could only report nginx's exit.
        problem = listen_problem(settings)
        if problem is not None:
            raise ConfigError([problem])
        nginx_config.mlflow_ui_dir()  # a missing UI build is named here, before anything starts
    except ConfigError as error:
        for problem in error.problems:
            print(f"entrypoint: configuration error: {problem}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    runtime_dir = Path(tempfile.mkdtemp(prefix="mlflow-heroku-"))
    if settings.accounts:
        settings = write_auth_config(settings, runtime_dir)
    mlflow_ports = free_loopback_ports(settings.workers, avoid=settings.port)
    config_path = write_nginx_files(settings, runtime_dir, mlflow_ports)
    plan = Plan(
        settings=settings,
        runtime_dir=str(runtime_dir),
        nginx_config=str(config_path),
        mlflow_ports=mlflow_ports,
    )
    sys.stdout.write(plan.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
