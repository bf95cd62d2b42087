"""The two contenders and how each is launched, watched and stopped: ours
(``python image/entrypoint.py``) and the 2021 blog recipe (``bash run.sh``: ``mlflow ui``
behind the recipe's nginx), both with Heroku's environment contract."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.benchmarking import REPO
from scripts.benchmarking.processes import (
    alive,
    listening_ports,
    port_open,
    process_tree,
    reap_zombies,
    wait_for,
)
from tests.support.services import free_port

VENV_BIN = Path(sys.executable).parent
ENTRYPOINT = REPO / "image" / "entrypoint.py"
# Readiness probe: the Default experiment exists once migrations ran and MLflow serves.
READY_PATH = "/api/2.0/mlflow/experiments/get?experiment_id=0"

# The recipe's nginx.conf_template (seed), adapted only to run here as root on loopback next to
# other engineers' servers: listen on 127.0.0.1, pid/temp/log paths and the htpasswd under a
# private directory instead of /etc/nginx and /var/log/nginx. Everything else is verbatim.
RECIPE_NGINX_TEMPLATE = """\
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
        listen 127.0.0.1:{heroku_port};

        access_log {tmp}/reverse-access.log;
        error_log {tmp}/reverse-error.log;

        location / {{
            auth_basic "Restricted Content";
            auth_basic_user_file {tmp}/.htpasswd;

            proxy_pass                          http://127.0.0.1:{mlflow_port}/;
            proxy_set_header Host               $host;
            proxy_set_header X-Real-IP          $remote_addr;
            proxy_set_header X-Forwarded-For    $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""

# The recipe's run.sh with envsubst replaced by the pre-rendered config above (gettext is not
# installed here) and `killall nginx` dropped (it would kill other engineers' nginx).
RECIPE_RUN_SH = """\
mlflow ui \\
  --port $MLFLOW_PORT \\
  --host 127.0.0.1 \\
  --backend-store-uri $(echo "$DATABASE_URL" | sed "s/postgres/postgresql/") \\
  --default-artifact-root $S3_URI &

nginx -g 'daemon off;' -c "$NGINX_CONF"
"""


@dataclass
class Stack:
    """How to launch one contender: a name, a command, and extra environment."""

    name: str
    command: list[str]
    env: dict[str, str]
    database: str
    prepare: Callable[[Path, dict[str, str]], None] = lambda _dir, _env: None
    # The recipe's artifacts go straight to S3 (clients would need AWS keys): ours only.
    artifact_mix: bool = False
    # Whether its nginx keeps connections to MLflow open: the direct path then does too, so
    # "direct" is always MLflow as nginx reaches it and the overhead is nginx's own work.
    upstream_keepalive: bool = False
    # Accounts mode: MLflow itself checks the login, so the direct path sends it too.
    direct_needs_login: bool = False


def our_stack(name: str, database: str, workers: int | None, workers_env: str) -> Stack:
    """The image's entrypoint; `workers` (None: its default) goes into `workers_env`."""
    return Stack(
        name,
        [sys.executable, str(ENTRYPOINT)],
        {} if workers is None else {workers_env: str(workers)},
        database,
        artifact_mix=True,
        upstream_keepalive=True,  # to every worker's own port (forked_workers.py)
    )


def accounts_stack(name: str, database: str, auth_cache_ttl: int | None = None) -> Stack:
    """Ours in accounts mode (MLflow's basic-auth app); the load's login is an editor's, as a
    team member's would be (an admin skips the permission checks)."""
    stack = our_stack(name, database, None, "WEB_CONCURRENCY")
    stack.env["MLFLOW_HEROKU_LOGIN_MODE"] = "accounts"
    if auth_cache_ttl is not None:
        stack.env["MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS"] = str(auth_cache_ttl)
    stack.prepare = prepare_accounts
    stack.direct_needs_login = True
    return stack


def prepare_accounts(_stack_dir: Path, env: dict[str, str]) -> None:
    """The admin (never the load's login), the load's user as an editor, a gateway passphrase."""
    user, password = env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    env.update(
        MLFLOW_AUTH_ADMIN_USERNAME="bench-admin",
        MLFLOW_AUTH_ADMIN_PASSWORD=secrets.token_urlsafe(18),
        MLFLOW_HEROKU_PEOPLE=json.dumps([{"username": user, "role": "editor"}]),
        MLFLOW_HEROKU_PEOPLE_PASSWORDS=json.dumps({user: password}),
        MLFLOW_CRYPTO_KEK_PASSPHRASE=secrets.token_urlsafe(24),
    )


def recipe_stack() -> Stack:
    return Stack("2021 recipe", ["bash", "run.sh"], {}, "recipe", prepare=prepare_recipe)


def prepare_recipe(stack_dir: Path, env: dict[str, str]) -> None:
    """Writes the recipe's nginx.conf, .htpasswd and run.sh into stack_dir."""
    mlflow_port = free_port()
    while mlflow_port == int(env["PORT"]):
        mlflow_port = free_port()
    env["MLFLOW_PORT"] = str(mlflow_port)
    env["HEROKU_PORT"] = env["PORT"]
    conf = stack_dir / "nginx.conf"
    conf.write_text(
        RECIPE_NGINX_TEMPLATE.format(
            tmp=stack_dir, heroku_port=env["PORT"], mlflow_port=mlflow_port
        )
    )
    env["NGINX_CONF"] = str(conf)
    # `htpasswd -bc` (apache2-utils, not installed here) writes an apr1 MD5 hash by default;
    # `openssl passwd -apr1` writes the same format. The password goes over stdin, not argv.
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=env["MLFLOW_TRACKING_PASSWORD"].encode(), capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    htpasswd = stack_dir / ".htpasswd"
    htpasswd.write_text(f"{env['MLFLOW_TRACKING_USERNAME']}:{hashed}\n")
    htpasswd.chmod(0o644)
    (stack_dir / "run.sh").write_text(RECIPE_RUN_SH)


def stack_environment(
    stack: Stack, services: dict[str, str], stack_dir: Path, port: int, auth: tuple[str, str]
) -> dict[str, str]:
    """What a dyno gives the stack (Heroku's variables, on loopback), over this process's
    environment less anything that would configure MLflow, AWS or the dyno otherwise."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "AWS_", "DATABASE_URL", "DYNO", "PORT", "WEB_CONC"))
    }
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        PORT=str(port),
        DATABASE_URL=services["database_url"].rsplit("/", 1)[0] + "/" + stack.database,
        S3_URI=f"s3://{services['bucket']}/{stack.database}",
        MLFLOW_S3_ENDPOINT_URL=services["s3_endpoint"],
        AWS_ACCESS_KEY_ID=services["s3_access_key"],
        AWS_SECRET_ACCESS_KEY=services["s3_secret_key"],
        AWS_DEFAULT_REGION=services["s3_region"],
        MLFLOW_TRACKING_USERNAME=auth[0],
        MLFLOW_TRACKING_PASSWORD=auth[1],
        # Loopback only: no usage telemetry from either stack.
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        BENCH_WORKDIR=str(stack_dir),
        DYNO="web.1",  # as on Heroku (the recipe ignores it)
        # A dyno needs the AI gateway's passphrase (the program generates one per stack).
        MLFLOW_CRYPTO_KEK_PASSPHRASE="benchmark-kek-passphrase-0123456789abcdef",  # noqa: S106
        MLFLOW_HEROKU_LISTEN_ADDRESS="127.0.0.1",  # but on loopback only
    )
    env.update(stack.env)
    return env


class Running:
    """One launched stack; stop() always leaves no process of it behind."""

    def __init__(self, stack: Stack, env: dict[str, str], log: Path) -> None:
        self.started = time.monotonic()
        self.log = log.open("a")
        self.lines: list[tuple[float, str]] = []  # (seconds since launch, output line)
        # The stack writes into a file, not a pipe: a reader woken for every access-log line
        # would take CPU from the nginx path only (the direct path logs nothing).
        self.raw_path = log.with_name(f"{log.name}.raw")
        with self.raw_path.open("wb") as raw:
            self.proc = subprocess.Popen(
                stack.command, env=env, stdout=raw, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=env["BENCH_WORKDIR"],
            )  # fmt: skip
        self.known: set[int] = {self.proc.pid}
        self.stopped = threading.Event()
        self.reader = threading.Thread(target=self.read_output, daemon=True)
        self.reader.start()

    def read_output(self) -> None:
        """Timestamps output lines to within 20 ms, so start-up phases can be told apart."""
        partial = b""
        with self.raw_path.open("rb") as raw:
            while True:
                finished = self.stopped.wait(0.02)
                elapsed = time.monotonic() - self.started
                *lines, partial = (partial + raw.read()).split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", errors="replace")
                    self.lines.append((elapsed, text))
                    self.log.write(f"{elapsed:8.2f} {text}\n")
                if finished:
                    return

    def first_line_time(self, needle: str) -> float | None:
        return next((at for at, line in self.lines if needle in line), None)

    def remember_tree(self) -> list[int]:
        tree = process_tree(self.proc.pid)
        self.known.update(tree)
        return tree

    def terminate(self, to_all: bool, grace: float = 15.0) -> tuple[float | None, int]:
        """SIGTERM to the first process (or to all of them, as Heroku does); returns seconds
        until the first process exited (None: it did not within `grace`) and the number of
        its processes still alive then."""
        tree = self.remember_tree()
        start = time.monotonic()
        for pid in tree if to_all else [self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        exited: float | None = None
        try:
            self.proc.wait(grace)
            exited = time.monotonic() - start
        except subprocess.TimeoutExpired:
            pass
        # Give children a moment to follow the first process out before counting orphans.
        wait_for(lambda: not alive(tree), 2.0, 0.05)
        reap_zombies()
        return exited, len(alive(tree))

    def kill_everything(self) -> None:
        if self.proc.poll() is None:
            # Still running: the run was cut short (an error, SIGTERM, Ctrl-C). A graceful stop
            # first, so the entrypoint removes its runtime directory as it does on a dyno.
            self.terminate(to_all=False, grace=10.0)
        self.remember_tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in alive(list(self.known)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        wait_for(lambda: not alive(list(self.known)), 5.0, 0.05)
        reap_zombies()
        self.stopped.set()
        self.reader.join(5)
        self.log.close()
        self.raw_path.unlink(missing_ok=True)


def authenticated_ok(port: int, auth: tuple[str, str]) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}{READY_PATH}", auth=auth, timeout=2).ok
    except requests.RequestException:
        return False


def launch(
    stack: Stack, env: dict[str, str], log: Path, port: int, auth: tuple[str, str]
) -> tuple[Running, float | None, float | None]:
    """Start a stack and time $PORT binding and the first authenticated 200 from launch."""
    running = Running(stack, env, log)
    bound = ready = None
    deadline = running.started + 90
    try:
        while time.monotonic() < deadline and running.proc.poll() is None:
            if bound is None and port_open(port):
                bound = time.monotonic() - running.started
            if bound is not None and authenticated_ok(port, auth):
                ready = time.monotonic() - running.started
                break
            time.sleep(0.02)
        running.remember_tree()
    except BaseException:  # SIGTERM or Ctrl-C while it starts: the caller never gets it
        running.kill_everything()
        raise
    return running, bound, ready


def phases(running: Running, label: str) -> str:
    """Where the start-up time went, from the timestamps of the stack's own log lines."""
    # Our supervisor logs "MLflow ready" on its own next health poll, which can come after
    # the benchmark's first 200; the recipe never writes it (the wait then costs 1 s).
    wait_for(lambda: running.first_line_time("MLflow ready") is not None, 1.0)
    marks = {
        "database migrated": running.first_line_time("up to date"),  # ours: migrate child
        "MLflow ready (own log)": running.first_line_time("MLflow ready"),  # ours: supervisor
        "uvicorn started": running.first_line_time("Application startup complete"),
    }
    found = ", ".join(f"{name} at {at:.1f} s" for name, at in marks.items() if at is not None)
    return f"{label}: {found or 'no phase markers in the log'}"


def find_mlflow_ports(
    running: Running, public_port: int, auth: tuple[str, str] | None = None
) -> list[int]:
    """MLflow's own loopback ports (ours: one per worker): the listening ports of the tree
    other than $PORT that serve the readiness path (with `auth`: MLflow checks logins)."""
    found = []
    for port in sorted(listening_ports(running.remember_tree()) - {public_port}):
        try:
            url = f"http://127.0.0.1:{port}{READY_PATH}"
            if requests.get(url, auth=auth, timeout=10).ok:
                found.append(port)
        except requests.RequestException:
            continue
    return found
