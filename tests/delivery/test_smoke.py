"""The smoke check (`python -m smoke`): against the shared local stack, and failing as it should."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from smoke.__main__ import EXIT_OK, EXIT_STEP_FAILED, EXIT_USAGE, main
from smoke.check import (
    ARTIFACT_FILE_NAME,
    EXPERIMENT_PREFIX,
    SmokeCheck,
    StepFailedError,
    StepResult,
)
from smoke.target import Target, TargetError, resolve_target
from tests.support.services import (
    S3Server,
    Stack,
    free_port,
    heroku_env,
    start_stack,
    wait_for_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = ["health", "auth", "experiment", "run", "log", "artifact", "read-back", "cleanup"]


def target_of(stack: Stack, password: str | None = None) -> Target:
    return Target(stack.url, stack.username, stack.password if password is None else password)


def step_names(output: str) -> list[str]:
    """The step column of the one-line-per-step report."""
    return [line.split()[1] for line in output.splitlines() if line.startswith(("ok ", "FAIL "))]


def experiment_state(stack: Stack, name: str) -> str | None:
    """lifecycle_stage of the experiment called name, None if there is none."""
    response = requests.get(
        f"{stack.url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": name},
        auth=stack.auth,
        timeout=30,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    state: str = response.json()["experiment"]["lifecycle_stage"]
    return state


def smoke_experiment_names(output: str) -> list[str]:
    return [
        word.strip("'")
        for line in output.splitlines()
        for word in line.split()
        if word.strip("'").startswith(EXPERIMENT_PREFIX)
    ]


# --------------------------------------------------------------------------- against the stack


def test_passes_against_the_local_stack_and_leaves_nothing_behind(
    stack: Stack, s3: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "MLFLOW_TRACKING_URI": stack.url,
        "MLFLOW_TRACKING_USERNAME": stack.username,
        "MLFLOW_TRACKING_PASSWORD": stack.password,
    }
    code = main([], environ=environ)
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.out + captured.err
    assert step_names(captured.out) == STEPS
    assert all(line.startswith("ok ") for line in captured.out.splitlines()[1:-1])
    assert stack.password not in captured.out + captured.err
    # What it created is deleted: the experiment is in MLflow's trash, the artifact gone from S3.
    (name,) = set(smoke_experiment_names(captured.out))
    assert experiment_state(stack, name) == "deleted"
    stored = s3.keys()
    assert not [key for key in stored if key.endswith(ARTIFACT_FILE_NAME)]


def test_the_module_runs_as_a_command(stack: Stack) -> None:
    """`python -m smoke` end to end in its own process, login from the environment."""
    result = subprocess.run(
        [sys.executable, "-m", "smoke", "--url", stack.url, "--username", stack.username],
        env={**os.environ, "MLFLOW_TRACKING_PASSWORD": stack.password},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"smoke check passed: {len(STEPS)} steps"
    assert stack.password not in result.stdout + result.stderr


def test_a_wrong_password_fails_at_the_auth_step(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "not-the-password-" + stack.password[::-1]
    code = main(["--url", stack.url, "--username", stack.username, "--password", wrong])
    captured = capsys.readouterr()
    assert code == EXIT_STEP_FAILED
    assert step_names(captured.out) == ["health", "auth"]  # stops; nothing was created
    assert "FAIL auth" in captured.out
    assert "was refused (401)" in captured.out
    assert "smoke check failed at step 'auth'" in captured.err
    assert wrong not in captured.out + captured.err


def test_a_failed_step_still_deletes_what_was_created(stack: Stack, s3: S3Server) -> None:
    class BreaksAfterUpload(SmokeCheck):
        def round_trip_artifact(self) -> str:
            super().round_trip_artifact()
            raise StepFailedError("simulated failure after the upload")

    results: list[StepResult] = []
    check = BreaksAfterUpload(target_of(stack), report=results.append)
    assert check.run() is False
    assert [(result.step, result.ok) for result in results] == [
        ("health", True),
        ("auth", True),
        ("experiment", True),
        ("run", True),
        ("log", True),
        ("artifact", False),
        ("cleanup", True),
    ]
    assert check.failed_step == "artifact"
    assert check.created.experiment_name is not None
    assert experiment_state(stack, check.created.experiment_name) == "deleted"
    run = requests.get(
        f"{stack.url}/api/2.0/mlflow/runs/get",
        params={"run_id": check.created.run_id},
        auth=stack.auth,
        timeout=30,
    ).json()["run"]
    assert run["info"]["lifecycle_stage"] == "deleted"
    stored, run_id = s3.keys(), str(check.created.run_id)
    assert not [key for key in stored if run_id in key]


def test_an_unreachable_server_fails_at_health(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code = main(["--url", dead, "--username", "someone"], environ={"MLFLOW_TRACKING_PASSWORD": "x"})
    captured = capsys.readouterr()
    assert code == EXIT_STEP_FAILED
    assert step_names(captured.out) == ["health"]
    assert "could not connect to 127.0.0.1" in captured.out
    assert "connection refused" in captured.out
    assert "smoke check failed at step 'health'" in captured.err


def test_mlflow_down_behind_nginx_fails_at_health(
    s3: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dedicated stack whose database never answers: nginx is up, MLflow never starts."""
    env = heroku_env(
        port=free_port(),
        database_url=f"postgres://nobody:secret@127.0.0.1:{free_port()}/missing",
        s3=s3,
        MLFLOW_HEROKU_DB_WAIT_SECONDS="30",
    )
    down = start_stack(env, wait_ready=False)
    try:
        assert wait_for_port(down.port, 30), down.output()
        code = main(["--url", down.url, "--username", down.username, "--wait", "2"], environ=env)
    finally:
        down.stop()
    captured = capsys.readouterr()
    assert code == EXIT_STEP_FAILED
    assert step_names(captured.out) == ["health"]
    assert "GET /health answered 503, expected 200" in captured.out
    assert down.password not in captured.out + captured.err


