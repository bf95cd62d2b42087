"""scripts/benchmark.py is run by hand (docs/benchmark.md), not in CI. Its parts have their
tests in tests/resilience/benchmarking/ (one module per scripts/benchmarking/ module); these run
the script itself: its command line, one shortest run that writes its results and no doc, and
one short run that SIGTERM cleans up."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.services import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"
# The shortest run there is: our stack alone, one client, one round of the shortest cell.
SHORTEST = [
    "--no-recipe", "--no-accounts", "--workers", "", "--clients", "1", "--rounds", "1",
    "--duration", "0.5", "--settle", "0", "--mix-seconds", "0",
]  # fmt: skip


@pytest.mark.parametrize(
    "command", [[str(SCRIPT)], ["-m", "scripts.benchmarking"]], ids=["script", "module"]
)
def test_help_names_the_modes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--duration", "--clients", "--workers", "--rounds", "--results-dir"):
        assert option in result.stdout


def _ours(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            environment = [f"{key}={value}" for key, value in process.environ().items()]
            text = "\0".join([*process.cmdline(), *environment])
        except psutil.Error:
            continue
        if marker in text:
            found.append(process.pid)
    return found


def _leftovers(private_tmp: Path, marker: str) -> list[str]:
    """What a run left: processes that inherited its marker variable (the S3 server, the load
    clients, the stacks) or name one of its temporary directories (PostgreSQL, started with a
    clean environment). They are killed and the run's TMPDIR removed, so that even a failing
    check leaves nothing behind. Only this run's: other tests on the machine keep theirs."""
    paths = [str(path) for path in private_tmp.glob("mlflow-heroku-*")]
    # A child that ends on its own once the run has exited is not left behind: the spawn
    # context's resource tracker, for one, stops only when it reads EOF from the dead run.
    deadline = time.monotonic() + 5
    while (pids := {pid for key in (marker, *paths) for pid in _ours(key)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    described = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            described.append(f"{pid} {' '.join(process.cmdline())[:80]!r}")
            process.kill()
    if pids:
        time.sleep(0.5)
    shutil.rmtree(private_tmp, ignore_errors=True)
    return described


@contextlib.contextmanager
def private_tmp() -> Iterator[Path]:
    """A TMPDIR for one run, so that its temporary directories (PostgreSQL's, the stacks') are
    told apart from those of tests running beside it. Outside pytest's 0700 tmp_path, and
    reachable by others: PostgreSQL runs as the postgres user."""
    path = Path(tempfile.mkdtemp(prefix="benchmark-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def benchmark_run(
    argv: list[str], tmp: Path, marker: str, capture: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """scripts/benchmark.py with argv and TMPDIR=tmp (its output piped if capture: read it, or
    the pipe fills and the run blocks); killed if still running on the way out. The marker
    variable lets _leftovers find whatever it started."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    run = subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv],
        stdout=output, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(tmp), marker.split("=")[0]: marker.split("=")[1]},
    )  # fmt: skip
    try:
        yield run
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if run.stdout is not None:
            run.stdout.close()


def _docs_digest() -> dict[str, str]:
    """sha256 of README.md and every markdown file under docs/."""
    files = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.mark.integration
def test_a_run_writes_its_results_and_touches_no_doc(tmp_path: Path) -> None:
    """The results go to one new directory under --results-dir, as JSON and as the markdown
    table the run prints; README.md and docs/ stay exactly as they were."""
    docs = _docs_digest()
    marker = f"MLFLOW_HEROKU_TEST_RUN={uuid.uuid4().hex}"
    results_dir = tmp_path / "results"
    with private_tmp() as tmp:
        try:
            argv = [*SHORTEST, "--results-dir", str(results_dir)]
            with benchmark_run(argv, tmp, marker, capture=True) as run:
                assert run.stdout is not None
                output = run.stdout.read()
                code = run.wait(600)
            left_paths = sorted(path.name for path in tmp.glob("mlflow-heroku-*"))
        finally:
            left_running = _leftovers(tmp, marker)
    assert code == 0, output[-3000:]
    assert _docs_digest() == docs
    [run_dir] = [path for path in results_dir.iterdir() if path.is_dir()]
    table = (run_dir / "results.md").read_text()
    assert table in output  # the table printed is the table written
    written = json.loads((run_dir / "results.json").read_text())
    [stack] = written["results"]
    assert stack["name"].startswith("ours (defaults")
    assert stack["ready_warm_s"] is not None
    assert stack["idle_pss_mb"] > 0
    assert {(cell["path"], cell["clients"]) for cell in stack["load"]} == {
        ("nginx", 1),
        ("direct", 1),
    }
    assert stack["sigterm_all_left"] == 0
    assert f"| {stack['name']} | nginx | 1 |" in table
    assert left_running == []
    assert left_paths == []


@pytest.mark.integration
def test_sigterm_stops_every_service_and_removes_their_directories(tmp_path: Path) -> None:
    """SIGTERM in the middle of a run unwinds: the stack, PostgreSQL and the S3 server stop,
    and their temporary directories go (a run killed this way once left a cluster behind)."""
    marker = f"MLFLOW_HEROKU_TEST_RUN={uuid.uuid4().hex}"  # inherited: finds what it leaves
    argv = ["--quick", "--no-recipe", "--no-accounts", "--workers", ""]
    argv += ["--results-dir", str(tmp_path / "results")]
    with private_tmp() as tmp:
        try:
            with benchmark_run(argv, tmp, marker) as run:
                # The first stack is up once its runtime directory holds the migration flag.
                deadline = time.monotonic() + 90
                while not any((path / "migrated").exists() for path in tmp.glob("mlflow-heroku-*")):
                    assert run.poll() is None, f"the benchmark ended early (exit {run.returncode})"
                    assert time.monotonic() < deadline, "no stack started within 90 s"
                    time.sleep(0.1)
                started = {path.name for path in tmp.glob("mlflow-heroku-*")}
                run.send_signal(signal.SIGTERM)
                code = run.wait(60)
            left_paths = sorted(path.name for path in tmp.glob("mlflow-heroku-*"))
        finally:
            left_running = _leftovers(tmp, marker)
    assert any(name.startswith("mlflow-heroku-pg-") for name in started), started
    assert code == 128 + signal.SIGTERM
    assert left_running == []
    assert left_paths == []
