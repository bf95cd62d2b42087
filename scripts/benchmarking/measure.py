"""Everything measured for one stack: an empty-database start and SIGTERM to its first
process, then a warm start, idle PSS, the load cells (nginx and direct, alternating) with
their peak PSS, the MLflow-client mix, and SIGTERM to every process."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.benchmarking.load import LoadRunner, LoadSample, run_artifact_mix, summarize
from scripts.benchmarking.machine import load_average
from scripts.benchmarking.memory import PeakSampler, tree_pss_mb
from scripts.benchmarking.processes import listening_ports
from scripts.benchmarking.report import StackResult
from scripts.benchmarking.stacks import Stack, find_mlflow_ports, launch, phases, stack_environment
from tests.support.services import free_port

# Load on each path before the measured slices, thrown away: a fresh worker's first requests
# compile SQL, open pool connections and prepare statements, which otherwise lands on
# whichever path goes first (docs/benchmark.md, "How it measures").
WARM_UP_SECONDS = 2.0


@dataclass
class Settings:
    """The options that shape one stack's measurement (cli.parse_args checks them)."""

    client_counts: list[int]
    duration: float  # seconds per load cell, cut into `rounds` slices per path
    rounds: int
    settle: float  # seconds idle before idle PSS
    mix_seconds: float  # 0: no MLflow-client mix


def bench_stack(
    stack: Stack, services: dict[str, str], workdir: Path, settings: Settings, load: LoadRunner
) -> StackResult:
    result = StackResult(stack.name, key=stack.database)
    stack_dir = workdir / stack.database
    stack_dir.mkdir()
    stack_dir.chmod(0o755)  # nginx workers of the recipe run as nobody and read the htpasswd
    port = free_port()
    auth = ("bench-user", secrets.token_urlsafe(18))
    env = stack_environment(stack, services, stack_dir, port, auth)
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
        time.sleep(settings.settle)
        result.idle_pss_mb, result.idle_processes = tree_pss_mb(running.proc.pid)
        direct_auth = auth if stack.direct_needs_login else None
        mlflow_ports = find_mlflow_ports(running, port, direct_auth)
        result.mlflow_ports_found = len(mlflow_ports)
        if not mlflow_ports:
            ports = sorted(listening_ports(running.remember_tree()))
            result.notes.append(f"no direct MLflow port found among listening ports {ports}")
        targets: list[tuple[str, list[str], tuple[str, str] | None]] = [
            ("nginx", [f"http://127.0.0.1:{port}"], auth)
        ]
        if mlflow_ports:
            direct_bases = [f"http://127.0.0.1:{p}" for p in mlflow_ports]
            targets.append(("direct", direct_bases, direct_auth))
        # Clients keep their connection to nginx, as the MLflow clients do.
        keep_alive = {"nginx": True, "direct": stack.upstream_keepalive}
        with PeakSampler(running.proc.pid) as sampler:
            for path, bases, path_auth in targets:
                clients = max(settings.client_counts)
                load(bases, path_auth, clients, WARM_UP_SECONDS, keep_alive[path])
            for clients in settings.client_counts:
                # Paths alternate in slices (A B B A ...), so drifting background load on
                # this shared machine hits both paths alike.
                samples: dict[str, list[LoadSample]] = {path: [] for path, _, _ in targets}
                for round_index in range(settings.rounds):
                    order = targets if round_index % 2 == 0 else targets[::-1]
                    for path, bases, path_auth in order:
                        seconds = settings.duration / settings.rounds
                        samples[path].append(
                            load(bases, path_auth, clients, seconds, keep_alive[path])
                        )
                for path, _, _ in targets:
                    cell = summarize(path, clients, samples[path])
                    result.load.append(cell)
                    print(f"  {stack.name}: {path} {clients} clients: {cell}", flush=True)
        result.peak_pss_mb = sampler.peak
        result.load_average = load_average()
        if stack.artifact_mix and settings.mix_seconds > 0:
            base = f"http://127.0.0.1:{port}"
            with PeakSampler(running.proc.pid) as mix_sampler:
                result.mix = run_artifact_mix(base, auth, settings.mix_seconds)
            result.mix["peak_pss_mb"] = round(mix_sampler.peak)
            print(f"  {stack.name}: artifact mix: {result.mix}", flush=True)
        result.sigterm_all_s, result.sigterm_all_left = running.terminate(to_all=True)
    finally:
        running.kill_everything()
    return result
