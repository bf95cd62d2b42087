"""scripts/benchmark.py is run by hand (docs/benchmark.md), not in CI; these checks keep its
command line, input errors and report arithmetic from rotting without starting any stack."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
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
