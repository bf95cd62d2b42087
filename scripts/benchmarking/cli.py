"""Options and the run: the shared PostgreSQL and S3 server, then each stack in turn, then the
results written to the run's directory and the table printed."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from mlflow_heroku_runtime.settings import DEFAULTS

from scripts.benchmarking.database import connect_postgres, db_latency, round_trip_ms, with_port
from scripts.benchmarking.load import load_runner
from scripts.benchmarking.machine import machine_facts, uptime
from scripts.benchmarking.measure import Settings, bench_stack
from scripts.benchmarking.processes import become_subreaper
from scripts.benchmarking.report import StackResult, render, write_results
from scripts.benchmarking.stacks import (
    ENTRYPOINT,
    Stack,
    accounts_stack,
    our_stack,
    recipe_stack,
)
from tests.support.services import PG_BIN, TEST_ARTIFACTS, postgres_cluster, s3_server

DESCRIPTION = "Benchmark our tracking-server entrypoint against the 2021 blog recipe, side by side."
DETAILS = """\
Both stacks run on this machine against the same throwaway PostgreSQL 15 cluster and the same
moto S3 server, on free loopback ports. For each stack it measures: seconds to bind $PORT,
seconds to the first authenticated 200 on an empty database and after a warm restart, PSS of
the whole process tree (idle and at the peak of the load), authenticated log-metric throughput
and p50/p99 latency through nginx and directly to MLflow, and SIGTERM to exit (to the first
process, and to every process as Heroku does). It prints a markdown table and writes it
(results.md) and the raw figures (results.json) into a new directory under --results-dir; it
never edits docs/ (docs/benchmark.md says how its results are recorded there).

Run as root or as a user that can run `runuser -u postgres` (PostgreSQL refuses to run as root).

Full run: scripts/benchmark.py   Quick check: scripts/benchmark.py --quick"""
DEFAULT_RESULTS_DIR = TEST_ARTIFACTS / "benchmark"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/benchmark.py",
        description=DESCRIPTION,
        epilog=DETAILS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "docs/benchmark.md says which delay puts it as far away as Heroku Postgres; default 0)",
    )  # fmt: skip
    parser.add_argument("--no-recipe", action="store_true", help="skip the 2021 recipe")
    parser.add_argument(
        "--no-accounts", action="store_true",
        help="skip our stack in accounts mode (MLflow's auth app; compared with the shared login)",
    )  # fmt: skip
    parser.add_argument(
        "--accounts-without-cache", action="store_true",
        help="also run accounts mode with MLflow's credential cache off (a hash per request)",
    )  # fmt: skip
    parser.add_argument(
        "--no-ours", action="store_true", help="skip our stack with default settings"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds idle before measuring idle PSS"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
        help="each run writes results.json, results.md and every stack's log into a new "
        "directory here (default test-artifacts/benchmark/)",
    )  # fmt: skip
    # Older command lines: docs are never edited any more, so --no-doc is what always happens.
    parser.add_argument("--no-doc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--doc", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.doc is not None:
        parser.error(
            "--doc is gone: the benchmark no longer edits docs. Its table is written to "
            "results.md under --results-dir; copy what you keep into docs/benchmark.md by hand"
        )
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--clients and --workers take comma-separated integers, e.g. 1,4,16")
    if any(c < 1 for c in args.client_counts) or any(w < 1 for w in args.worker_counts):
        parser.error("--clients and --workers take positive integers")
    if not args.client_counts:
        parser.error("--clients needs at least one client count, e.g. 1,4,16")
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
    if not 0 <= args.settle <= 600:
        parser.error("--settle must be between 0 and 600 seconds")
    return args


def stacks_to_run(args: argparse.Namespace) -> list[Stack]:
    """Ours with its defaults, ours in accounts mode, the recipe, then ours with each extra
    worker count."""
    default_workers = int(DEFAULTS["WEB_CONCURRENCY"])
    stacks = []
    if not args.no_ours:
        name = f"ours (defaults, {default_workers}w)"
        stacks.append(our_stack(name, "ours_default", None, args.workers_env))
    if not args.no_accounts:
        stacks.append(accounts_stack(f"ours (accounts, {default_workers}w)", "ours_accounts"))
    if args.accounts_without_cache:
        name = f"ours (accounts, no auth cache, {default_workers}w)"
        stacks.append(accounts_stack(name, "ours_accounts_nocache", auth_cache_ttl=0))
    if not args.no_recipe:
        stacks.append(recipe_stack())
    for workers in args.worker_counts:
        if workers == default_workers and not args.no_ours:
            continue  # the default run measured this already
        name = f"ours workers={workers}"
        stacks.append(our_stack(name, f"ours_w{workers}", workers, args.workers_env))
    return stacks


def check_prerequisites(args: argparse.Namespace) -> None:
    for tool in ("nginx", "runuser", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"benchmark: `{tool}` not found on PATH: run scripts/setup test first")
    if not (PG_BIN / "postgres").exists():
        sys.exit(f"benchmark: PostgreSQL 15 not found in {PG_BIN}: run scripts/setup test first")
    if os.geteuid() != 0:
        sys.exit("benchmark: run as root (PostgreSQL is started as the postgres user via runuser)")
    ours_needed = not (args.no_ours and args.no_accounts and not args.worker_counts)
    if not ENTRYPOINT.exists() and ours_needed:
        sys.exit(f"benchmark: {ENTRYPOINT} is missing: nothing to measure")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_prerequisites(args)
    stacks = stacks_to_run(args)
    if not stacks:
        sys.exit(
            "benchmark: --no-ours, --no-accounts, --no-recipe and --workers '' leave nothing "
            "to measure"
        )
    become_subreaper()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: every stack, the PostgreSQL cluster
    # and the S3 server are stopped and their temporary directories removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    machine = machine_facts(argv)
    print(f"load before: {machine['uptime_before']}", flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=args.results_dir))
    run_dir.chmod(0o755)  # the recipe's nginx workers run as nobody and read its htpasswd
    settings = Settings(
        client_counts=args.client_counts,
        duration=args.duration,
        rounds=args.rounds,
        settle=args.settle,
        mix_seconds=args.mix_seconds,
    )
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
            results.append(bench_stack(stack, services, run_dir, settings, load_runner(pool)))
    machine["uptime_after"] = uptime()
    table = render(results, machine, args.duration)
    raw, markdown = write_results(run_dir, machine, results, table)
    print(table)
    print(f"results: {markdown} (table), {raw} (raw figures); stack logs in {run_dir}")
    return 0