# --------------------------------------------------------------------------- messages


class _AlwaysStatus(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def open_api_server() -> Iterator[str]:
    """A server answering 200 to everything: an API left without basic auth."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_api_without_basic_auth_fails_at_auth(open_api_server: str) -> None:
    results: list[StepResult] = []
    check = SmokeCheck(Target(open_api_server, "u", "p" * 20), report=results.append)
    assert check.run() is False
    assert [result.step for result in results] == ["health", "auth"]
    assert "answered 200, expected 401" in results[-1].detail


class _BootingHealth(BaseHTTPRequestHandler):
    """/health answers 503 (as nginx does while MLflow boots) until the third request."""

    health_requests = 0

    def do_GET(self) -> None:
        type(self).health_requests += 1
        self.send_response(503 if type(self).health_requests < 3 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_wait_retries_health_while_the_release_boots() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BootingHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:

        class Quick(SmokeCheck):
            health_retry_seconds = 0.05

        impatient = Quick(Target(url, "u", "p"), wait=0, report=lambda _: None)
        with pytest.raises(StepFailedError, match="answered 503, expected 200"):
            impatient.check_health()
        patient = Quick(Target(url, "u", "p"), wait=10, report=lambda _: None)
        assert patient.check_health() == "GET /health answered 200 after 2 attempts"
    finally:
        server.shutdown()
        server.server_close()


def test_the_password_is_redacted_from_any_step_message() -> None:
    password = "pa$$ w:rd/é"

    class Leaky(SmokeCheck):
        def steps(self) -> list[tuple[str, Callable[[], str]]]:
            def leak() -> str:
                raise StepFailedError(f"server said {password} and {password!r}")

            return [("health", leak)]

    results: list[StepResult] = []
    assert Leaky(Target("http://127.0.0.1:9", "u", password), report=results.append).run() is False
    assert password not in results[0].detail
    assert "***" in results[0].detail


def test_the_login_is_sent_utf8_encoded() -> None:
    """nginx compares bytes: a non-ASCII password must go out as UTF-8, not Latin-1."""
    check = SmokeCheck(Target("http://127.0.0.1:9", "jürgen", "pässwörd-ünïcode"))
    prepared = check._authenticated.prepare_request(requests.Request("GET", "http://127.0.0.1:9/"))
    scheme, encoded = prepared.headers["Authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(encoded) == "jürgen:pässwörd-ünïcode".encode()


def test_help_lists_every_step() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smoke", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    for step in STEPS:
        assert f"\n  {step}" in result.stdout
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert variable in result.stdout


@pytest.mark.parametrize("bad", ["--timeout=0", "--timeout=soon", "--wait=-1"])
def test_bad_numbers_are_usage_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([bad, "--url", "http://127.0.0.1:9"], environ={})
    assert exit_info.value.code == EXIT_USAGE
    assert bad.split("=")[0] in capsys.readouterr().err


# --------------------------------------------------------------------------- the target


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"MLFLOW_TRACKING_PASSWORD": "p"}
    assert main(["--url", "https://[::1", "--username", "u"], environ=environ) == EXIT_USAGE
    assert "not an http(s) URL" in capsys.readouterr().err


def test_missing_settings_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == EXIT_USAGE
    assert "no server given: pass --url, set MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert main(["--url", "https://example.test"], environ={}) == EXIT_USAGE
    assert "no login given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.test", "not an http(s) URL"),
        ("example.test", "not an http(s) URL"),
        ("https://example.test/?x=1", "must not have a query"),
        ("https://user:hunter2-secret@example.test", "contains a login"),
        # Mistyped schemes hide the host from urlsplit: the login must still not be echoed.
        ("mlflow:hunter2-secret@my-app.herokuapp.com", "contains a login"),
        ("https//mlflow:hunter2-secret@example.test", "contains a login"),
        ("https:/mlflow:hunter2-secret@example.test", "contains a login"),
        ("https://[::1", "not an http(s) URL"),  # urlsplit raises on it
        ("https://example.test:port", "not an http(s) URL"),
    ],
)
def test_bad_urls_are_refused_without_echoing_a_login(url: str, problem: str) -> None:
    with pytest.raises(TargetError) as error:
        resolve_target(url=url, username="u", password="p", environ={})
    assert problem in str(error.value)
    assert "hunter2" not in str(error.value)


def test_arguments_win_over_the_stack_and_the_stack_over_the_environment() -> None:
    outputs = {
        "mlflowTrackingUri": "https://stack.example.test/",
        "loginUser": "stack-user",
        "loginPassword": "stack-password",
    }

    def fake_pulumi(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert argv[:5] == ["pulumi", "stack", "output", "--json", "--show-secrets"]
        assert argv[-2:] == ["--stack", "dev"]
        return subprocess.CompletedProcess(argv, 0, json.dumps(outputs), "")

    environ = {
        "MLFLOW_TRACKING_URI": "https://env.example.test",
        "MLFLOW_TRACKING_USERNAME": "env-user",
        "MLFLOW_TRACKING_PASSWORD": "env-password",
    }
    from_stack = resolve_target(pulumi_stack="dev", environ=environ, run=fake_pulumi)
    assert from_stack == Target("https://stack.example.test", "stack-user", "stack-password")
    overridden = resolve_target(
        url="https://arg.example.test",
        username="arg-user",
        pulumi_stack="dev",
        environ=environ,
        run=fake_pulumi,
    )
    assert overridden == Target("https://arg.example.test", "arg-user", "stack-password")
    assert "stack-password" not in repr(from_stack)


def test_a_missing_pulumi_cli_is_explained() -> None:
    def no_cli(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(TargetError) as error:
        resolve_target(pulumi_stack="dev", environ={}, run=no_cli)
    assert "the pulumi CLI was not found on PATH" in str(error.value)
    assert "--url" in str(error.value)


def test_pulumi_failures_and_missing_outputs_are_explained() -> None:
    def failing(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 255, "", "error: no stack named 'dev' found\n")

    with pytest.raises(TargetError) as error:
        resolve_target(pulumi_stack="dev", environ={}, run=failing)
    assert "exit code 255: error: no stack named 'dev' found" in str(error.value)

    def partial(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, '{"appUrl": "https://x.test"}', "")

    with pytest.raises(TargetError) as error:
        resolve_target(pulumi_stack="dev", environ={}, run=partial)
    assert "stack 'dev' has no output 'mlflowTrackingUri' (its outputs: appUrl)" in str(error.value)


def test_pulumi_stack_option_reads_a_real_cli_on_path(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--pulumi-stack runs whatever `pulumi` is on PATH; a stand-in prints the stack's outputs."""
    outputs = {
        "mlflowTrackingUri": stack.url,
        "loginUser": stack.username,
        "loginPassword": stack.password,
    }
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    fake = tmp_path / "pulumi"
    fake.write_text(f'#!/bin/sh\nexec cat "{tmp_path / "outputs.json"}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code = main(["--pulumi-stack", "dev"], environ={})
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.out + captured.err
    assert captured.out.startswith(f"smoke check of {stack.url} as {stack.username!r}")
    assert stack.password not in captured.out + captured.err
