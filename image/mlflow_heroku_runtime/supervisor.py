"""PID 1 of the dyno: starts nginx, migrates, runs MLflow under uvicorn, and supervises.

Process layout (why: see docs/image.md)::

    entrypoint (this, light: no mlflow, SQLAlchemy, jinja2 or bcrypt import)
    ├── python -m ...prepare            short-lived: validates the env, writes nginx's files
    ├── nginx master -> worker          binds $PORT at once; 503 until MLflow answers
    ├── python -m ...migrate            short-lived: waits for the DB, migrates, exits
    └── python -m uvicorn mlflow_heroku_runtime.asgi:app  (MLflow's FastAPI app) on 127.0.0.1
        or, for WEB_CONCURRENCY >= 2, python -m gunicorn --preload ... -> forked workers

Children's output goes through this process, which removes secrets from every line.
Any child dying unexpectedly stops the others and exits non-zero, so Heroku restarts the
dyno (a forked worker that dies is replaced by gunicorn's master instead); SIGTERM/SIGINT
stop everything gracefully within STOP_GRACE_SECONDS.
"""

from __future__ import annotations

import contextlib
import importlib.util
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

from .migrate import MIGRATED_FLAG_VARIABLE, SUPERVISOR_PID_VARIABLE
from .plan import (
    FORKED_WORKERS_VARIABLE,
    MLFLOW_GRACEFUL_SECONDS,
    UPSTREAM_IDLE_SECONDS,
    Plan,
    argument_parser,
)

