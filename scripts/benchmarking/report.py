"""The results of a run: one StackResult per stack, rendered as a markdown table and written,
with the raw figures as JSON, into the run's results directory (never into docs/)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow_heroku_runtime.htpasswd import BCRYPT_COST
from mlflow_heroku_runtime.settings import DEFAULTS

from scripts.benchmarking.load import LoadCell, paired_overhead

# The shared-login run the accounts runs are compared with (cli.stacks_to_run's keys).
SHARED_KEY = "ours_default"
ACCOUNTS_KEYS = ("ours_accounts", "ours_accounts_nocache")
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


@dataclass
class StackResult:
    name: str
    key: str = ""  # the stack's database name: which contender this is (cli.stacks_to_run)
    bind_empty_s: float | None = None
    ready_empty_s: float | None = None
    bind_warm_s: float | None = None
    ready_warm_s: float | None = None
    idle_pss_mb: float | None = None
    idle_processes: int | None = None
    peak_pss_mb: float | None = None
    load_average: str | None = None  # 1-minute load average right after this stack's load
    mix: dict[str, float] | None = None  # the resilience load test's mix (load.run_artifact_mix)
    sigterm_first_s: float | None = None
    sigterm_first_left: int | None = None
    sigterm_all_s: float | None = None
    sigterm_all_left: int | None = None
    mlflow_ports_found: int = 0
    load: list[LoadCell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def render(results: list[StackResult], machine: dict[str, Any], duration: float) -> str:
    """The markdown report: the run's conditions, then start/memory/stop, load, the nginx
    hop's overhead and the MLflow-client mix, one row per stack (and per load cell)."""
    lines = [
        f"Run: {machine['date']} · `{machine['command']}` · {machine['nproc']} cores, "
        f"{machine['mem_gib']} GiB RAM · Python {machine['python']} · MLflow {machine['mlflow']}"
        f" · {machine['nginx']} · PostgreSQL 15 · {duration:g} s per load cell.",
        "",
        f"Our defaults: WEB_CONCURRENCY={DEFAULTS['WEB_CONCURRENCY']} MLflow workers "
        "(uvicorn, forked by gunicorn from one import), "
        f"DB pool {DEFAULTS['MLFLOW_SQLALCHEMYSTORE_POOL_SIZE']}"
        f"+{DEFAULTS['MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW']} per store (two per worker); "
        f"basic-auth hash bcrypt cost {BCRYPT_COST}: {machine['auth_check_ms']:.1f} ms per check "
        "when nginx runs it (the recipe's apr1 MD5 costs less: docs/benchmark.md).",
        "",
        f"PostgreSQL round trip (`SELECT 1`, measured): {machine['db_round_trip_ms']:.2f} ms"
        + (
            f", through a proxy delaying {machine['db_latency_ms']:g} ms each way."
            if machine["db_latency_ms"]
            else ", on this machine (Heroku Postgres is farther away: see --db-latency-ms)."
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
    lines += accounts_rows(results, machine)
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


def accounts_rows(results: list[StackResult], machine: dict[str, Any]) -> list[str]:
    """Accounts mode against the shared login, same run, through nginx: log-metric req/s per
    client count and the ratio."""
    by_key = {r.key: r for r in results}
    shared = by_key.get(SHARED_KEY)
    if shared is None:
        return []
    shared_cells = {c.clients: c for c in shared.load if c.path == "nginx"}
    rows = [
        f"| {r.name} | {c.clients} | {s.throughput:.0f} | {c.throughput:.0f} "
        f"| {100 * c.throughput / s.throughput:.0f} | {c.p99_ms:.1f} |"
        for key in ACCOUNTS_KEYS
        if (r := by_key.get(key)) is not None
        for c in r.load
        if c.path == "nginx" and (s := shared_cells.get(c.clients)) and s.throughput
    ]
    if not rows:
        return []
    return [
        "",
        "### Accounts vs shared login (log-metric via nginx, same run)",
        "",
        f"Shared: nginx checks one login ({shared.name}). Accounts: MLflow's auth app checks "
        "each person's login and permissions; uncached, a login check costs "
        f"{machine.get('accounts_check_ms', 0):.1f} ms (werkzeug's password hash).",
        "",
        "| stack | clients | shared (req/s) | accounts (req/s) | accounts / shared (%) "
        "| accounts p99 (ms) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def write_results(
    run_dir: Path, machine: dict[str, Any], results: list[StackResult], table: str
) -> tuple[Path, Path]:
    """The raw figures (JSON) and the rendered table (markdown) in run_dir; returns both paths."""
    raw = run_dir / RESULTS_JSON
    raw.write_text(
        json.dumps({"machine": machine, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    markdown = run_dir / RESULTS_MARKDOWN
    markdown.write_text(table)
    return raw, markdown
