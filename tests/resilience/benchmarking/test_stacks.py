"""scripts/benchmarking/stacks.py: the environment each stack gets, the recipe's files, and a
launched stack timed, stopped by SIGTERM and cleaned up (with a stand-in server, not MLflow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.benchmarking.processes import alive
from scripts.benchmarking.stacks import (
    READY_PATH,
    Stack,
    find_mlflow_ports,
    launch,
    our_stack,
    phases,
    prepare_recipe,
    recipe_stack,
    stack_environment,
)
from tests.support.services import free_port

SERVICES = {
    "database_url": "postgres://u:p@127.0.0.1:5432/postgres",
    "s3_endpoint": "http://127.0.0.1:9000",
    "bucket": "bucket",
    "s3_access_key": "key",
    "s3_secret_key": "secret",
    "s3_region": "us-east-1",
}

# A stand-in stack: a child that sleeps, a server on $PORT that wants the login (answering
# READY_PATH) and one on a second port that does not, as MLflow's own port; "up to date" is
# logged like our migration step logs it.
STAND_IN = f"""\
import base64, http.server, os, subprocess, sys, threading
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
login = "Basic " + base64.b64encode(
    (os.environ["MLFLOW_TRACKING_USERNAME"] + ":" + os.environ["MLFLOW_TRACKING_PASSWORD"]).encode()
).decode()

def handler(check):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            authorized = not check or self.headers["Authorization"] == login
            ok = self.path == {READY_PATH!r} and authorized
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    return Handler

direct = http.server.HTTPServer(("127.0.0.1", 0), handler(False))
threading.Thread(target=direct.serve_forever, daemon=True).start()
print("database up to date", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), handler(True)).serve_forever()
"""


def test_the_environment_is_a_dynos_and_nothing_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "AWS_PROFILE", "DYNO_RAM", "WEB_CONCURRENCY"):
        monkeypatch.setenv(name, "from the shell")
    stack = our_stack("ours workers=3", "ours_w3", 3, "WEB_CONCURRENCY")
    env = stack_environment(stack, SERVICES, tmp_path, 8123, ("user", "pass"))
    assert "from the shell" not in env.values()
    assert env["PORT"] == "8123"
    assert env["DATABASE_URL"] == "postgres://u:p@127.0.0.1:5432/ours_w3"
    assert env["S3_URI"] == "s3://bucket/ours_w3"
    assert env["WEB_CONCURRENCY"] == "3"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("user", "pass")
    assert env["MLFLOW_HEROKU_LISTEN_ADDRESS"] == "127.0.0.1"
    assert env["PATH"].startswith(str(Path(sys.executable).parent))


def test_the_recipe_gets_its_config_login_and_script(tmp_path: Path) -> None:
    env = stack_environment(recipe_stack(), SERVICES, tmp_path, 8123, ("user", "pass word"))
    prepare_recipe(tmp_path, env)
    conf = (tmp_path / "nginx.conf").read_text()
    assert "listen 127.0.0.1:8123;" in conf
    assert f"proxy_pass                          http://127.0.0.1:{env['MLFLOW_PORT']}/;" in conf
    assert env["MLFLOW_PORT"] != "8123"
    user, hashed = (tmp_path / ".htpasswd").read_text().strip().split(":", 1)
    salt = hashed.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-apr1", "-salt", salt, "-stdin"],
        input=b"pass word", capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    assert (user, hashed) == ("user", again)
    assert "pass word" not in conf + (tmp_path / "run.sh").read_text()


def test_a_launched_stack_is_timed_stopped_and_leaves_nothing(tmp_path: Path) -> None:
    port, auth = free_port(), ("user", "secret")
    stack = Stack("stand-in", [sys.executable, "-c", STAND_IN], {}, "stand_in")
    env = stack_environment(stack, SERVICES, tmp_path, port, auth)
    log = tmp_path / "stack.log"
    running, bound, ready = launch(stack, env, log, port, auth)
    try:
        assert bound is not None
        assert ready is not None
        assert bound <= ready < 30
        tree = running.remember_tree()
        assert len(tree) == 2  # the stand-in and its sleeping child
        [direct] = find_mlflow_ports(running, port)
        assert direct != port
        assert "database migrated at" in phases(running, "empty DB")
        exited, left = running.terminate(to_all=True)
        assert exited is not None
        assert left == 0
    finally:
        running.kill_everything()
    assert alive(tree) == []  # an orphan's zombie is init's to reap here (no subreaper)
    assert "database up to date" in log.read_text()
    assert not log.with_name("stack.log.raw").exists()
