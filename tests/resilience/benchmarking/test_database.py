"""scripts/benchmarking/database.py: the latency proxy behind --db-latency-ms, and the
database URL pointed at it."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time

import psutil

from scripts.benchmarking.database import db_latency, with_port


def test_the_proxy_delays_each_way_and_keeps_the_bytes() -> None:
    """Every round trip takes at least twice the delay, bytes arrive whole and in order, and
    the proxy is gone once the block ends."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    def children() -> set[int]:
        return {child.pid for child in psutil.Process(os.getpid()).children()}

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        before = children()
        with db_latency(echo.server_address[1], 5.0) as port:
            proxies = children() - before
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
    assert not any(psutil.pid_exists(pid) for pid in proxies), "proxy left running"


def test_the_database_url_changes_its_port_and_nothing_else() -> None:
    url = "postgres://bench:a%20b%24%21%27%3A@127.0.0.1:5432/postgres"
    assert with_port(url, 61000) == "postgres://bench:a%20b%24%21%27%3A@127.0.0.1:61000/postgres"
    assert with_port("postgres://u:p@127.0.0.1/db", 61000) == "postgres://u:p@127.0.0.1:61000/db"
