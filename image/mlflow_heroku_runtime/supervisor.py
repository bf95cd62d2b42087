"""PID 1 of the dyno: starts nginx, migrates, runs MLflow (uvicorn or gunicorn), supervises.

Process layout (why: see docs/image.md)::

    entrypoint (this, light: no mlflow, SQLAlchemy, jinja2 or bcrypt import)
    ├── python -m ...prepare            short-lived: validates the env, writes nginx's files
    ├── nginx master -> worker          binds $PORT at once; 503 until MLflow answers
    ├── python -m ...migrate            short-lived: waits for the DB, migrates, exits
    └── python -m gunicorn mlflow_heroku_runtime.asgi:app   WEB_CONCURRENCY >= 2: imports
        │                                                   MLflow once, on 127.0.0.1
        └── $WEB_CONCURRENCY uvicorn workers forked from it (forked_workers.py)
        or, for WEB_CONCURRENCY=1: python -m uvicorn mlflow_heroku_runtime.asgi:app

One event loop (``Supervisor.run``) does everything: it forwards children's output with
secrets removed, dispatches the signals its handlers queue (a wake-up pipe in the same
selector), notices children that exit, and moves through the phases of a start. Every end
goes through ``Supervisor.stop``, which records and logs the reason once; the loop then stops
the children gracefully within STOP_GRACE_SECONDS. A child dying unexpectedly stops the others
and exits non-zero, so Heroku restarts the dyno (a forked worker that dies is replaced by
gunicorn's master instead); SIGTERM/SIGINT are a clean stop.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import errno
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from . import internals
from .internals import mlflow_uvicorn_log_config
from .migrate import MIGRATED_FLAG_VARIABLE, SUPERVISOR_PID_VARIABLE
from .plan import (
    FORKED_WORKERS_VARIABLE,
    LOOPBACK,
    MIGRATION_ONLY_VARIABLES,
    UVICORN_OPTIONS,
    Plan,
    argument_parser,
    bind_error,
    listen_problem,
)

RUNTIME_PACKAGE_DIR = Path(__file__).resolve().parent
STOP_GRACE_SECONDS = 8.0  # inside Heroku's 30 s; the brief promises everything gone within 10
# How long a child stopped by SIGTERM/SIGINT may precede our own copy of the signal (Heroku and
# a terminal signal every process, in no set order) before its end counts as a failure.
SIBLING_SIGNAL_SECONDS = 1.0
NGINX_START_SECONDS = 5.0
CONFIG_ERROR_EXIT = 2
CHILD_FAILED_EXIT = 1
UPSTREAM_NOT_UP = b"connect() failed (111: Connection refused) while connecting to upstream"
SIGNALS_KEY = "signals"  # the selector's key for the wake-up pipe
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Redactor:
    """Replaces every secret value in a line with ***."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def log(message: str) -> None:
    print(f"entrypoint: {message}", file=sys.stderr, flush=True)


def port_accepts(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), 0.2):
        return True
    return False


