#!/usr/bin/env python3
"""Benchmark our tracking-server entrypoint against the 2021 blog recipe, side by side.

Both stacks run on this machine against the same throwaway PostgreSQL 15 cluster and the same
moto S3 server, on free loopback ports. For each stack it measures: seconds to bind $PORT,
seconds to the first authenticated 200 on an empty database and after a warm restart, PSS of
the whole process tree (idle and at the peak of the load), authenticated log-metric throughput
and p50/p99 latency at 1, 4 and 16 clients through nginx and directly to MLflow, and SIGTERM to
exit (to the first process, and to every process as Heroku does). It prints a markdown table
and writes it into docs/benchmark.md between the results markers.

Load client: one requests.Session per client thread. urllib3 sets TCP_NODELAY on every
connection and http.client sends a bytes body in the same send() as the headers, so the client
adds no Nagle / delayed-ACK stall of its own (see docs/benchmark.md).

Run as root or as a user that can run `runuser -u postgres` (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

REPO = Path(__file__).resolve().parent.parent
# The shared throwaway services (PostgreSQL cluster, moto S3) of the test suite.
sys.path.insert(0, str(REPO))
from tests.support.services import PG_BIN, free_port, postgres_cluster, s3_server  # noqa: E402

# The image's own defaults and hash, so the report names what it measured.
sys.path.insert(0, str(REPO / "image"))
from mlflow_heroku_runtime.htpasswd import BCRYPT_COST, htpasswd_line  # noqa: E402
from mlflow_heroku_runtime.settings import DEFAULTS  # noqa: E402

VENV_BIN = Path(sys.executable).parent
RESULTS_START = "<!-- benchmark-results:start -->"
RESULTS_END = "<!-- benchmark-results:end -->"
# Readiness probe: the Default experiment exists once migrations ran and MLflow serves.
READY_PATH = "/api/2.0/mlflow/experiments/get?experiment_id=0"
LOG_METRIC_PATH = "/api/2.0/mlflow/runs/log-metric"
# Load on each path before the measured slices, thrown away: a fresh worker's first requests
# compile SQL, open pool connections and prepare statements, which otherwise lands on
# whichever path goes first (+24% "overhead" in one quick run, ~0% in the next).
WARM_UP_SECONDS = 2.0
MB = 1024 * 1024

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


# --------------------------------------------------------------------------- process helpers


def become_subreaper() -> None:
    """Orphans of a stack (e.g. after SIGTERM to its first process) get reparented to us, so
    they can be counted and killed instead of leaking to init."""
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """The root and all its live descendants."""
    parents = parent_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root] if root in parents else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_mb(root: int) -> tuple[float, int]:
    """PSS summed over every process of the tree, in MiB, and the number of processes."""
    tree = process_tree(root)
    return sum(pss_kib(pid) for pid in tree) / 1024, len(tree)


def alive(pids: list[int]) -> list[int]:
    live = parent_map()
    return [pid for pid in pids if pid in live]


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state owned by any of the given processes."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# --------------------------------------------------------------------------- stacks


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


@dataclass
class LoadCell:
    path: str  # "nginx" or "direct"
    clients: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    slice_throughputs: list[float] = field(default_factory=list)  # in the order they ran


def paired_overhead(nginx: LoadCell, direct: LoadCell) -> float | None:
    """Median over rounds of 1 - nginx/direct, each round's two slices run back to back.
    A burst of background load lands in one slice and skews the pooled ratio; the median of
    the pairs is barely moved by it."""
    pairs = [
        1 - n / d
        for n, d in zip(nginx.slice_throughputs, direct.slice_throughputs, strict=False)
        if d > 0
    ]
    return statistics.median(pairs) if pairs else None


@dataclass
class StackResult:
    name: str
    bind_empty_s: float | None = None
    ready_empty_s: float | None = None
    bind_warm_s: float | None = None
    ready_warm_s: float | None = None
    idle_pss_mb: float | None = None
    idle_processes: int | None = None
    peak_pss_mb: float | None = None
    load_average: str | None = None  # 1-minute load average right after this stack's load
    mix: dict[str, float] | None = None  # the resilience load test's mix, see run_artifact_mix
    sigterm_first_s: float | None = None
    sigterm_first_left: int | None = None
    sigterm_all_s: float | None = None
    sigterm_all_left: int | None = None
    mlflow_ports_found: int = 0
    load: list[LoadCell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------- load


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def create_runs(base: str, auth: tuple[str, str] | None, count: int) -> list[str]:
    with requests.Session() as session:
        session.auth = auth
        name = f"bench-{secrets.token_hex(4)}"
        reply = session.post(
            f"{base}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=30
        )
        reply.raise_for_status()
        experiment_id = reply.json()["experiment_id"]
        runs = []
        for _ in range(count):
            reply = session.post(
                f"{base}/api/2.0/mlflow/runs/create",
                json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)},
                timeout=30,
            )
            reply.raise_for_status()
            runs.append(reply.json()["run"]["info"]["run_id"])
        return runs


@dataclass
class LoadSample:
    """Raw figures of one timed slice of load: per-request latencies, errors, seconds."""

    latencies: list[float]
    errors: int
    seconds: float


def log_metric_load(
    bases: list[str], auth: tuple[str, str] | None, clients: int, seconds: float, keep_alive: bool
) -> LoadSample:
    """`clients` threads, each with its own session and run, POST log-metric for `seconds`;
    client i sends to ``bases[i % len(bases)]`` (one per MLflow worker port on the direct
    path: an even split). Without keep_alive every request asks for `Connection: close` (a
    fresh connection each time, as the recipe's nginx opens to MLflow)."""
    run_ids = create_runs(bases[0], auth, clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]
    max_requests = int(seconds * 2000)  # bound on every loop, far above what a client reaches

    def client(index: int) -> None:
        with requests.Session() as session:
            session.auth = auth
            if not keep_alive:
                session.headers["Connection"] = "close"
            url = f"{bases[index % len(bases)]}{LOG_METRIC_PATH}"

            def one(step: int) -> bool:
                body = {
                    "run_id": run_ids[index],
                    "key": "loss",
                    "value": step * 0.5,
                    "timestamp": int(time.time() * 1000),
                    "step": step,
                }
                try:
                    return session.post(url, json=body, timeout=30).status_code == 200
                except requests.RequestException:
                    return False

            for step in range(3):  # warm-up: open the keep-alive connection
                one(-1 - step)
            barrier.wait()
            for step in range(max_requests):
                if time.monotonic() >= stop_at[0]:
                    break
                began = time.perf_counter()
                ok = one(step)
                latencies[index].append(time.perf_counter() - began)
                if not ok:
                    errors[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + 3600  # set for real once everyone is warm
    barrier.wait()
    began = time.monotonic()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.monotonic() - began
    return LoadSample([v for per in latencies for v in per], sum(errors), elapsed)


def summarize(path: str, clients: int, samples: list[LoadSample]) -> LoadCell:
    merged = sorted(value for sample in samples for value in sample.latencies)
    errors = sum(sample.errors for sample in samples)
    elapsed = sum(sample.seconds for sample in samples)
    return LoadCell(
        path=path,
        clients=clients,
        requests=len(merged),
        errors=errors,
        seconds=round(elapsed, 2),
        throughput=round((len(merged) - errors) / elapsed, 1),
        p50_ms=round(percentile(merged, 0.50) * 1000, 1),
        p99_ms=round(percentile(merged, 0.99) * 1000, 1),
        slice_throughputs=[
            round((len(s.latencies) - s.errors) / s.seconds, 1) for s in samples if s.seconds
        ],
    )


class PeakSampler:
    """Samples the tree's PSS every 0.25 s in a background thread; keeps the maximum."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(0.25):
            self.peak = max(self.peak, tree_pss_mb(self.root)[0])

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, tree_pss_mb(self.root)[0])


def run_artifact_mix(base: str, auth: tuple[str, str], seconds: float) -> dict[str, float]:
    """16 real MLflow clients doing what tests/resilience/test_load.py does (log-metric, a
    param every 10th and a small artifact upload every 25th operation) for `seconds`."""
    from mlflow.tracking import MlflowClient

    from tests.resilience.test_load import CLIENTS, ClientLog, client_loop

    saved = dict(os.environ)
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ.pop(name, None)  # the clients get only the URL and the login
        os.environ.update(
            MLFLOW_TRACKING_USERNAME=auth[0],
            MLFLOW_TRACKING_PASSWORD=auth[1],
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            MLFLOW_HTTP_POOL_MAXSIZE=str(CLIENTS),
        )
        client = MlflowClient(tracking_uri=base)
        experiment_id = client.create_experiment(f"mix-{secrets.token_hex(4)}")
        logs = [ClientLog(client.create_run(experiment_id).info.run_id) for _ in range(CLIENTS)]
        began = time.monotonic()
        threads = [
            threading.Thread(target=client_loop, args=(client, log, began + seconds), daemon=True)
            for log in logs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        elapsed = time.monotonic() - began
    finally:
        os.environ.clear()
        os.environ.update(saved)
    latencies = sorted(value for log in logs for value in log.latencies)
    return {
        "seconds": round(elapsed, 1),
        "operations_per_second": round(len(latencies) / elapsed, 1),
        "artifacts": sum(len(log.artifacts) for log in logs),
        "errors": sum(len(log.errors) for log in logs),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


def find_mlflow_ports(running: Running, public_port: int) -> list[int]:
    """MLflow's own loopback ports (ours: one per worker): the listening ports of the tree
    other than $PORT that serve the readiness path without auth."""
    found = []
    for port in sorted(listening_ports(running.remember_tree()) - {public_port}):
        try:
            if requests.get(f"http://127.0.0.1:{port}{READY_PATH}", timeout=10).ok:
                found.append(port)
        except requests.RequestException:
            continue
    return found


# --------------------------------------------------------------------------- one stack


LoadRunner = Callable[[list[str], "tuple[str, str] | None", int, float, bool], LoadSample]


def load_runner(pool: concurrent.futures.Executor) -> LoadRunner:
    """Runs ``log_metric_load`` in the pool's process. The clients must not share a GIL with
    this process's bookkeeping: the thread reading each stack's output handles one access-log
    line per request through nginx (none on the direct path), which made nginx look up to
    ~10% slower at one client than it is."""

    def run(
        bases: list[str],
        auth: tuple[str, str] | None,
        clients: int,
        seconds: float,
        keep_alive: bool,
    ) -> LoadSample:
        return pool.submit(log_metric_load, bases, auth, clients, seconds, keep_alive).result()

    return run


def bench_stack(
    stack: Stack,
    services: dict[str, str],
    workdir: Path,
    args: argparse.Namespace,
    load: LoadRunner,
) -> StackResult:
    result = StackResult(stack.name)
    stack_dir = workdir / stack.database
    stack_dir.mkdir()
    stack_dir.chmod(0o755)  # nginx workers of the recipe run as nobody and read the htpasswd
    port = free_port()
    user, password = "bench-user", secrets.token_urlsafe(18)
    auth = (user, password)
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
        MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password,
        # Loopback only: no usage telemetry from either stack.
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        BENCH_WORKDIR=str(stack_dir),
        DYNO="web.1",  # as on Heroku (the recipe ignores it)
        MLFLOW_HEROKU_LISTEN_ADDRESS="127.0.0.1",  # but on loopback only
    )
    env.update(stack.env)
    stack.prepare(stack_dir, env)
    log = stack_dir / "stack.log"

    running, result.bind_empty_s, result.ready_empty_s = launch(stack, env, log, port, auth)
    try:
        if result.ready_empty_s is None:
            result.notes.append(f"never ready on an empty database (log: {log})")
            return result
        result.notes.append(phases(running, "empty DB"))
        result.sigterm_first_s, result.sigterm_first_left = running.terminate(to_all=False)
    finally:
        running.kill_everything()

    running, result.bind_warm_s, result.ready_warm_s = launch(stack, env, log, port, auth)
    try:
        if result.ready_warm_s is None:
            result.notes.append(f"never ready on a warm restart (log: {log})")
            return result
        result.notes.append(phases(running, "warm restart"))
        time.sleep(args.settle)
        result.idle_pss_mb, result.idle_processes = tree_pss_mb(running.proc.pid)
        mlflow_ports = find_mlflow_ports(running, port)
        result.mlflow_ports_found = len(mlflow_ports)
        if not mlflow_ports:
            ports = sorted(listening_ports(running.remember_tree()))
            result.notes.append(f"no direct MLflow port found among listening ports {ports}")
        targets: list[tuple[str, list[str], tuple[str, str] | None]] = [
            ("nginx", [f"http://127.0.0.1:{port}"], auth)
        ]
        if mlflow_ports:
            targets.append(("direct", [f"http://127.0.0.1:{p}" for p in mlflow_ports], None))
        # Clients keep their connection to nginx, as the MLflow clients do.
        keep_alive = {"nginx": True, "direct": stack.upstream_keepalive}
        with PeakSampler(running.proc.pid) as sampler:
            for path, bases, path_auth in targets:
                load(bases, path_auth, max(args.client_counts), WARM_UP_SECONDS, keep_alive[path])
            for clients in args.client_counts:
                # Paths alternate in slices (A B B A ...), so drifting background load on
                # this shared machine hits both paths alike.
                samples: dict[str, list[LoadSample]] = {path: [] for path, _, _ in targets}
                for round_index in range(args.rounds):
                    order = targets if round_index % 2 == 0 else targets[::-1]
                    for path, bases, path_auth in order:
                        samples[path].append(
                            load(
                                bases,
                                path_auth,
                                clients,
                                args.duration / args.rounds,
                                keep_alive[path],
                            )
                        )
                for path, _, _ in targets:
                    cell = summarize(path, clients, samples[path])
                    result.load.append(cell)
                    print(f"  {stack.name}: {path} {clients} clients: {cell}", flush=True)
        result.peak_pss_mb = sampler.peak
        result.load_average = Path("/proc/loadavg").read_text().split()[0]
        if stack.artifact_mix and args.mix_seconds > 0:
            with PeakSampler(running.proc.pid) as mix_sampler:
                result.mix = run_artifact_mix(f"http://127.0.0.1:{port}", auth, args.mix_seconds)
            result.mix["peak_pss_mb"] = round(mix_sampler.peak)
            print(f"  {stack.name}: artifact mix: {result.mix}", flush=True)
        result.sigterm_all_s, result.sigterm_all_left = running.terminate(to_all=True)
    finally:
        running.kill_everything()
    return result


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


def prepare_recipe(stack_dir: Path, env: dict[str, str]) -> None:
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


def our_stack(name: str, database: str, workers: int | None, args: argparse.Namespace) -> Stack:
    env = {} if workers is None else {args.workers_env: str(workers)}
    return Stack(
        name,
        [sys.executable, str(REPO / "image" / "entrypoint.py")],
        env,
        database,
        artifact_mix=True,
        upstream_keepalive=True,  # to every worker's own port (forked_workers.py)
    )


# --------------------------------------------------------------------------- report


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def render(results: list[StackResult], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"Run: {machine['date']} · `{machine['command']}` · {machine['nproc']} cores, "
        f"{machine['mem_gib']} GiB RAM · Python {machine['python']} · MLflow {machine['mlflow']}"
        f" · {machine['nginx']} · PostgreSQL 15 · {args.duration:g} s per load cell.",
        "",
        f"Our defaults: WEB_CONCURRENCY={DEFAULTS['WEB_CONCURRENCY']} MLflow workers "
        "(uvicorn, forked by gunicorn from one import), "
        f"DB pool {DEFAULTS['MLFLOW_SQLALCHEMYSTORE_POOL_SIZE']}"
        f"+{DEFAULTS['MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW']} per store (two per worker); "
        f"basic-auth hash bcrypt cost {BCRYPT_COST}: {machine['auth_check_ms']:.1f} ms per check "
        "when nginx runs it (the recipe's apr1 MD5: ~0.3 ms, measured on the development machine).",
        "",
        f"PostgreSQL round trip (`SELECT 1`, measured): {machine['db_round_trip_ms']:.2f} ms"
        + (
            f", through a proxy delaying {machine['db_latency_ms']:g} ms each way."
            if machine["db_latency_ms"]
            else ", on this machine (Heroku Postgres is ~1 ms away: see --db-latency-ms)."
        ),
        "",
        f"Load average before: `{machine['uptime_before']}`; after: `{machine['uptime_after']}`"
        " (other engineers run tests on this machine at the same time: figures are noisy).",
        "",
        "### Start, memory, stop",
        "",
        "| stack | bind $PORT empty DB (s) | first auth 200 empty DB (s) | bind warm (s) "
        "| first auth 200 warm (s) | PSS idle (MB) | processes | PSS peak under load (MB) "
        "| SIGTERM first process → exit (s) / left | SIGTERM all → exit (s) / left "
        "| machine load avg after its load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {fmt(r.bind_empty_s, 2)} | {fmt(r.ready_empty_s)} "
            f"| {fmt(r.bind_warm_s, 2)} | {fmt(r.ready_warm_s)} | {fmt(r.idle_pss_mb, 0)} "
            f"| {fmt(r.idle_processes)} | {fmt(r.peak_pss_mb, 0)} "
            f"| {fmt(r.sigterm_first_s, 2)} / {fmt(r.sigterm_first_left)} "
            f"| {fmt(r.sigterm_all_s, 2)} / {fmt(r.sigterm_all_left)} "
            f"| {r.load_average or 'n/a'} |"
        )
    lines += [
        "",
        "### Authenticated log-metric load (POST /api/2.0/mlflow/runs/log-metric)",
        "",
        "| stack | path | clients | requests | errors | req/s | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.load:
            lines.append(
                f"| {r.name} | {c.path} | {c.clients} | {c.requests} | {c.errors} "
                f"| {c.throughput:.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} |"
            )
    overhead = [
        f"| {r.name} | {n.clients} | {n.throughput:.0f} | {d.throughput:.0f} "
        f"| {100 * (1 - n.throughput / d.throughput):+.1f} "
        f"| {'n/a' if (pair := paired_overhead(n, d)) is None else f'{100 * pair:+.1f}'} "
        f"| {len(n.slice_throughputs)} |"
        for r in results
        for n in r.load
        for d in r.load
        if n.path == "nginx" and d.path == "direct" and n.clients == d.clients and d.throughput
    ]
    if overhead:
        lines += [
            "",
            "### Proxy overhead (throughput lost going through nginx + basic auth)",
            "",
            "| stack | clients | via nginx (req/s) | direct (req/s) | overhead, pooled (%) "
            "| overhead, median of pairs (%) | pairs |",
            "|---|---|---|---|---|---|---|",
            *overhead,
        ]
    mixes = [
        f"| {r.name} | {m['seconds']:.0f} | {m['operations_per_second']:.0f} "
        f"| {m['artifacts']:.0f} | {m['errors']:.0f} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} "
        f"| {m['peak_pss_mb']:.0f} |"
        for r in results
        if (m := r.mix) is not None
    ]
    if mixes:
        lines += [
            "",
            "### The load test's mix (16 MLflow clients: log-metric, params, small artifacts)",
            "",
            "| stack | seconds | operations/s | artifacts | errors | p50 (ms) | p99 (ms) "
            "| PSS peak (MB) |",
            "|---|---|---|---|---|---|---|---|",
            *mixes,
        ]
    lines.append("")
    for r in results:
        lines += [f"- {r.name}: {note}" for note in r.notes]
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, table: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Benchmark\n\n{RESULTS_START}\n{RESULTS_END}\n"
    if RESULTS_START not in text or RESULTS_END not in text:
        text += f"\n{RESULTS_START}\n{RESULTS_END}\n"
    head, rest = text.split(RESULTS_START, 1)
    _old, tail = rest.split(RESULTS_END, 1)
    doc.write_text(f"{head}{RESULTS_START}\n{table}{RESULTS_END}{tail}")


def auth_check_ms(checks: int = 50) -> float:
    """Milliseconds nginx spends per request verifying our htpasswd line (same bcrypt cost;
    crypt() in nginx and the bcrypt library run the same algorithm)."""
    import bcrypt

    password = secrets.token_urlsafe(18)
    hashed = htpasswd_line("user", password).strip().split(":", 1)[1].encode()
    began = time.perf_counter()
    for _ in range(checks):
        assert bcrypt.checkpw(password.encode(), hashed)
    return (time.perf_counter() - began) * 1000 / checks


@contextlib.contextmanager
def db_latency(target_port: int, delay_ms: float) -> Iterator[int]:
    """scripts/db_latency_proxy.py in front of PostgreSQL, delaying delay_ms each way; yields the
    port to connect to and stops the proxy on the way out."""
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "db_latency_proxy.py"),
         str(port), str(target_port), str(delay_ms)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        if proxy.stdout.readline().strip() != "ready":
            sys.exit(f"benchmark: the database latency proxy did not start (exit {proxy.wait()})")
        yield port
    finally:
        proxy.kill()
        proxy.wait()


def with_port(url: str, port: int) -> str:
    """url with another port, every other character as it was (the recipe's shell script
    splits a URL whose password a parser re-encoded with a literal space)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port is not None else parts.netloc
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


def connect_postgres(cluster: Any, port: int) -> psycopg.Connection[Any]:
    """An autocommit connection to the cluster's postgres database, on port (the cluster's
    own or the latency proxy's)."""
    return psycopg.connect(
        host="127.0.0.1", port=port, user=cluster.user, password=cluster.password,
        dbname="postgres", autocommit=True,
    )  # fmt: skip


def round_trip_ms(cluster: Any, port: int, samples: int = 200) -> float:
    """Milliseconds per `SELECT 1` from here to PostgreSQL on port (the proxy's, if any)."""
    with connect_postgres(cluster, port) as conn:
        for _ in range(20):
            conn.execute("SELECT 1").fetchall()
        started = time.perf_counter()
        for _ in range(samples):
            conn.execute("SELECT 1").fetchall()
        return (time.perf_counter() - started) / samples * 1000


def machine_facts(argv: list[str]) -> dict[str, Any]:
    import mlflow  # heavy: imported only for its version string

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["scripts/benchmark.py", *argv]),
        "nproc": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "nginx": nginx.stderr.strip().replace("nginx version: ", ""),
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "auth_check_ms": auth_check_ms(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Full run: scripts/benchmark.py   Quick check: scripts/benchmark.py --quick",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="short load cells (3 s), clients 1 and 16, no extra worker counts",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, help="seconds per load cell (default 10)")
    parser.add_argument(
        "--clients", default="1,4,16", help="comma-separated client counts (default 1,4,16)"
    )
    parser.add_argument(
        "--workers", default="1,2,3",
        help="extra runs of our stack with these worker counts (default 1,2,3; '' for none)",
    )  # fmt: skip
    parser.add_argument(
        "--workers-env", default="WEB_CONCURRENCY",
        help="the entrypoint's worker-count variable (default WEB_CONCURRENCY)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=10,
        help="slices per load cell, alternating nginx and direct (default 10; --quick: 4)",
    )  # fmt: skip
    parser.add_argument(
        "--mix-seconds", type=float, default=20.0,
        help="seconds of the load test's MLflow-client mix per run of our stack "
        "(default 20; --quick: 0 = skip)",
    )  # fmt: skip
    parser.add_argument(
        "--db-latency-ms", type=float, default=0.0,
        help="delay each way between the stacks and PostgreSQL (scripts/db_latency_proxy.py; "
        "0.5 gives ~1.3 ms per round trip, about Heroku Postgres from a dyno; default 0)",
    )  # fmt: skip
    parser.add_argument("--no-recipe", action="store_true", help="skip the 2021 recipe")
    parser.add_argument(
        "--no-ours", action="store_true", help="skip our stack with default settings"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds idle before measuring idle PSS"
    )
    parser.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "benchmark.md",
        help="markdown file whose results block is replaced (default docs/benchmark.md)",
    )  # fmt: skip
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "bench-results",
        help="raw JSON results and logs go here (default bench-results/)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--clients and --workers take comma-separated integers, e.g. 1,4,16")
    if any(c < 1 for c in args.client_counts) or any(w < 1 for w in args.worker_counts):
        parser.error("--clients and --workers take positive integers")
    if args.quick:
        args.duration = 3.0 if args.duration is None else args.duration
        args.client_counts = [1, 16] if args.clients == "1,4,16" else args.client_counts
        args.worker_counts = []
        args.settle = min(args.settle, 2.0)
        args.rounds = min(args.rounds, 4)
        args.mix_seconds = 0.0
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be from 1 to 20")
    args.duration = 10.0 if args.duration is None else args.duration
    if not 0.5 <= args.duration <= 600:
        parser.error("--duration must be between 0.5 and 600 seconds")
    if not 0 <= args.mix_seconds <= 600:
        parser.error("--mix-seconds must be between 0 and 600 seconds")
    if not 0 <= args.db_latency_ms <= 50:
        parser.error("--db-latency-ms must be between 0 and 50 milliseconds")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("nginx", "runuser", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"benchmark: `{tool}` not found on PATH: run scripts/setup test first")
    if not (PG_BIN / "postgres").exists():
        sys.exit(f"benchmark: PostgreSQL 15 not found in {PG_BIN}: run scripts/setup test first")
    if os.geteuid() != 0:
        sys.exit("benchmark: run as root (PostgreSQL is started as the postgres user via runuser)")
    entrypoint = REPO / "image" / "entrypoint.py"
    if not entrypoint.exists() and not (args.no_ours and not args.worker_counts):
        sys.exit(f"benchmark: {entrypoint} is missing: nothing to measure")
    become_subreaper()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: every stack, the PostgreSQL cluster
    # and the S3 server are stopped and their temporary directories removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    machine = machine_facts(argv)
    print(f"load before: {machine['uptime_before']}", flush=True)

    default_workers = int(DEFAULTS["WEB_CONCURRENCY"])
    stacks = (
        []
        if args.no_ours
        else [our_stack(f"ours (defaults, {default_workers}w)", "ours_default", None, args)]
    )
    if not args.no_recipe:
        stacks.append(
            Stack(
                "2021 recipe",
                ["bash", "run.sh"],
                {},
                "recipe",
                prepare=prepare_recipe,
            )
        )
    for workers in args.worker_counts:
        if workers == default_workers and not args.no_ours:
            continue  # the default run measured this already
        stacks.append(our_stack(f"ours workers={workers}", f"ours_w{workers}", workers, args))

    args.results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=args.results_dir))
    workdir.chmod(0o755)
    results: list[StackResult] = []
    # One process for the load clients, started once (spawn: this process has threads).
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    )
    with (
        pool,
        postgres_cluster() as cluster,
        s3_server("bench-artifacts") as s3,
        contextlib.ExitStack() as stack_exit,
    ):
        with connect_postgres(cluster, cluster.port) as conn:
            for stack in stacks:
                conn.execute(f'CREATE DATABASE "{stack.database}"')
        database_port = cluster.port
        if args.db_latency_ms:
            database_port = stack_exit.enter_context(db_latency(cluster.port, args.db_latency_ms))
        machine["db_latency_ms"] = args.db_latency_ms
        machine["db_round_trip_ms"] = round_trip_ms(cluster, database_port)
        services = {
            "database_url": with_port(cluster.url, database_port),
            "s3_endpoint": s3.endpoint_url,
            "bucket": s3.bucket,
            "s3_access_key": s3.access_key,
            "s3_secret_key": s3.secret_key,
            "s3_region": s3.region,
        }
        for stack in stacks:
            print(f"== {stack.name}", flush=True)
            results.append(bench_stack(stack, services, workdir, args, load_runner(pool)))
    machine["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    table = render(results, machine, args)
    (workdir / "results.json").write_text(
        json.dumps({"machine": machine, "results": [asdict(r) for r in results]}, indent=2)
    )
    print(table)
    if not args.no_doc:
        write_doc(args.doc, table)
        print(f"written into {args.doc}; raw results in {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
