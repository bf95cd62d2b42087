"""PID 1 of the dyno: starts nginx, migrates, runs MLflow (uvicorn or gunicorn), supervises.

Process layout (why: see docs/image.md)::

    entrypoint (this, light: no mlflow, SQLAlchemy, jinja2 or bcrypt import)
    ├── python -m ...prepare            short-lived: validates the env, writes nginx's files
    ├── nginx master -> worker          binds $PORT at once; requests wait for MLflow
    ├── python -m ...migrate            short-lived: waits for the DB, migrates, exits
    └── python -m gunicorn mlflow_heroku_runtime.asgi:app   WEB_CONCURRENCY >= 2: imports
        │                                                   MLflow once, on 127.0.0.1
        └── $WEB_CONCURRENCY uvicorn workers forked from it (forked_workers.py)
        or, for WEB_CONCURRENCY=1: python -m uvicorn mlflow_heroku_runtime.asgi:app

Requests are held during the boot, not refused: before nginx starts, the supervisor listens
on MLflow's loopback ports itself and later hands those sockets to MLflow (uvicorn ``--fd``,
gunicorn ``--bind fd://``). nginx's connections to MLflow succeed at once and wait in the
kernel's queue until MLflow accepts them. Its own copies are closed once MLflow has them, so
a MLflow that dies takes the queue with it and nginx answers the waiting requests at once.
``/health`` answers 503 until the ready flag exists, which the supervisor creates when every
worker has answered a ``GET /health`` sent to its port.

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
    HOLD_BACKLOG,
    LOOPBACK,
    MIGRATION_ONLY_VARIABLES,
    READY_FLAG_NAME,
    UVICORN_OPTIONS,
    Plan,
    argument_parser,
    listen_problem,
)
from .stale_requests import READ_TIMEOUT_VARIABLE

RUNTIME_PACKAGE_DIR = Path(__file__).resolve().parent
STOP_GRACE_SECONDS = 8.0  # inside Heroku's 30 s; the brief promises everything gone within 10
# How long a child stopped by SIGTERM/SIGINT may precede our own copy of the signal (Heroku and
# a terminal signal every process, in no set order) before its end counts as a failure.
SIBLING_SIGNAL_SECONDS = 1.0
NGINX_START_SECONDS = 5.0
CONFIG_ERROR_EXIT = 2
CHILD_FAILED_EXIT = 1
SIGNALS_KEY = "signals"  # the selector's key for the wake-up pipe
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")  # the kernel's cap on a listen backlog
HEALTH_REQUEST = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
PROBE_RETRY_SECONDS = 0.2  # before a probe that got no 200 is sent again


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


class PortTakenError(Exception):
    """One of MLflow's loopback ports could not be bound; ``message`` says which and why."""

    def __init__(self, port: int, error: OSError) -> None:
        if error.errno == errno.EADDRINUSE:
            message = (
                f"MLflow could not listen on {LOOPBACK}:{port}: another program took that port "
                "after it was chosen; start again (the ports are chosen anew)"
            )
        else:
            message = f"MLflow could not listen on {LOOPBACK}:{port} ({error.strerror})"
        super().__init__(message)
        self.message = message


