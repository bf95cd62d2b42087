"""The PostgreSQL the stacks share: connections to it, its round-trip time, and
scripts/db_latency_proxy.py in front of it for --db-latency-ms."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg

from scripts.benchmarking import REPO
from tests.support.services import PostgresCluster, free_port

LATENCY_PROXY = REPO / "scripts" / "db_latency_proxy.py"


@contextlib.contextmanager
def db_latency(target_port: int, delay_ms: float) -> Iterator[int]:
    """scripts/db_latency_proxy.py in front of PostgreSQL, delaying delay_ms each way; yields the
    port to connect to and stops the proxy on the way out."""
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, str(LATENCY_PROXY), str(port), str(target_port), str(delay_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
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


def connect_postgres(cluster: PostgresCluster, port: int) -> psycopg.Connection[Any]:
    """An autocommit connection to the cluster's postgres database, on port (the cluster's
    own or the latency proxy's)."""
    return psycopg.connect(
        host="127.0.0.1", port=port, user=cluster.user, password=cluster.password,
        dbname="postgres", autocommit=True,
    )  # fmt: skip


def round_trip_ms(cluster: PostgresCluster, port: int, samples: int = 200) -> float:
    """Milliseconds per `SELECT 1` from here to PostgreSQL on port (the proxy's, if any)."""
    with connect_postgres(cluster, port) as conn:
        for _ in range(20):
            conn.execute("SELECT 1").fetchall()
        started = time.perf_counter()
        for _ in range(samples):
            conn.execute("SELECT 1").fetchall()
        return (time.perf_counter() - started) / samples * 1000
