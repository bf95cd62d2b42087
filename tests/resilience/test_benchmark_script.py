"""scripts/benchmark.py is run by hand (docs/benchmark.md), not in CI; these checks keep its
command line, input errors and report arithmetic from rotting, and one short run checks that
SIGTERM cleans everything up."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.services import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def render_one_stack(benchmark: ModuleType, cells: list[object]) -> str:
    """The report for one stack with these load cells (machine facts filled with "x")."""
    result = benchmark.StackResult("ours", load=cells)
    names = ("date", "command", "nproc", "mem_gib", "python", "mlflow", "nginx", "uptime_before")
    machine: dict[str, object] = {key: "x" for key in (*names, "uptime_after")}
    machine["auth_check_ms"] = 1.0
    machine["db_round_trip_ms"] = 0.02
    machine["db_latency_ms"] = 0.0
    table: str = benchmark.render([result], machine, argparse.Namespace(duration=1.0))
    return table


def test_help_names_the_modes() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--duration", "--clients", "--workers", "--rounds"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--clients", "1,x"], "--clients"),
        (["--workers", "0"], "--workers"),
        (["--duration", "0"], "--duration"),
        (["--rounds", "0"], "--rounds"),
        (["--db-latency-ms", "60"], "--db-latency-ms"),
        (["--db-latency-ms", "-1"], "--db-latency-ms"),
    ],
)
def test_bad_options_are_named(
    benchmark: ModuleType, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_quick_shortens_everything(benchmark: ModuleType) -> None:
    args = benchmark.parse_args(["--quick"])
    assert args.duration == 3.0
    assert args.client_counts == [1, 16]
    assert args.worker_counts == []
    full = benchmark.parse_args([])
    assert full.duration == 10.0
    assert full.client_counts == [1, 4, 16]


def test_db_latency_proxy_delays_each_way_and_keeps_the_bytes(benchmark: ModuleType) -> None:
    """The proxy behind --db-latency-ms: every round trip takes at least twice the delay, bytes
    arrive whole and in order, and the proxy is gone once the block ends."""
    import socketserver
    import threading

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        before = set(children(os.getpid()))
        with benchmark.db_latency(echo.server_address[1], 5.0) as port:
            proxies = set(children(os.getpid())) - before
            assert len(proxies) == 1
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                times = []
                for index in range(5):
                    message = f"message {index} ".encode() * 1000
                    started = time.monotonic()
                    connection.sendall(message)
                    received = b""
                    while len(received) < len(message):
                        received += connection.recv(65536)
                    times.append(time.monotonic() - started)
                    assert received == message
        echo.shutdown()
    assert min(times) >= 0.010, times  # 5 ms each way
    assert max(times) < 0.5, times
    assert not any(Path(f"/proc/{pid}").exists() for pid in proxies), "proxy left running"


def test_the_database_url_changes_its_port_and_nothing_else(benchmark: ModuleType) -> None:
    url = "postgres://bench:a%20b%24%21%27%3A@127.0.0.1:5432/postgres"
    assert benchmark.with_port(url, 61000) == (
        "postgres://bench:a%20b%24%21%27%3A@127.0.0.1:61000/postgres"
    )


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def test_percentile_and_overhead(benchmark: ModuleType) -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert benchmark.percentile(values, 0.50) == 50.0
    assert benchmark.percentile(values, 0.99) == 99.0
    cells = [
        benchmark.summarize("nginx", 16, [benchmark.LoadSample([0.01] * 90, 0, 1.0)]),
        benchmark.summarize("direct", 16, [benchmark.LoadSample([0.01] * 100, 0, 1.0)]),
    ]
    assert cells[0].throughput == 90.0
    table = render_one_stack(benchmark, cells)
    assert "| ours | 16 | 90 | 100 | +10.0 |" in table


def test_paired_overhead_is_the_median_over_rounds(benchmark: ModuleType) -> None:
    """A burst of background load in one slice skews the pooled ratio, not the paired median."""
    nginx = [benchmark.LoadSample([0.01] * n, 0, 1.0) for n in (95, 95, 20, 95, 95)]
    direct = [benchmark.LoadSample([0.01] * 100, 0, 1.0) for _ in range(5)]
    cells = [benchmark.summarize("nginx", 1, nginx), benchmark.summarize("direct", 1, direct)]
    assert cells[0].slice_throughputs == [95.0, 95.0, 20.0, 95.0, 95.0]
    assert benchmark.paired_overhead(*cells) == pytest.approx(0.05)
    table = render_one_stack(benchmark, cells)
    assert "| ours | 1 | 80 | 100 | +20.0 | +5.0 | 5 |" in table  # pooled vs paired


def _ours(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in text and state != "Z":
                found.append(int(entry.name))
    return found


def _leftovers(before: set[Path], marker: str) -> tuple[list[str], set[Path]]:
    """What a run left: processes that inherited its marker variable (the S3 server, the load
    clients, the stacks) or name one of the new temporary directories (PostgreSQL, started
    with a clean environment), and those directories. All are then removed, so that even a
    failing check leaves nothing behind."""
    paths = set(Path(tempfile.gettempdir()).glob("mlflow-heroku-*")) - before
    # A child that ends on its own once the run has exited is not left behind: the spawn
    # context's resource tracker, for one, stops only when it reads EOF from the dead run.
    deadline = time.monotonic() + 5
    while (pids := {pid for key in (marker, *map(str, paths)) for pid in _ours(key)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    described = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            described.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}")
            os.kill(pid, signal.SIGKILL)
    if pids:
        time.sleep(0.5)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return described, paths


def test_sigterm_stops_every_service_and_removes_their_directories(tmp_path: Path) -> None:
    """SIGTERM in the middle of a run unwinds: the stack, PostgreSQL and the S3 server stop,
    and their temporary directories go (a run killed this way once left a cluster behind)."""
    before = set(Path(tempfile.gettempdir()).glob("mlflow-heroku-*"))
    marker = f"MLFLOW_HEROKU_TEST_RUN={uuid.uuid4().hex}"  # inherited: finds what it leaves
    run = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--no-recipe", "--workers", "", "--no-doc",
         "--results-dir", str(tmp_path / "results")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, marker.split("=")[0]: marker.split("=")[1]},
    )  # fmt: skip
    try:
        # The first stack is up once its runtime directory holds the migration flag.
        deadline = time.monotonic() + 90
        while not any(
            (path / "migrated").exists()
            for path in set(Path(tempfile.gettempdir()).glob("mlflow-heroku-*")) - before
        ):
            assert run.poll() is None, f"the benchmark ended early (exit {run.returncode})"
            assert time.monotonic() < deadline, "no stack started within 90 s"
            time.sleep(0.1)
        started = set(Path(tempfile.gettempdir()).glob("mlflow-heroku-*")) - before
        run.send_signal(signal.SIGTERM)
        code = run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        left_running, left_paths = _leftovers(before, marker)
    assert any(path.name.startswith("mlflow-heroku-pg-") for path in started), started
    assert code == 128 + signal.SIGTERM
    assert left_running == []
    assert left_paths == set()