def hold_ports(ports: Sequence[int]) -> list[socket.socket]:
    """Listen on each of MLflow's loopback ports, in slot order, with HOLD_BACKLOG: until MLflow
    accepts, connections to them complete and wait in the kernel's queue. Raises PortTakenError for
    the first port that cannot be bound, with nothing left bound."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(listener)
            # Bound as uvicorn and gunicorn would: a connection in TIME_WAIT is no obstacle.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((LOOPBACK, port))
            except OSError as error:
                raise PortTakenError(port, error) from error
            listener.listen(HOLD_BACKLOG)
    except BaseException:
        for listener in held:
            listener.close()
        raise
    return held


def kernel_backlog_limit() -> int | None:
    """net.core.somaxconn, which silently caps every listen backlog (None: unreadable)."""
    try:
        return int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class HealthProbe:
    """A ``GET /health`` sent to one MLflow port and watched in the loop's selector. The
    connection succeeds at once (the port is held), so only the answer says MLflow serves."""

    port: int
    sock: socket.socket


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
        self.ready_flag = self.runtime_dir / READY_FLAG_NAME  # nginx's /health looks for it
        self.held: list[socket.socket] = []  # MLflow's listeners until MLflow has them
        self.probes: dict[int, HealthProbe] = {}
        self.probe_again_at: dict[int, float] = {}  # port -> when to send its probe again
        self.answered: set[int] = set()  # ports whose worker answered /health with 200
        self.phase = Phase.NGINX_STARTING
        self.mlflow_ready = False
        self.started = time.monotonic()
        self.nginx_listening_at: float | None = None
        self.suspected: SuspectedStop | None = None
        self.stopping: Stop | None = None

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        try:
            self.install_signal_handlers()
            become_subreaper()
            self.hold_mlflow_ports()
            if self.stopping is None:
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
        # From now on /health says 503, whatever MLflow still answers while it drains.
        self.ready_flag.unlink(missing_ok=True)
        log(reason)

    def tick(self) -> float:
        """How long the loop may wait for output, a signal or a child's exit (SIGCHLD)."""
        if self.phase is Phase.NGINX_STARTING:
            return 0.02
        # Probes' answers and children's exits wake the loop themselves.
        if self.suspected is not None or self.probe_again_at:
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
                self.nginx_listening_at = time.monotonic()
                log(
                    f"nginx listening on port {self.settings.port} after "
                    f"{self.nginx_listening_at - self.started:.2f} s; requests wait for MLflow "
                    "until it is ready"
                )
                self.start_mlflow()
            elif time.monotonic() - self.started > NGINX_START_SECONDS:
                self.stop(self.failure_message("nginx", 0), CHILD_FAILED_EXIT)
            return
        if self.mlflow_ready:
            return
        now = time.monotonic()
        for port, due in list(self.probe_again_at.items()):
            if now >= due:
                del self.probe_again_at[port]
                self.probe(port)
        if self.phase is Phase.SERVING and self.answered >= set(self.plan.mlflow_ports):
            self.mlflow_ready = True
            self.ready_flag.touch()
            held = now - (self.nginx_listening_at or self.started)
            log(
                f"MLflow ready after {now - self.started:.1f} s (requests waited up to "
                f"{held:.1f} s for it)"
            )
            if self.settings.local:
                self.announce_local()

    # ----------------------------------------------------------------- MLflow's ports

    def hold_mlflow_ports(self) -> None:
        """Listen on MLflow's ports before nginx starts, so nginx never finds them closed
        while MLflow boots (module docstring)."""
        try:
            self.held = hold_ports(self.plan.mlflow_ports)
        except PortTakenError as taken:
            self.stop(taken.message, CHILD_FAILED_EXIT)
            return
        limit = kernel_backlog_limit()
        if limit is not None and limit < HOLD_BACKLOG:
            log(
                f"warning: net.core.somaxconn is {limit}: while MLflow starts, at most {limit} "
                f"requests per worker wait for it ({HOLD_BACKLOG} intended); more wait to "
                "connect and may time out"
            )

    def release_held_ports(self) -> None:
        for listener in self.held:
            listener.close()
        self.held = []

    def probe(self, port: int) -> None:
        """Send ``GET /health`` to one MLflow port; pump() reads the answer when it comes."""
        try:
            sock = socket.create_connection((LOOPBACK, port), 1)
            sock.sendall(HEALTH_REQUEST)
        except OSError:
            self.probe_again_at[port] = time.monotonic() + PROBE_RETRY_SECONDS
            return
        sock.setblocking(False)
        self.probes[port] = HealthProbe(port, sock)
        self.selector.register(sock, selectors.EVENT_READ, self.probes[port])

    def read_probe(self, probe: HealthProbe) -> None:
        try:
            answer = probe.sock.recv(64)
        except BlockingIOError:
            return
        except OSError:  # reset: the worker went away; the loop hears of it as well
            answer = b""
        self.close_probe(probe)
        if answer.startswith(b"HTTP/1.1 200"):
            self.answered.add(probe.port)
        else:
            self.probe_again_at[probe.port] = time.monotonic() + PROBE_RETRY_SECONDS

    def close_probe(self, probe: HealthProbe) -> None:
        self.selector.unregister(probe.sock)
        probe.sock.close()
        del self.probes[probe.port]

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

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], pass_fds: Sequence[int] = ()
    ) -> None:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.runtime_dir,
            pass_fds=tuple(pass_fds),  # every other descriptor of ours is closed in the child
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
            if isinstance(key.data, HealthProbe):
                self.read_probe(key.data)
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
        kept = [self.redact(line.decode("utf-8", errors="replace")) for line in lines if line]
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
                READ_TIMEOUT_VARIABLE: str(settings.proxy_read_timeout),
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
        database. Requests meanwhile wait in the held ports' queues."""
        env = self.child_env()
        log(f"migrating the database ({self.settings.database_description})")
        self._spawn(
            "migrate",
            [sys.executable, "-m", "mlflow_heroku_runtime.migrate"],
            {**env, **migration_only_environment()},
        )
        listeners = [listener.fileno() for listener in self.held]
        self._spawn("mlflow", self.mlflow_argv(listeners), env, pass_fds=listeners)
        # MLflow holds the queues now. Without our copies, a MLflow that dies closes them, the
        # kernel resets the connections still waiting and nginx answers those requests at
        # once (503), instead of after its read timeout.
        self.release_held_ports()
        for port in self.plan.mlflow_ports:
            self.probe(port)
        self.phase = Phase.MIGRATING

    def mlflow_argv(self, listeners: Sequence[int]) -> list[str]:
        """One worker: uvicorn alone, lighter than gunicorn's master plus one forked worker
        (docs/image.md, "Workers"). Two or more: gunicorn imports MLflow once and forks them.
        Both serve the listening sockets the supervisor hands them (file descriptors, one per
        port in slot order) and run on plan.UVICORN_OPTIONS and MLflow's logging config."""
        if self.settings.workers == 1:
            return self.uvicorn_argv(listeners[0])
        return self.gunicorn_argv(listeners)

    def gunicorn_argv(self, listeners: Sequence[int]) -> list[str]:
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
            # gunicorn's documented form for a socket it inherits, already listening.
            *(f"--bind=fd://{listener}" for listener in listeners),
            # Its heartbeat files: the image's only writable place is the runtime directory.
            "--worker-tmp-dir",
            str(self.runtime_dir),
            "mlflow_heroku_runtime.asgi:app",
        ]

    def uvicorn_argv(self, listener: int) -> list[str]:
        options = {**UVICORN_OPTIONS, "log_config": mlflow_uvicorn_log_config()}
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--fd",  # the held socket of plan.mlflow_ports[0], already listening
            str(listener),
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
        self.release_held_ports()  # stopped before MLflow had them
        for probe in list(self.probes.values()):
            self.close_probe(probe)
        self.probe_again_at.clear()
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