def mlflow_answers_health(port: int) -> bool:
    """GET /health straight from a worker (200 means the app is imported and serving)."""
    try:
        with socket.create_connection((LOOPBACK, port), 1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Phase(enum.Enum):
    NGINX_STARTING = "nginx starting"
    MIGRATING = "migrating"  # MLflow imports meanwhile and waits for the flag file
    SERVING = "serving"  # migrated; "ready" once every worker answers /health


@dataclasses.dataclass(frozen=True)
class Stop:
    reason: str
    code: int


@dataclasses.dataclass(frozen=True)
class SuspectedStop:
    """A child ended as if Heroku or a terminal had signalled every process; unless our own
    signal arrives by ``until``, it was a failure after all."""

    until: float
    failure: str


class Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.runtime_dir = Path(plan.runtime_dir)
        self.redact = Redactor(self.settings.secrets)
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, bytes] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.seen_exit: set[str] = set()
        self.signals: collections.deque[int] = collections.deque()
        self.migrated_flag = self.runtime_dir / "migrated"
        self.phase = Phase.NGINX_STARTING
        self.mlflow_ready = False
        self.started = time.monotonic()
        self.suspected: SuspectedStop | None = None
        self.stopping: Stop | None = None

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        try:
            self.install_signal_handlers()
            become_subreaper()
            self.start_nginx()
            while self.stopping is None:
                self.pump(self.tick())
                self.dispatch_signals()
                self.check_children()
                self.advance()
        except FileNotFoundError as error:  # nginx missing: say so, without a traceback
            self.stop(str(error), CHILD_FAILED_EXIT)
        except BaseException:
            # Whatever went wrong here, never leave nginx or MLflow behind.
            self.stop("the supervisor failed (traceback below); stopping the rest", 1)
            self.shutdown()
            raise
        return self.shutdown()

    def stop(self, reason: str, code: int) -> None:
        """The one way to end: the first reason is kept and logged, later ones are moot."""
        if self.stopping is not None:
            return
        if code != 0:
            self.drain()  # a dead child's last words before ours
        self.stopping = Stop(reason, code)
        log(reason)

    def tick(self) -> float:
        """How long the loop may wait for output, a signal or a child's exit (SIGCHLD)."""
        if self.phase is Phase.NGINX_STARTING:
            return 0.02
        if self.suspected is not None or not self.mlflow_ready:
            return 0.05
        return 1.0

    def dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in STOP_SIGNALS:
                self.stop(f"received {signal.Signals(signum).name}; stopping gracefully", 0)
        if self.suspected is not None and time.monotonic() >= self.suspected.until:
            self.stop(self.suspected.failure, CHILD_FAILED_EXIT)

    def check_children(self) -> None:
        for name, process in self.children.items():
            code = process.poll()
            if code is None or name in self.seen_exit:
                continue
            self.seen_exit.add(name)
            if name == "migrate" and code == 0:
                self.migrated_flag.touch()  # MLflow's import has waited for this (asgi.py)
                self.phase = Phase.SERVING
                continue
            failure = self.failure_message(name, code)
            # nginx, uvicorn and gunicorn exit 0 on SIGTERM/SIGINT; migrate's 0 is a success.
            stopped_by_signal = code in (0, -signal.SIGTERM, -signal.SIGINT)
            if self.suspected is not None:
                if not stopped_by_signal:  # if no signal comes, this is the failure to report
                    self.suspected = dataclasses.replace(self.suspected, failure=failure)
            elif stopped_by_signal:
                self.suspected = SuspectedStop(time.monotonic() + SIBLING_SIGNAL_SECONDS, failure)
            else:
                self.stop(failure, CHILD_FAILED_EXIT)

    def failure_message(self, name: str, code: int) -> str:
        if name == "nginx" and self.phase is Phase.NGINX_STARTING:
            problem = listen_problem(self.settings)
            if problem is not None:  # taken after prepare checked it
                return f"nginx could not listen: {problem}"
            return f"nginx did not start on port {self.settings.port}; see its messages above"
        if name == "mlflow" and not self.mlflow_ready:
            taken = [port for port in self.plan.mlflow_ports if port_taken(port)]
            if taken:
                return (
                    f"MLflow could not listen on {LOOPBACK}:{taken[0]}: another program took "
                    "that port after it was chosen; start again (the ports are chosen anew)"
                )
        if name == "migrate":
            return f"database migration failed (exit {code}); stopping"
        if self.phase is Phase.MIGRATING:
            return f"{name} exited unexpectedly during the migration; stopping the rest"
        return f"{name} exited unexpectedly (exit {code}); stopping the rest"

    def advance(self) -> None:
        """Move on when the phase's condition holds (the loop calls this every turn)."""
        if self.stopping is not None or self.suspected is not None:
            return
        if self.phase is Phase.NGINX_STARTING:
            if port_accepts(self.settings.nginx_reachable_at, self.settings.port):
                log(
                    f"nginx listening on port {self.settings.port} after "
                    f"{time.monotonic() - self.started:.2f} s; answering 503 until MLflow is "
                    "ready"
                )
                self.start_mlflow()
            elif time.monotonic() - self.started > NGINX_START_SECONDS:
                self.stop(self.failure_message("nginx", 0), CHILD_FAILED_EXIT)
        elif (
            self.phase is Phase.SERVING
            and not self.mlflow_ready
            and all(map(mlflow_answers_health, self.plan.mlflow_ports))
        ):
            self.mlflow_ready = True
            log(f"MLflow ready after {time.monotonic() - self.started:.1f} s")
            if self.settings.local:
                self.announce_local()

    # ----------------------------------------------------------------- signals and output

    def install_signal_handlers(self) -> None:
        """Handlers only queue the signal; the wake-up pipe, watched by the same selector as
        the children's output, makes the loop turn at once (SIGCHLD: a child exited)."""
        wake_read, wake_write = os.pipe()
        for descriptor in (wake_read, wake_write):
            os.set_blocking(descriptor, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self.selector.register(wake_read, selectors.EVENT_READ, SIGNALS_KEY)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.runtime_dir,
        )
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.selector.register(process.stdout, selectors.EVENT_READ, name)
        self.children[name] = process

    def pump(self, timeout: float) -> None:
        """Forward children's output (redacted, whole lines) for up to timeout seconds."""
        for key, _mask in self.selector.select(timeout):
            if key.data == SIGNALS_KEY:
                with contextlib.suppress(BlockingIOError):
                    os.read(key.fd, 4096)  # the handlers queued the signals themselves
                continue
            stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
            try:
                chunk = stream.read(65536)
            except (BlockingIOError, InterruptedError):
                continue
            fd = stream.fileno()
            if not chunk:  # end of file: the child closed its output
                self.selector.unregister(stream)
                self._emit([self.partial.pop(fd, b"")])
                continue
            data = self.partial.pop(fd, b"") + chunk
            *lines, rest = data.split(b"\n")
            if len(rest) > 16384:  # a runaway line without newline: flush it anyway
                lines.append(rest)
                rest = b""
            if rest:
                self.partial[fd] = rest
            self._emit(lines)

    def _emit(self, lines: list[bytes]) -> None:
        """Write whole lines, redacted, in one write: under load one read carries several
        access-log lines, and a write plus flush each was a system call per request."""
        # Until MLflow listens, every proxied request makes nginx log a refused upstream
        # connection; the 503 it answers is logged anyway, so those lines are only noise.
        kept = [
            self.redact(line.decode("utf-8", errors="replace"))
            for line in lines
            if line and not (self.mlflow_ready is False and UPSTREAM_NOT_UP in line)
        ]
        if kept:
            sys.stdout.write("\n".join(kept) + "\n")
            sys.stdout.flush()

    def drain(self, budget: float = 0.5) -> None:
        """Forward output still waiting in the pipes (e.g. a dead child's last words)."""
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and self.selector.select(0.02):
            self.pump(0)

    # ----------------------------------------------------------------- children

    def child_env(self) -> dict[str, str]:
        """Environment for MLflow children: what the `mlflow server` CLI would set."""
        settings = self.settings
        env = {
            key: value
            for key, value in os.environ.items()
            # Children never need the login or the raw add-on URL; the accounts' admin and
            # people are for the migration step alone (start_mlflow).
            if key not in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME", "DATABASE_URL")
            and key not in MIGRATION_ONLY_VARIABLES
        }
        env.update(settings.mlflow_env)
        env.update(
            {
                **internals.mlflow_server_environment(
                    settings.backend_store_uri, settings.artifacts_destination, uuid.uuid4().hex
                ),
                "MLFLOW_ENABLE_WORKSPACES": env.get("MLFLOW_ENABLE_WORKSPACES", "false"),
                "_MLFLOW_HEROKU_DB_DESCRIPTION": settings.database_description,
                "MLFLOW_HEROKU_DB_WAIT_SECONDS": str(settings.db_wait_seconds),
                MIGRATED_FLAG_VARIABLE: str(self.migrated_flag),
                SUPERVISOR_PID_VARIABLE: str(os.getpid()),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(RUNTIME_PACKAGE_DIR.parent), env.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if settings.workers > 1:
            env[FORKED_WORKERS_VARIABLE] = "1"
        return env

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is None:
            raise FileNotFoundError("nginx is not installed or not on PATH: apt-get install nginx")
        # -e: errors before the config is read go to stderr, not /var/log/nginx.
        self._spawn(
            "nginx",
            [nginx, "-e", "stderr", "-p", str(self.runtime_dir), "-c", self.plan.nginx_config],
            nginx_env(self.settings.nginx_preload),
        )

    def start_mlflow(self) -> None:
        """migrate and MLflow at once: MLflow's import overlaps the migration, and asgi.py
        holds the app back until the flag file exists, so it never serves an unmigrated
        database."""
        env = self.child_env()
        log(f"migrating the database ({self.settings.database_description})")
        self._spawn(
            "migrate",
            [sys.executable, "-m", "mlflow_heroku_runtime.migrate"],
            {**env, **migration_only_environment()},
        )
        self._spawn("mlflow", self.mlflow_argv(), env)
        self.phase = Phase.MIGRATING

    def mlflow_argv(self) -> list[str]:
        """One worker: uvicorn alone, lighter than gunicorn's master plus one forked worker
        (docs/image.md, "Workers"). Two or more: gunicorn imports MLflow once and forks them.
        Both run on plan.UVICORN_OPTIONS and MLflow's logging config."""
        return self.uvicorn_argv() if self.settings.workers == 1 else self.gunicorn_argv()

    def gunicorn_argv(self) -> list[str]:
        """gunicorn's settings and the workers' are in forked_workers.py, read as gunicorn's
        --config; only this start's values are here."""
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:mlflow_heroku_runtime.forked_workers",
            "--workers",
            str(self.settings.workers),
            # One listener per worker, in slot order; each worker serves its own only.
            *(f"--bind={LOOPBACK}:{port}" for port in self.plan.mlflow_ports),
            # Its heartbeat files: the image's only writable place is the runtime directory.
            "--worker-tmp-dir",
            str(self.runtime_dir),
            "mlflow_heroku_runtime.asgi:app",
        ]

    def uvicorn_argv(self) -> list[str]:
        options = {**UVICORN_OPTIONS, "log_config": mlflow_uvicorn_log_config()}
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            LOOPBACK,
            "--port",
            str(self.plan.mlflow_ports[0]),
            *uvicorn_command_line(options),
            "mlflow_heroku_runtime.asgi:app",
        ]

    def announce_local(self) -> None:
        # Deliberately not redacted: local mode prints its generated login once per start.
        print(
            f"\nMLflow is running at http://{LOOPBACK}:{self.settings.port}\n"
            f"  user:     {self.settings.username}\n"
            f"  password: {self.settings.password}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )

    def shutdown(self) -> int:
        """Graceful stop: nginx finishes in-flight requests (SIGQUIT), MLflow drains
        (SIGTERM); anything left after STOP_GRACE_SECONDS is killed."""
        code = self.stopping.code if self.stopping is not None else CHILD_FAILED_EXIT
        signals = {"nginx": signal.SIGQUIT, "mlflow": signal.SIGTERM, "migrate": signal.SIGTERM}
        for name, process in self.children.items():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signals[name])
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            process.poll() is None for process in self.children.values()
        ):
            self.pump(0.05)
        for name, process in self.children.items():
            if process.poll() is None:
                log(f"{name} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
                kill_tree(process.pid)
                process.wait(5)
        kill_tree(os.getpid(), include_root=False)  # e.g. MLflow's or nginx's workers left
        self.drain()
        log(f"stopped (exit {code})")
        return code


def migration_only_environment() -> dict[str, str]:
    """The variables only the migration step gets (the accounts' admin and people)."""
    return {name: os.environ[name] for name in MIGRATION_ONLY_VARIABLES if name in os.environ}


def uvicorn_command_line(options: dict[str, str | int | bool]) -> list[str]:
    """uvicorn.Config keywords as uvicorn's command-line options (its click options are named
    after them: timeout_keep_alive is --timeout-keep-alive, access_log=False --no-access-log)."""
    argv: list[str] = []
    for name, value in options.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def port_taken(port: int) -> bool:
    """Another program listens on 127.0.0.1:port (checked once MLflow is gone)."""
    error = bind_error(LOOPBACK, port)
    return error is not None and error.errno == errno.EADDRINUSE


def nginx_env(preload: str | None) -> dict[str, str]:
    """nginx's environment: PATH, and the library that makes it treat SIGTERM and SIGINT like
    SIGQUIT (Heroku sends SIGTERM to every process, a terminal's Ctrl-C SIGINT to the whole
    group; nginx alone would cut in-flight requests on either)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin")}
    if preload is not None:
        env["LD_PRELOAD"] = preload
    else:
        log(
            "warning: nginx_graceful_term.so not found (MLFLOW_HEROKU_NGINX_PRELOAD unset, none "
            "at the image's default path): SIGTERM sent to every process (how Heroku stops a "
            "dyno) or Ctrl-C will cut nginx's in-flight requests; SIGTERM to this process alone "
            "stays graceful"
        )
    return env


def become_subreaper() -> None:
    """Adopt orphaned grandchildren (an nginx worker whose master died, a forked worker),
    so kill_tree still finds them; PID 1 in a container is the reaper anyway."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def kill_tree(pid: int, include_root: bool = True) -> None:
    """SIGKILL pid's descendants (and pid), found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, index = [pid], 0
    while index < len(found):
        found.extend(children.get(found[index], []))
        index += 1
    for member in found if include_root else found[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    for member in found[1:]:  # reap our own zombies
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(member, os.WNOHANG)


def prepare(argv: Sequence[str]) -> tuple[int, Plan | None]:
    """Run the ``prepare`` child; its error lines go straight to our stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(RUNTIME_PACKAGE_DIR.parent), env.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_heroku_runtime.prepare", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        check=False,
    )
    if result.returncode != 0:
        return result.returncode, None
    return 0, Plan.from_json(result.stdout.decode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    argument_parser().parse_args(arguments)  # --help and usage errors, before anything else
    code, plan = prepare(arguments)
    if plan is None:
        if code != CONFIG_ERROR_EXIT:
            log(f"preparing the start failed (exit {code}); see the messages above")
        return code if code > 0 else CHILD_FAILED_EXIT
    try:
        return Supervisor(plan).run()
    finally:
        shutil.rmtree(plan.runtime_dir, ignore_errors=True)
