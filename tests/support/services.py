"""Throwaway real services on 127.0.0.1 for tests and scripts (benchmark, smoke checks).

Plain Python, no pytest needed. Everything is a context manager that cleans up on exit,
also when the body raises:

- ``free_port()``: a free TCP port on 127.0.0.1.
- ``postgres_cluster()`` -> ``PostgresCluster``: a fresh PostgreSQL 15 cluster; ``.url`` is
  in Heroku's ``postgres://user:pass@127.0.0.1:port/db`` form (the password needs URL
  quoting on purpose); ``.stop()`` / ``.start()`` for fault tests. ``sql(cluster, statement)``
  runs one statement as its superuser; ``own_database(cluster, prefix)`` a database dropped at
  exit, optionally owned by ``app_role(cluster)`` (a login role without superuser, as Heroku's
  credential) or copied from a template database.
- ``s3_server()`` -> ``S3Server``: moto's server with a bucket; ``.endpoint_url``,
  ``.bucket``, ``.access_key``, ``.secret_key``, ``.keys()`` / ``.read()`` for assertions,
  ``.stop()`` / ``.start()`` (moto keeps data in memory: a restart empties the bucket).
- ``heroku_env(...)``: the environment a dyno would give the entrypoint.
- ``running_stack(env)`` -> ``Stack``: ``python image/entrypoint.py`` as a subprocess in its
  own process group, waited on until ``GET /health`` answers 200; ``.url``, ``.auth`` (for
  requests' ``auth=``, UTF-8 like MLflow's client), ``.process``, ``.output()``, ``.stop()``.
  ``start_stack(env, wait_ready=False)`` gives the same object without waiting (for tests of
  failing starts); call ``.stop()`` yourself. ``user="nobody"`` runs it as that user (as root);
  ``args=["--local", "--port", N], port=N`` runs local mode.
- ``start_release_phase(env)`` / ``run_release_phase(env)``: ``python image/entrypoint.py`` as
  Heroku's release phase runs it (``DYNO=release.<N>``), with PostgreSQL's client programs on
  PATH as in the image; a Popen with text stdout and stderr, or its finished result.
- ``build_nginx_preload(dest_dir)`` compiles image/nginx_graceful_term.c (nginx stops
  gracefully on SIGTERM) with gcc like the Dockerfile; stacks get it when
  ``MLFLOW_HEROKU_NGINX_PRELOAD`` is in this process's environment (tests/conftest.py sets it).
- ``wait_for_port(port, timeout)``, ``descendants(pid)``, ``tree_pss_mb(pid)``: waiting for a
  listener, a process tree, and the proportional set size of a process and its descendants.
- ``own_database(cluster, prefix)``: a fresh database; ``migration_lock_held(cluster, name)``:
  the image's migration lock held there, so a stack booting meanwhile waits (a slow boot).
- ``mlflow_ports_of(stack)``, ``runtime_dir_of(stack)``: MLflow's loopback ports (from the
  stack's nginx.conf) and its runtime directory.

Failed logins count against nginx's per-client rate limit (the shared test stack allows 120 a
minute): send a distinct ``X-Forwarded-For`` with deliberate unauthenticated probes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import requests
import requests.auth

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the tests keep for people to look at (gitignored; CI uploads it: tests.yml).
TEST_ARTIFACTS = REPO_ROOT / "test-artifacts"
ENTRYPOINT = REPO_ROOT / "image" / "entrypoint.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NGINX_PRELOAD_SOURCE = REPO_ROOT / "image" / "nginx_graceful_term.c"
# The same flags as image/Dockerfile's builder stage.
NGINX_PRELOAD_CFLAGS = ("-O2", "-fPIC", "-shared", "-Wall", "-Werror")
LOOPBACK = "127.0.0.1"
KEK_PASSPHRASE = "test-kek-passphrase-0123456789abcdef"  # throwaway stacks


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:port within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return True
        time.sleep(0.02)
    return False


def _as_user(user: str | None, argv: Sequence[str], keep_env: bool = False) -> list[str]:
    """Prefix argv with runuser when we are root and a different user must run it."""
    if user is None or os.geteuid() != 0:
        return list(argv)
    return ["runuser", *(["-m"] if keep_env else []), "-u", user, "--", *argv]


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresCluster:
    """A running throwaway cluster. ``url`` is Heroku's form, with the password URL-quoted."""

    port: int
    user: str
    password: str
    database: str
    data_dir: Path
    log_file: Path
    _run_as: str | None

    @property
    def url(self) -> str:
        quoted_password = urllib.parse.quote(self.password, safe="")
        return f"postgres://{self.user}:{quoted_password}@{LOOPBACK}:{self.port}/{self.database}"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), *args]
        return subprocess.run(
            _as_user(self._run_as, argv), capture_output=True, text=True, check=check, timeout=60
        )

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        options = (
            f"-c listen_addresses={LOOPBACK} -c port={self.port} "
            f"-c unix_socket_directories='{self.data_dir}' -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        )
        result = self._pg_ctl(
            "-w", "-t", "30", "-l", str(self.log_file), "-o", options, "start", check=False
        )
        if result.returncode != 0 or not wait_for_port(self.port, 10):
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{self.log_text()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate); data stays for start()."""
        self._pg_ctl("-w", "-t", "30", "-m", mode, "stop", check=False)

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def postgres_cluster(
    user: str = "postgres_owner",
    password: str = "p@ss:w/rd%20&é $!'",  # noqa: S107 (throwaway test cluster)
    database: str = "postgres_mlflow",
) -> Iterator[PostgresCluster]:
    """A fresh PostgreSQL 15 cluster on a free loopback port with one database.

    The defaults are deliberately awkward (names containing "postgres", a password that
    needs URL quoting) so every test exercises DATABASE_URL handling. As root the server
    runs as the ``postgres`` user in a directory that user owns. Always removed at exit.
    """
    run_as = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="mlflow-heroku-pg-"))
    try:
        if run_as is not None:
            owner = pwd.getpwnam(run_as)
            os.chown(base, owner.pw_uid, owner.pw_gid)
        base.chmod(0o700)
        data_dir = base / "data"
        password_file = base / "pwfile"
        password_file.write_text(password + "\n")
        if run_as is not None:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        initdb = [
            str(PG_BIN / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            user,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        result = subprocess.run(
            _as_user(run_as, initdb), capture_output=True, text=True, check=False, timeout=120
        )
        password_file.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")
        cluster = PostgresCluster(
            port=free_port(),
            user=user,
            password=password,
            database=database,
            data_dir=data_dir,
            log_file=base / "postgres.log",
            _run_as=run_as,
        )
        try:
            cluster.start()
            _create_database(cluster)
            yield cluster
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _create_database(cluster: PostgresCluster) -> None:
    sql(cluster, f'CREATE DATABASE "{cluster.database}"')


def sql(cluster: PostgresCluster, statement: str, database: str = "postgres") -> list[Any]:
    """Run one statement as the cluster's owner (autocommit); its rows, if any."""
    import psycopg  # the image's driver; imported late so this module stays cheap to import

    with psycopg.connect(
        host=LOOPBACK,
        port=cluster.port,
        user=cluster.user,
        password=cluster.password,
        dbname=database,
        autocommit=True,
    ) as connection:
        cursor = connection.execute(statement)
        return cursor.fetchall() if cursor.description else []


@dataclass(frozen=True)
class Role:
    """A login role of a cluster: ``name`` and ``password`` for its URLs."""

    name: str
    password: str


APP_ROLE = Role("mlflow_app", "app p@ss:w/rd%")  # a throwaway cluster's; URL-quoted in URLs


def app_role(cluster: PostgresCluster) -> Role:
    """A role like Heroku Postgres's default credential: it logs in, owns its database, and is
    no superuser (so it may end its own sessions only). Created once per cluster."""
    query = f"SELECT count(*) FROM pg_roles WHERE rolname = '{APP_ROLE.name}'"  # noqa: S608 (a constant)
    (exists,) = sql(cluster, query)
    if not exists[0]:
        sql(
            cluster, f"CREATE ROLE {APP_ROLE.name} LOGIN NOSUPERUSER PASSWORD '{APP_ROLE.password}'"
        )
    return APP_ROLE


def database_url(cluster: PostgresCluster, name: str, role: Role | None = None) -> str:
    """Heroku's postgres:// form of database ``name``, as ``role`` (default: the superuser)."""
    user, password = (role.name, role.password) if role else (cluster.user, cluster.password)
    quoted = urllib.parse.quote(password, safe="")
    return f"postgres://{user}:{quoted}@{LOOPBACK}:{cluster.port}/{name}"


@contextlib.contextmanager
def own_database(
    cluster: PostgresCluster,
    prefix: str,
    owner: Role | None = None,
    template: str | None = None,
) -> Iterator[tuple[str, str]]:
    """A new database in the cluster, dropped at exit: (name, Heroku-style URL). Empty, or a
    copy of database ``template`` (which nobody may be connected to); owned by ``owner`` (and
    the URL that role's) when given."""
    name = f"{prefix}_{time.time_ns()}"
    clauses = (f' TEMPLATE "{template}"' if template else "") + (
        f' OWNER "{owner.name}"' if owner else ""
    )
    sql(cluster, f'CREATE DATABASE "{name}"{clauses}')
    try:
        yield name, database_url(cluster, name, owner)
    finally:
        sql(cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def migration_lock_held(cluster: PostgresCluster, database: str) -> Iterator[None]:
    """The image's migration lock (migrate.py's advisory lock) held on ``database``, as another
    booting dyno's migration holds it: a stack started meanwhile waits to migrate, with MLflow
    held back, until the block ends."""
    import psycopg
    from mlflow_heroku_runtime.migrate import MIGRATION_LOCK_KEY  # the image's package

    with psycopg.connect(
        host=LOOPBACK,
        port=cluster.port,
        user=cluster.user,
        password=cluster.password,
        dbname=database,
        autocommit=True,
    ) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        yield


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class S3Server:
    """moto's S3-compatible server. The keys are fake: moto accepts any."""

    port: int
    bucket: str
    access_key: str = "moto-test-access-key"
    secret_key: str = "moto-test-secret-key"  # moto accepts any key
    region: str = "us-east-1"
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for this server (boto3 has no type stubs here)."""
        import boto3  # type: ignore[import-untyped]  # no stubs in the lock

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def start(self) -> None:
        """Start moto and (re)create the bucket; returns once it answers."""
        if self._log is None:
            # Lives as long as the server object; closed by s3_server() at exit.
            self._log = tempfile.TemporaryFile()  # noqa: SIM115
        moto = Path(sys.executable).parent / "moto_server"
        self._process = subprocess.Popen(
            [str(moto), "-H", LOOPBACK, "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_for_port(self.port, 30):
            self.stop()
            raise RuntimeError("moto_server did not start within 30 s")
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self._process is not None:
            _stop_process_group(self._process, grace=5)
            self._process = None

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every object under prefix in the bucket: key -> size in bytes."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: dict[str, int] = {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found

    def read(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


@contextlib.contextmanager
def s3_server(bucket: str = "mlflow-artifacts") -> Iterator[S3Server]:
    """moto's server on a free loopback port with ``bucket`` created; stopped at exit."""
    server = S3Server(port=free_port(), bucket=bucket)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server._log is not None:
            server._log.close()


# --------------------------------------------------------------------------- the stack


def heroku_env(
    *,
    port: int,
    database_url: str | None,
    s3: S3Server | None,
    username: str = "mlflow-user",
    password: str = "s3cret pa$$:w%rd,\"'!",  # noqa: S107 (test login)
    s3_prefix: str = "artifacts",
    dyno: str | None = "web.1",
    **extra: str,
) -> dict[str, str]:
    """The environment Heroku would give the entrypoint (config vars + dyno variables).

    ``extra`` adds or overrides variables (e.g. ``WEB_CONCURRENCY="2"``). Pass
    ``database_url=None`` or ``s3=None`` to leave that variable out.
    """
    env = {
        "PORT": str(port),
        # A dyno listens on all interfaces; tests stay on loopback.
        "MLFLOW_HEROKU_LISTEN_ADDRESS": "127.0.0.1",
        "MLFLOW_TRACKING_USERNAME": username,
        "MLFLOW_TRACKING_PASSWORD": password,
        # The program sets it from a generated secret; a dyno refuses MLflow's public default.
        "MLFLOW_CRYPTO_KEK_PASSPHRASE": KEK_PASSPHRASE,
    }
    if dyno is not None:
        env["DYNO"] = dyno
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if s3 is not None:
        env.update(
            S3_URI=f"s3://{s3.bucket}/{s3_prefix}",
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
            AWS_DEFAULT_REGION=s3.region,
            MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url,
        )
    env.update(extra)
    return env


def build_nginx_preload(dest_dir: Path) -> Path:
    """Compile image/nginx_graceful_term.c into dest_dir (readable by every user, since
    stacks may run as nobody); needs gcc and libc6-dev (scripts/setup test)."""
    compiler = shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("gcc is not installed: run scripts/setup test")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest_dir.chmod(0o755)
    library = dest_dir / "nginx_graceful_term.so"
    subprocess.run(
        [compiler, *NGINX_PRELOAD_CFLAGS, "-o", str(library), str(NGINX_PRELOAD_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    library.chmod(0o755)
    return library


def _base_env() -> dict[str, str]:
    """What any process needs besides the dyno contract: PATH (nginx), locale, HOME, and
    the nginx preload library when the test session built one."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "MLFLOW_HEROKU_NGINX_PRELOAD")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    # nginx lives in /usr/sbin, which non-root PATHs often miss.
    if "/usr/sbin" not in env["PATH"].split(":"):
        env["PATH"] += ":/usr/sbin"
    env["HOME"] = tempfile.gettempdir()
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    """A running entrypoint (nginx + MLflow) started by ``start_stack``."""

    port: int
    username: str
    password: str
    process: subprocess.Popen[bytes]
    _output_path: Path
    _output_file: IO[bytes] = field(repr=False)
    _saved_output: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth(self) -> requests.auth.HTTPBasicAuth:
        """For requests' ``auth=``: the login UTF-8 encoded like MLflow's client and
        browsers send it (requests would encode a plain str tuple as Latin-1)."""
        return requests.auth.HTTPBasicAuth(self.username.encode(), self.password.encode())

    def output(self) -> str:
        """Everything the entrypoint and its children wrote so far (stdout + stderr);
        still available after ``stop()``."""
        if self._saved_output is not None:
            return self._saved_output
        return self._output_path.read_bytes().decode("utf-8", errors="replace")

    def wait_for_output(self, until: str | re.Pattern[str], timeout: float = 5) -> str:
        """The output once it contains the text ``until`` or a match of it (nginx writes its
        access log once a second), or as it is after ``timeout`` seconds."""

        def arrived(output: str) -> bool:
            return until in output if isinstance(until, str) else bool(until.search(output))

        deadline = time.monotonic() + timeout
        while not arrived(output := self.output()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return output

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait for ``GET /health`` 200; returns seconds waited. Raises with the output."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"entrypoint exited with {self.process.returncode} before it was ready:\n"
                    + self.output()
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"stack not ready within {timeout} s:\n{self.output()}")

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM the entrypoint, wait up to grace seconds, then kill its process group.

        Returns the entrypoint's exit code (None if it had to be killed).
        """
        code = _stop_process_group(self.process, grace)
        with contextlib.suppress(OSError):
            self._output_file.close()
        if self._saved_output is None:
            with contextlib.suppress(OSError):
                self._saved_output = self.output()
            shutil.rmtree(self._output_path.parent, ignore_errors=True)
        return code


def _reachable_by_others(path: Path) -> bool:
    """True if every directory on the way to path is searchable by other users."""
    resolved = path.resolve()
    return all(parent.stat().st_mode & 0o001 for parent in resolved.parents)


def python_for_user(user: str | None) -> tuple[str, dict[str, str]]:
    """An interpreter another user can execute, with the environment it needs.

    When this venv's interpreter lives under a private home (pyenv under /root), the
    system's python3 of the same version runs with this venv's site-packages instead.
    """
    if user is None or os.geteuid() != 0 or _reachable_by_others(Path(sys.executable)):
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system_python = Path(f"/usr/bin/{version}")
    site_packages = Path(sys.prefix) / "lib" / version / "site-packages"
    if not system_python.exists():
        raise RuntimeError(f"no {version} that user {user} can run; install Debian's {version}")
    if not _reachable_by_others(site_packages):
        raise RuntimeError(
            f"user {user} cannot reach {site_packages}: a directory above it lacks o+x "
            "(scripts/test adds it when run as root)"
        )
    return str(system_python), {"PYTHONPATH": str(site_packages)}


def start_stack(
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    wait_ready: bool = True,
    ready_timeout: float = 60,
    user: str | None = None,
    python: str | None = None,
    cwd: Path | None = None,
    port: int | None = None,
) -> Stack:
    """Launch ``python image/entrypoint.py *args`` with exactly ``env`` (plus PATH, locale).

    ``user`` runs it as another user via runuser (when we are root); ``port`` is where
    nginx listens when env has no PORT (``--local --port``). With ``wait_ready``
    it returns only after ``/health`` answered 200 and stops the process if that fails.
    """
    interpreter, interpreter_env = (python, {}) if python else python_for_user(user)
    full_env = {**_base_env(), **interpreter_env, **env}
    if port is None:  # local mode takes --port instead of PORT: pass port= for it
        port = int(full_env.get("PORT", "8080"))
    output_dir = Path(tempfile.mkdtemp(prefix="mlflow-heroku-stack-"))
    output_dir.chmod(0o755)  # the working directory of a stack run as another user
    output_path = output_dir / "output.log"
    output_file = output_path.open("wb")
    try:
        process = subprocess.Popen(
            _as_user(user, [interpreter, str(ENTRYPOINT), *args], keep_env=True),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every child
            cwd=cwd or output_dir,
        )
    except BaseException:  # nothing started: leave no output file or directory behind
        output_file.close()
        shutil.rmtree(output_dir, ignore_errors=True)
        raise
    stack = Stack(
        port=port,
        username=full_env.get("MLFLOW_TRACKING_USERNAME", ""),
        password=full_env.get("MLFLOW_TRACKING_PASSWORD", ""),
        process=process,
        _output_path=output_path,
        _output_file=output_file,
    )
    if wait_ready:
        try:
            stack.wait_ready(ready_timeout)
        except BaseException:
            stack.stop()
            raise
    return stack


@contextlib.contextmanager
def running_stack(env: Mapping[str, str], **kwargs: Any) -> Iterator[Stack]:
    """``start_stack`` as a context manager: the stack is always stopped at exit."""
    stack = start_stack(env, **kwargs)
    try:
        yield stack
    finally:
        stack.stop()


def start_release_phase(
    env: Mapping[str, str], dyno: str = "release.9768"
) -> subprocess.Popen[str]:
    """``python image/entrypoint.py`` in a release-phase dyno: exactly ``env`` (plus PATH with
    pg_dump, locale) and ``DYNO=dyno``, in its own process group; stdout and stderr piped."""
    full_env = {**_base_env(), **env, "DYNO": dyno}
    full_env["PATH"] = f"{PG_BIN}:{full_env['PATH']}"
    return subprocess.Popen(
        [sys.executable, str(ENTRYPOINT)],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_release_phase(
    env: Mapping[str, str], timeout: float = 240, dyno: str = "release.9768"
) -> subprocess.CompletedProcess[str]:
    """``start_release_phase`` to its end (killed after ``timeout`` seconds)."""
    process = start_release_phase(env, dyno)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _stop_process_group(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM the process, then SIGKILL its whole group after grace seconds.

    The group is killed in any case, so no child outlives the call.
    """
    code: int | None = process.poll()
    if code is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if code is None:
        process.wait(10)
    return code


# --------------------------------------------------------------------------- measurement


def descendants(pid: int) -> list[int]:
    """pid and every descendant, zombies included; a process that exits while the tree is
    walked is left out (pid itself is always first, even when it is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return [pid]
    return [pid, *(child.pid for child in children)]


def mlflow_pid_of(stack: Stack) -> int:
    """The stack's MLflow process: uvicorn (one worker) or gunicorn's master (forked workers),
    i.e. the uvicorn/gunicorn process whose parent is neither."""

    def is_mlflow(process: psutil.Process) -> bool:
        try:
            argv = process.cmdline()
        except psutil.Error:
            return False
        return len(argv) > 2 and argv[1] == "-m" and argv[2] in ("uvicorn", "gunicorn")

    for pid in descendants(stack.process.pid):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if is_mlflow(process) and not is_mlflow(psutil.Process(process.ppid())):
                return pid
    raise AssertionError("no uvicorn or gunicorn process in the stack")


def runtime_dir_of(stack: Stack) -> Path:
    """The stack's private runtime directory (nginx.conf, the flag files): nginx's ``-p``."""
    for pid in descendants(stack.process.pid):
        try:
            argv = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if argv and argv[0].startswith("nginx") and "-p" in argv:
            return Path(argv[argv.index("-p") + 1])
    raise AssertionError("no nginx with -p in the stack")


def mlflow_ports_of(stack: Stack) -> list[int]:
    """The loopback ports of the stack's MLflow workers, in slot order: the upstream servers
    of its nginx.conf (the supervisor hands MLflow their sockets, so no command line names
    them)."""
    config = (runtime_dir_of(stack) / "nginx.conf").read_text()
    upstream = config[config.index("upstream mlflow {") :]
    upstream = upstream[: upstream.index("}")]
    ports = [int(port) for port in re.findall(r"server 127\.0\.0\.1:(\d+)", upstream)]
    return list(dict.fromkeys(ports))  # the backup entries repeat the same ports


def tree_pss_mb(pid: int) -> float:
    """Sum of PSS (MB) over pid and its descendants; a process gone or unreadable (smaps
    needs permission) counts 0."""
    total = 0
    for member in descendants(pid):
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(member).memory_full_info().pss
    return total / (1024 * 1024)
