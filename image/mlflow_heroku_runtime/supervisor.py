"""PID 1 of the dyno: starts nginx, migrates, runs MLflow under uvicorn, and supervises.

Process layout (why: see docs/image.md)::

    entrypoint (this, light: no mlflow import)
    ├── nginx master -> worker          binds $PORT at once; 503 until MLflow answers
    ├── python -m ...migrate            short-lived: waits for the DB, migrates, exits
    └── python -m uvicorn mlflow_heroku_runtime.asgi:app  (MLflow's FastAPI app) on 127.0.0.1

Children's output goes through this process, which removes secrets from every line.
Any child dying unexpectedly stops the others and exits non-zero, so Heroku restarts the
dyno; SIGTERM/SIGINT stop everything gracefully within STOP_GRACE_SECONDS.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from . import nginx_config
from .errors import ConfigError
from .htpasswd import write_htpasswd
from .settings import LOCAL_PORT, Settings, generate_local_password, load_settings

RUNTIME_PACKAGE_DIR = Path(__file__).resolve().parent
STOP_GRACE_SECONDS = 8.0  # Heroku allows 30 s; the brief promises everything gone within 10
MLFLOW_GRACEFUL_SECONDS = 6
LOOPBACK = "127.0.0.1"
CONFIG_ERROR_EXIT = 2
CHILD_FAILED_EXIT = 1


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


def free_loopback_port(avoid: int) -> int:
    """A free port on 127.0.0.1 for MLflow, never $PORT (Heroku may hand out 5000)."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port != avoid:
            return port


