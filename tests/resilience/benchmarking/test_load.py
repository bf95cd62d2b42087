"""scripts/benchmarking/load.py: statistics of the load, and the load generator against a
stand-in for MLflow's REST API."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest

from scripts.benchmarking.load import (
    LoadSample,
    log_metric_load,
    paired_overhead,
    percentile,
    summarize,
)


def test_percentile_picks_the_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) != percentile([], 0.5)  # nan: no requests, no latency


def test_summarize_counts_only_successes_as_throughput() -> None:
    cell = summarize(
        "nginx", 4, [LoadSample([0.01] * 90, 10, 1.0), LoadSample([0.02] * 50, 0, 0.5)]
    )
    assert (cell.requests, cell.errors, cell.seconds) == (140, 10, 1.5)
    assert cell.throughput == round(130 / 1.5, 1)
    assert cell.slice_throughputs == [80.0, 100.0]
    assert cell.p50_ms == 10.0
    assert cell.p99_ms == 20.0


def test_paired_overhead_is_the_median_over_rounds() -> None:
    nginx = [LoadSample([0.01] * n, 0, 1.0) for n in (95, 95, 20, 95, 95)]
    direct = [LoadSample([0.01] * 100, 0, 1.0) for _ in range(5)]
    cells = [summarize("nginx", 1, nginx), summarize("direct", 1, direct)]
    assert cells[0].slice_throughputs == [95.0, 95.0, 20.0, 95.0, 95.0]
    assert paired_overhead(*cells) == pytest.approx(0.05)
    stalled = summarize("direct", 1, [LoadSample([], 0, 1.0)])  # no pair to divide by
    assert paired_overhead(cells[0], stalled) is None


class FakeMlflow(http.server.BaseHTTPRequestHandler):
    """Answers the three calls the load makes; log-metric with `status`, counting each one
    and the Connection header it came with."""

    status = 200
    lock = threading.Lock()
    log_metrics: ClassVar[list[str]] = []
    runs = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            if self.path.endswith("/experiments/create"):
                reply: dict[str, object] = {"experiment_id": "1"}
            elif self.path.endswith("/runs/create"):
                FakeMlflow.runs += 1
                reply = {"run": {"info": {"run_id": f"run-{FakeMlflow.runs}"}}}
            else:
                self.log_metrics.append(self.headers.get("Connection", ""))
                reply = {}
        body = json.dumps(reply).encode()
        self.send_response(200 if reply else self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def fake_mlflow(status: int) -> Iterator[str]:
    FakeMlflow.status = status
    FakeMlflow.log_metrics = []
    FakeMlflow.protocol_version = "HTTP/1.1"  # keep-alive when the client asks for it
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMlflow) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def test_every_timed_request_is_counted_after_the_warm_up() -> None:
    with fake_mlflow(200) as base:
        sample = log_metric_load([base], None, 2, 0.3, keep_alive=True)
    warm_up = 3 * 2  # three per client, not timed
    assert len(sample.latencies) == len(FakeMlflow.log_metrics) - warm_up > 0
    assert sample.errors == 0
    assert 0.3 <= sample.seconds < 2
    assert "close" not in FakeMlflow.log_metrics


def test_failed_calls_are_errors_and_fresh_connections_ask_to_close() -> None:
    with fake_mlflow(503) as base:
        sample = log_metric_load([base], None, 1, 0.2, keep_alive=False)
    assert sample.errors == len(sample.latencies) > 0
    assert set(FakeMlflow.log_metrics) == {"close"}
