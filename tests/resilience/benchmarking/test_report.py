"""scripts/benchmarking/report.py: the report's arithmetic and tables, and the files a run
writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.benchmarking.load import LoadCell, LoadSample, summarize
from scripts.benchmarking.report import StackResult, render, write_results


def machine() -> dict[str, Any]:
    """Machine facts filled with "x" where the report only prints them."""
    names = ("date", "command", "nproc", "mem_gib", "python", "mlflow", "nginx")
    facts: dict[str, Any] = {key: "x" for key in (*names, "uptime_before", "uptime_after")}
    facts.update(auth_check_ms=1.0, db_round_trip_ms=0.02, db_latency_ms=0.0)
    return facts


def render_one_stack(cells: list[LoadCell]) -> str:
    return render([StackResult("ours", load=cells)], machine(), 1.0)


def test_overhead_is_the_throughput_nginx_loses() -> None:
    cells = [
        summarize("nginx", 16, [LoadSample([0.01] * 90, 0, 1.0)]),
        summarize("direct", 16, [LoadSample([0.01] * 100, 0, 1.0)]),
    ]
    assert "| ours | 16 | 90 | 100 | +10.0 |" in render_one_stack(cells)


def test_pooled_and_paired_overhead_are_both_reported() -> None:
    """A burst of background load in one slice skews the pooled ratio, not the paired median."""
    nginx = [LoadSample([0.01] * n, 0, 1.0) for n in (95, 95, 20, 95, 95)]
    direct = [LoadSample([0.01] * 100, 0, 1.0) for _ in range(5)]
    cells = [summarize("nginx", 1, nginx), summarize("direct", 1, direct)]
    assert "| ours | 1 | 80 | 100 | +20.0 | +5.0 | 5 |" in render_one_stack(cells)


def test_a_stack_that_never_started_shows_na_and_its_note() -> None:
    result = StackResult("2021 recipe", notes=["never ready on an empty database (log: x)"])
    table = render([result], machine(), 1.0)
    assert "| 2021 recipe | n/a | n/a |" in table
    assert "- 2021 recipe: never ready on an empty database (log: x)" in table
    assert "### Proxy overhead" not in table  # no load, no overhead rows


def test_the_results_are_written_as_json_and_markdown(tmp_path: Path) -> None:
    cells = [summarize("nginx", 1, [LoadSample([0.01] * 10, 1, 1.0)])]
    results = [StackResult("ours", ready_empty_s=3.5, load=cells)]
    table = render(results, machine(), 1.0)
    raw, markdown = write_results(tmp_path, machine(), results, table)
    assert (raw.parent, markdown.parent) == (tmp_path, tmp_path)
    assert markdown.read_text() == table
    written = json.loads(raw.read_text())
    assert written["machine"]["db_round_trip_ms"] == 0.02
    [stack] = written["results"]
    assert stack["name"] == "ours"
    assert stack["ready_empty_s"] == 3.5
    assert stack["load"][0]["errors"] == 1
    assert stack["load"][0]["throughput"] == 9.0


def test_accounts_are_compared_with_the_shared_login_of_the_same_run() -> None:
    def nginx_cells(requests_per_slice: int) -> list[LoadCell]:
        return [summarize("nginx", 16, [LoadSample([0.01] * requests_per_slice, 0, 1.0)])]

    results = [
        StackResult("ours (defaults, 2w)", key="ours_default", load=nginx_cells(200)),
        StackResult("ours (accounts, 2w)", key="ours_accounts", load=nginx_cells(180)),
    ]
    facts = machine() | {"accounts_check_ms": 12.5}
    table = render(results, facts, 1.0)
    assert "### Accounts vs shared login" in table
    assert "12.5 ms" in table
    assert "| ours (accounts, 2w) | 16 | 200 | 180 | 90 |" in table
    # Without the shared run there is nothing to compare with.
    assert "### Accounts vs shared" not in render(results[1:], facts, 1.0)