def port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
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
    def __init__(self, settings: Settings, runtime_dir: Path) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.redact = Redactor(settings.secrets)
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, bytes] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_signal: int | None = None
        self.mlflow_port = free_loopback_port(settings.port)
        self.migrated_flag = runtime_dir / "migrated"

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
                self._emit(self.partial.pop(fd, b""))
                continue
            data = self.partial.pop(fd, b"") + chunk
            *lines, rest = data.split(b"\n")
            if len(rest) > 16384:  # a runaway line without newline: flush it anyway
                lines.append(rest)
                rest = b""
            if rest:
                self.partial[fd] = rest
            for line in lines:
                self._emit(line)

    def _emit(self, line: bytes) -> None:
        if line:
            text = self.redact(line.decode("utf-8", errors="replace"))
            sys.stdout.write(text + "\n")
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
        env.update(self.settings.mlflow_env)
        env.update(
            {
                "_MLFLOW_SERVER_FILE_STORE": self.settings.backend_store_uri,
                "_MLFLOW_SERVER_REGISTRY_STORE": self.settings.backend_store_uri,
                "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
                "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
                "_MLFLOW_SERVER_ARTIFACT_DESTINATION": self.settings.artifacts_destination,
                "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
                "_MLFLOW_IN_JOB_EXECUTOR": "false",
                "_MLFLOW_SGI_NAME": "uvicorn",
                "MLFLOW_ENABLE_WORKSPACES": env.get("MLFLOW_ENABLE_WORKSPACES", "false"),
                "_MLFLOW_HEROKU_DB_DESCRIPTION": self.settings.database_description,
                "MLFLOW_HEROKU_DB_WAIT_SECONDS": str(self.settings.db_wait_seconds),
                "_MLFLOW_HEROKU_MIGRATED_FLAG": str(self.migrated_flag),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(RUNTIME_PACKAGE_DIR.parent), env.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    # ----------------------------------------------------------------- lifecycle

    def start_nginx(self) -> None:
        htpasswd_path = self.runtime_dir / "htpasswd"
        write_htpasswd(htpasswd_path, self.settings.username, self.settings.password)
        worker_user = ""
        if os.geteuid() == 0:
            # Root (a host, never a dyno): nginx workers run as nobody and must read the
            # htpasswd file and reach the temp dirs; nobody else may read the file.
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(htpasswd_path, nobody.pw_uid, nobody.pw_gid)
            self.runtime_dir.chmod(0o711)
            worker_user = f"nobody {grp_name(nobody.pw_gid)}"
        params = nginx_config.NginxParams(
            runtime_dir=self.runtime_dir,
            htpasswd_path=htpasswd_path,
            port=self.settings.port,
            mlflow_port=self.mlflow_port,
            username=self.settings.username,
            password=self.settings.password,
            max_body_size=self.settings.max_body_size,
            proxy_read_timeout=self.settings.proxy_read_timeout,
            auth_failures_per_minute=self.settings.auth_failures_per_minute,
            listen_address=LOOPBACK if self.settings.local else "0.0.0.0",  # noqa: S104
            worker_user=worker_user,
        )
        config_path = self.runtime_dir / "nginx.conf"
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(nginx_config.render(params))
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is None:
            raise ConfigError(["nginx is not installed or not on PATH: apt-get install nginx"])
        # -e: errors before the config is read go to stderr, not /var/log/nginx.
        self._spawn(
            "nginx",
            [nginx, "-e", "stderr", "-p", str(self.runtime_dir), "-c", str(config_path)],
            {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin")},
        )

    def wait_for(self, name: str) -> bool:
        """Pump output until child ``name`` exits (True) or a stop/failure happens (False)."""
        process = self.children[name]
        while process.poll() is None:
            if self.stop_signal is not None or self.failed_child() not in (None, name):
                return False
            self._pump(0.1)
        return True

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
        while not port_accepts(self.settings.port):
            self._pump(0.02)
            if self.children["nginx"].poll() is not None or time.monotonic() > deadline:
                self._drain()
                log(f"nginx did not start on port {self.settings.port}; see its messages above")
                return self.shutdown(CHILD_FAILED_EXIT)
        log(
            f"nginx listening on port {self.settings.port} after "
            f"{time.monotonic() - started:.2f} s; answering 503 until MLflow is ready"
        )

        env = self.child_env()
        log(f"migrating the database ({self.settings.database_description})")
        migrate = self._spawn(
            "migrate", [sys.executable, "-m", "mlflow_heroku_runtime.migrate"], env
        )
        # MLflow's import (~4 s) overlaps the migration; asgi.py holds the app back until
        # this flag file exists, so uvicorn never serves an unmigrated database.
        self._spawn("mlflow", self.uvicorn_argv(), env)
        if not self.wait_for("migrate"):
            if self.stop_signal is not None:
                log(f"received {signal.Signals(self.stop_signal).name}; stopping")
                return self.shutdown(0)
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
                code = self.children[failed].returncode
                log(f"{failed} exited unexpectedly (exit {code}); stopping the rest")
                return self.shutdown(CHILD_FAILED_EXIT)
            self._pump(0.1 if ready else 0.05)
            if not ready and mlflow_answers_health(self.mlflow_port):
                ready = True
                log(f"MLflow ready after {time.monotonic() - started:.1f} s")
                if self.settings.local:
                    self.announce_local()

    def uvicorn_argv(self) -> list[str]:
        spec = importlib.util.find_spec("mlflow")  # locates the package without importing it
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            LOOPBACK,
            "--port",
            str(self.mlflow_port),
            "--workers",
            str(self.settings.workers),
            "--timeout-graceful-shutdown",
            str(MLFLOW_GRACEFUL_SECONDS),
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
            f"\nMLflow is running at http://{LOOPBACK}:{self.settings.port}\n"
            f"  user:     {self.settings.username}\n"
            f"  password: {self.settings.password}\n"
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


def become_subreaper() -> None:
    """Adopt orphaned grandchildren (an nginx worker whose master died, a uvicorn worker),
    so kill_tree still finds them; PID 1 in a container is the reaper anyway."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def grp_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
    except ConfigError as error:
        for problem in error.problems:
            print(f"entrypoint: configuration error: {problem}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    runtime_dir = Path(tempfile.mkdtemp(prefix="mlflow-heroku-"))
    try:
        return Supervisor(settings, runtime_dir).run()
    except ConfigError as error:
        for problem in error.problems:
            print(f"entrypoint: configuration error: {problem}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
