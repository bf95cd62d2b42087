"""image/nginx_graceful_term.c on its own: Debian's nginx, a slow upstream, and SIGTERM (what
Heroku sends) or SIGINT (what Ctrl-C in a terminal sends) to the master and its worker while a
request is in flight."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.services import descendants, free_port, wait_for_port

pytestmark = pytest.mark.integration

UPSTREAM_DELAY_SECONDS = 2.0
BODY = b"slow answer\n" * 1000


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET after UPSTREAM_DELAY_SECONDS; tells the test when a request arrived."""

    arrived = threading.Event()

    def do_GET(self) -> None:
        SlowHandler.arrived.set()
        time.sleep(UPSTREAM_DELAY_SECONDS)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        # Stock nginx on SIGTERM drops the request (what the test shows): no traceback for it.
        with contextlib.suppress(ConnectionError):
            self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads nginx's log
        pass


@pytest.fixture
def slow_upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def nginx_config(prefix: Path, port: int, upstream_port: int) -> Path:
    config = prefix / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""  # the temp dir is private
    config.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}
    }}
}}
"""
    )
    return config


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("preloaded", [True, False], ids=["with the shim", "without"])
def test_stop_signal_to_master_and_worker(
    tmp_path: Path,
    slow_upstream: int,
    nginx_preload: Path,
    preloaded: bool,
    stop_signal: signal.Signals,
) -> None:
    port = free_port()
    config = nginx_config(tmp_path, port, slow_upstream)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin") + ":/usr/sbin"}
    if preloaded:
        env["LD_PRELOAD"] = str(nginx_preload)
    nginx = subprocess.Popen(
        ["nginx", "-e", "stderr", "-p", str(tmp_path), "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for_port(port, 10)
        outcome: list[object] = []

        def request() -> None:
            try:
                reply = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
                outcome.append((reply.status_code, reply.content))
            except requests.RequestException as error:
                outcome.append(type(error).__name__)

        SlowHandler.arrived.clear()
        client = threading.Thread(target=request)
        client.start()
        assert SlowHandler.arrived.wait(10)
        processes = descendants(nginx.pid)
        assert len(processes) == 2  # master + worker
        signalled = time.monotonic()
        signalled_pids = []
        for pid in processes:
            # As on Heroku, a process the first signal already stopped is not an error (a fast
            # stop of the master can take the worker with it before its own signal).
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop_signal)
                signalled_pids.append(pid)
        assert signalled_pids[0] == nginx.pid  # the master, first, always got it
        if preloaded:  # a graceful stop keeps the worker alive for its own signal
            assert signalled_pids == processes
        code = nginx.wait(10)
        took = time.monotonic() - signalled
        client.join(10)
        log = nginx.stdout.read().decode() if nginx.stdout else ""
    finally:
        if nginx.poll() is None:
            os.killpg(nginx.pid, signal.SIGKILL)
            nginx.wait(5)

    assert code == 0, log
    if preloaded:
        # Graceful: the in-flight request completes, then nginx exits by itself.
        assert outcome == [(200, BODY)], log
        assert took >= UPSTREAM_DELAY_SECONDS * 0.5
        assert "signal 3 (SIGQUIT) received" in log, log
        assert f"({stop_signal.name})" not in log
    else:
        # Debian's nginx alone: a fast stop cuts the request (why the shim exists).
        assert outcome != [(200, BODY)], log
        assert took < UPSTREAM_DELAY_SECONDS
        assert f"signal {stop_signal.value} ({stop_signal.name}) received" in log, log