RUNTIME_PACKAGE_DIR = Path(__file__).resolve().parent
STOP_GRACE_SECONDS = 8.0  # Heroku allows 30 s; the brief promises everything gone within 10
# How long a child stopped by SIGTERM/SIGINT may precede our own copy of the signal (Heroku and
# a terminal signal every process, in no set order) before its end counts as a failure.
SIBLING_SIGNAL_SECONDS = 1.0
# MLflow keeps an idle connection 10 s longer than nginx does (plan.UPSTREAM_IDLE_SECONDS).
MLFLOW_IDLE_SECONDS = UPSTREAM_IDLE_SECONDS + 10
LOOPBACK = "127.0.0.1"
CONFIG_ERROR_EXIT = 2
CHILD_FAILED_EXIT = 1
UPSTREAM_NOT_UP = b"connect() failed (111: Connection refused) while connecting to upstream"


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
    """GET /health straight from uvicorn (200 means the app is imported and serving)."""
    try:
        with socket.create_connection((LOOPBACK, port), 1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.runtime_dir = Path(plan.runtime_dir)
        self.redact = Redactor(plan.secrets)
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, bytes] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_signal: int | None = None
        self.mlflow_ports = plan.mlflow_ports
        self.migrated_flag = self.runtime_dir / "migrated"
        self.mlflow_ready = False

    # ----------------------------------------------------------------- signals and output

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
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
        return process

    def _pump(self, timeout: float) -> None:
        """Forward children's output (redacted, whole lines) for up to timeout seconds."""
        try:
            events = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, _mask in events:
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

    # ----------------------------------------------------------------- environment

    def child_env(self) -> dict[str, str]:
        """Environment for MLflow children: what the `mlflow server` CLI would set."""
        env = {
            key: value
            for key, value in os.environ.items()
            # Children never need the login or the raw add-on URL.
            if key not in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME", "DATABASE_URL")
        }
        env.update(self.plan.mlflow_env)
        env.update(
            {
                "_MLFLOW_SERVER_FILE_STORE": self.plan.backend_store_uri,
                "_MLFLOW_SERVER_REGISTRY_STORE": self.plan.backend_store_uri,
                "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
                "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
                "_MLFLOW_SERVER_ARTIFACT_DESTINATION": self.plan.artifacts_destination,
                "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
                "_MLFLOW_IN_JOB_EXECUTOR": "false",
                "_MLFLOW_SGI_NAME": "uvicorn",
                "MLFLOW_ENABLE_WORKSPACES": env.get("MLFLOW_ENABLE_WORKSPACES", "false"),
                "_MLFLOW_HEROKU_DB_DESCRIPTION": self.plan.database_description,
                "MLFLOW_HEROKU_DB_WAIT_SECONDS": str(self.plan.db_wait_seconds),
                MIGRATED_FLAG_VARIABLE: str(self.migrated_flag),
                SUPERVISOR_PID_VARIABLE: str(os.getpid()),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(RUNTIME_PACKAGE_DIR.parent), env.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.plan.workers > 1:
            env[FORKED_WORKERS_VARIABLE] = "1"
        return env

    # ----------------------------------------------------------------- lifecycle

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is None:
            raise FileNotFoundError("nginx is not installed or not on PATH: apt-get install nginx")
        # -e: errors before the config is read go to stderr, not /var/log/nginx.
        self._spawn(
            "nginx",
            [nginx, "-e", "stderr", "-p", str(self.runtime_dir), "-c", self.plan.nginx_config],
            nginx_env(self.plan.nginx_preload),
        )

    def wait_for(self, name: str) -> bool:
        """Pump output until child ``name`` exits (True) or a stop/failure happens (False)."""
        process = self.children[name]
        while process.poll() is None:
            if self.stop_signal is not None or self.failed_child() not in (None, name):
                return False
            self._pump(0.1)
        return True

    def stop_on_signal(self) -> int:
        assert self.stop_signal is not None
        log(f"received {signal.Signals(self.stop_signal).name}; stopping")
        return self.shutdown(0)

    def await_own_signal(self, ended: subprocess.Popen[bytes]) -> None:
        """A child that died of SIGTERM/SIGINT, or stopped cleanly (nginx and uvicorn exit 0 on
        them), was most likely signalled with every process (Heroku's stop, Ctrl-C), in no set
        order: give our own copy of the signal a moment to arrive, so that the stop is not
        taken for a failure."""
        if ended.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            return
        grace_ends = time.monotonic() + SIBLING_SIGNAL_SECONDS
        while self.stop_signal is None and time.monotonic() < grace_ends:
            self._pump(0.05)

    def failed_child(self) -> str | None:
        """The name of the first long-running child that has exited, if any."""
        for name in ("nginx", "mlflow"):
            process = self.children.get(name)
            if process is not None and process.poll() is not None:
                return name
        return None

    def run(self) -> int:
        try:
            return self._run()
        except BaseException:
            # Whatever went wrong here, never leave nginx or MLflow behind.
            self.shutdown(CHILD_FAILED_EXIT)
            raise

    def _run(self) -> int:
        become_subreaper()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        started = time.monotonic()
        self.start_nginx()
        deadline = time.monotonic() + 5
        nginx = self.children["nginx"]
        while not port_accepts(self.plan.nginx_reachable_at, self.plan.port):
            self._pump(0.02)
            if nginx.poll() is not None:
                self.await_own_signal(nginx)
            if self.stop_signal is not None:
                return self.stop_on_signal()
            if nginx.poll() is not None or time.monotonic() > deadline:
                self._drain()
                log(f"nginx did not start on port {self.plan.port}; see its messages above")
                return self.shutdown(CHILD_FAILED_EXIT)
        log(
            f"nginx listening on port {self.plan.port} after "
            f"{time.monotonic() - started:.2f} s; answering 503 until MLflow is ready"
        )

        env = self.child_env()
        log(f"migrating the database ({self.plan.database_description})")
        migrate = self._spawn(
            "migrate", [sys.executable, "-m", "mlflow_heroku_runtime.migrate"], env
        )
        # MLflow's import (~4 s) overlaps the migration; asgi.py holds the app back until
        # this flag file exists, so uvicorn never serves an unmigrated database.
        self._spawn("mlflow", self.mlflow_argv(), env)
        migrated = self.wait_for("migrate")
        failed = self.failed_child()
        if failed is not None:
            self.await_own_signal(self.children[failed])
        elif migrate.returncode != 0:  # migrate's 0 is success, never a stop
            self.await_own_signal(migrate)
        if self.stop_signal is not None:
            return self.stop_on_signal()
        if not migrated:
            self._drain()
            failed = self.failed_child()
            log(f"{failed} exited unexpectedly during the migration; stopping the rest")
            return self.shutdown(CHILD_FAILED_EXIT)
        self._drain()
        if migrate.returncode != 0:
            log(f"database migration failed (exit {migrate.returncode}); stopping")
            return self.shutdown(CHILD_FAILED_EXIT)
        self.migrated_flag.touch()

        ready = False
        while True:
            if self.stop_signal is not None:
                log(f"received {signal.Signals(self.stop_signal).name}; stopping gracefully")
                return self.shutdown(0)
            failed = self.failed_child()
            if failed is not None:
                self._drain()
                self.await_own_signal(self.children[failed])
                if self.stop_signal is not None:
                    # Heroku signalled every process and the child was quicker than us.
                    continue
                code = self.children[failed].returncode
                log(f"{failed} exited unexpectedly (exit {code}); stopping the rest")
                return self.shutdown(CHILD_FAILED_EXIT)
            self._pump(0.1 if ready else 0.05)
            if not ready and all(map(mlflow_answers_health, self.mlflow_ports)):
                ready = self.mlflow_ready = True
                log(f"MLflow ready after {time.monotonic() - started:.1f} s")
                if self.plan.local:
                    self.announce_local()

    def mlflow_argv(self) -> list[str]:
        return self.uvicorn_argv() if self.plan.workers == 1 else self.gunicorn_argv()

    def gunicorn_argv(self) -> list[str]:
        """Two or more workers: gunicorn imports MLflow once and forks them (forked_workers.py).
        uvicorn's --workers would spawn each to import MLflow on its own: 456 MB idle for two
        against 330 (docs/benchmark.md)."""
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            str(self.plan.workers),
            "--worker-class",
            "mlflow_heroku_runtime.forked_workers.MlflowWorker",
            # One listener per worker, in slot order; each worker serves its own only.
            *(f"--bind={LOOPBACK}:{port}" for port in self.mlflow_ports),
            "--config",  # for its pre_fork hook, which hands each worker a free slot
            "python:mlflow_heroku_runtime.forked_workers",
            "--graceful-timeout",
            str(MLFLOW_GRACEFUL_SECONDS),
            "--keep-alive",
            str(MLFLOW_IDLE_SECONDS),
            # Its heartbeat files and no control socket (gunicorn 26 opens one in $HOME): the
            # image's only writable place is the runtime directory.
            "--worker-tmp-dir",
            str(self.runtime_dir),
            "--no-control-socket",
            "mlflow_heroku_runtime.asgi:app",
        ]

    def uvicorn_argv(self) -> list[str]:
        spec = importlib.util.find_spec("mlflow")  # locates the package without importing it
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            LOOPBACK,
            "--port",
            str(self.mlflow_ports[0]),
            # By name, so a missing one stops the start instead of uvicorn silently falling
            # back to asyncio + h11: what runs is what the benchmark measured.
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--timeout-graceful-shutdown",
            str(MLFLOW_GRACEFUL_SECONDS),
            "--timeout-keep-alive",
            str(MLFLOW_IDLE_SECONDS),
            "--no-access-log",  # nginx logs every request already
            "--no-server-header",
        ]
        if spec is not None and spec.origin is not None:
            log_config = Path(spec.origin).parent / "server" / "uvicorn_log_config.yaml"
            if log_config.exists():
                argv += ["--log-config", str(log_config)]
        # MLflow's FastAPI app, wrapped so database errors never reach clients verbatim.
        return [*argv, "mlflow_heroku_runtime.asgi:app"]

    def announce_local(self) -> None:
        # Deliberately not redacted: local mode prints its generated login once per start.
        print(
            f"\nMLflow is running at http://{LOOPBACK}:{self.plan.port}\n"
            f"  user:     {self.plan.username}\n"
            f"  password: {self.plan.password}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )

    def _drain(self, budget: float = 0.5) -> None:
        """Forward output still waiting in the pipes (e.g. a dead child's last words)."""
        deadline = time.monotonic() + budget
        while self.selector.get_map() and time.monotonic() < deadline:
            if not self.selector.select(0.02):
                return
            self._pump(0)

    def shutdown(self, code: int) -> int:
        """Graceful stop: nginx finishes in-flight requests (SIGQUIT), uvicorn drains
        (SIGTERM); anything left after STOP_GRACE_SECONDS is killed."""
        signals = {"nginx": signal.SIGQUIT, "mlflow": signal.SIGTERM, "migrate": signal.SIGTERM}
        for name, process in self.children.items():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signals[name])
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            process.poll() is None for process in self.children.values()
        ):
            self._pump(0.05)
        for name, process in self.children.items():
            if process.poll() is None:
                log(f"{name} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
                kill_tree(process.pid)
                process.wait(5)
        kill_tree(os.getpid(), include_root=False)  # e.g. uvicorn or nginx workers left
        self._drain()
        log(f"stopped (exit {code})")
        return code


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
    """Adopt orphaned grandchildren (an nginx worker whose master died, a uvicorn worker),
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
    except FileNotFoundError as error:
        log(str(error))
        return CHILD_FAILED_EXIT
    finally:
        shutil.rmtree(plan.runtime_dir, ignore_errors=True)
