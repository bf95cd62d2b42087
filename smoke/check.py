"""The smoke check: each step talks to MLflow's REST API (and its artifact proxy) with requests.

A step either passes or raises ``StepFailedError`` with a reason; the runner reports one line per
step, stops at the first failure, and always deletes what earlier steps created.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import requests.auth

from smoke.target import Target

USER_AGENT = "mlflow-heroku-smoke-check"
ARTIFACT_PROXY_ROOT = "/api/2.0/mlflow-artifacts/artifacts"
ARTIFACT_FILE_NAME = "smoke-check.txt"
EXPERIMENT_PREFIX = "smoke-check-"
# Tag on everything the check creates, so leftovers of an interrupted check are easy to find.
SMOKE_TAG = "mlflow-heroku.smoke-check"


class StepFailedError(Exception):
    """A step's expectation did not hold; the message says what was seen and what to check."""


@dataclass(frozen=True)
class StepResult:
    step: str
    ok: bool
    detail: str
    seconds: float

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return f"{status:<4} {self.step:<10} {self.detail} ({self.seconds:.2f} s)"


@dataclass
class _Created:
    """What the check made on the server, for cleanup."""

    experiment_id: str | None = None
    experiment_name: str | None = None
    run_id: str | None = None
    artifact_path: str | None = None  # relative to the artifact proxy root
    artifact_sent: bool = False  # an upload was attempted, so something may need deleting


def _print_line(result: StepResult) -> None:
    print(result.line(), flush=True)


def _error_text(response: requests.Response) -> str:
    """A short reason from an error response: MLflow's error JSON, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("error_code" in body or "message" in body):
        text = f"{body.get('error_code', '')}: {body.get('message', '')}".strip(": ")
    else:
        text = " ".join(response.text.split())
    return text[:300]


def _status_hint(status: int) -> str:
    hints = {
        301: "redirected: use the https:// URL",
        308: "redirected: use the https:// URL",
        401: "the login was refused: check the username and password",
        403: "MLflow refused the request (Host or Origin not allowed?)",
        413: "nginx refused the body size: raise the stack's maxBodySize",
        429: "too many failed logins from this address: wait a minute, then retry",
        502: "nginx could not reach MLflow: is MLflow running (heroku logs)?",
        503: "the app is not serving (dyno booting, crashed or in maintenance)",
        504: "MLflow did not answer nginx in time",
    }
    return hints.get(status, "")


class SmokeCheck:
    """Run the steps against one target. ``run()`` returns True when every step passed."""

    health_retry_seconds = 2.0  # pause between /health attempts while ``wait`` lasts

    def __init__(
        self,
        target: Target,
        *,
        timeout: float = 30.0,
        wait: float = 0.0,
        report: Callable[[StepResult], None] = _print_line,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.wait = wait
        self.report = report
        self.results: list[StepResult] = []
        self.created = _Created()
        self.token = secrets.token_hex(8)
        self._anonymous = requests.Session()
        self._anonymous.headers["User-Agent"] = USER_AGENT
        self._authenticated = requests.Session()
        self._authenticated.headers["User-Agent"] = USER_AGENT
        # UTF-8, as MLflow's client and browsers send it (requests alone would use Latin-1).
        self._authenticated.auth = requests.auth.HTTPBasicAuth(
            target.username.encode(), target.password.encode()
        )

    # ------------------------------------------------------------------ running

    @property
    def failed_step(self) -> str | None:
        return next((result.step for result in self.results if not result.ok), None)

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("health", self.check_health),
            ("auth", self.check_auth),
            ("experiment", self.create_experiment),
            ("run", self.create_run),
            ("log", self.log_param_and_metric),
            ("artifact", self.round_trip_artifact),
            ("read-back", self.read_back),
        ]

    def run(self) -> bool:
        try:
            for name, step in self.steps():
                if not self._run_step(name, step):
                    break
        finally:
            # Also on KeyboardInterrupt: never leave the check's experiment behind if avoidable.
            if self._has_created_something():
                self._run_step("cleanup", self.clean_up)
            self._anonymous.close()
            self._authenticated.close()
        return self.failed_step is None

    def _run_step(self, name: str, step: Callable[[], str]) -> bool:
        started = time.monotonic()
        try:
            detail = step()
            ok = True
        except StepFailedError as failure:
            detail, ok = str(failure), False
        except requests.ConnectionError as error:
            detail, ok = f"could not connect to {self._host()}: {_connection_reason(error)}", False
        except requests.Timeout:
            detail, ok = f"no answer from {self._host()} within {self.timeout:g} s", False
        except requests.RequestException as error:
            detail, ok = f"request failed: {type(error).__name__}: {error}", False
        except (KeyError, TypeError, ValueError) as error:
            detail = f"unexpected answer from the server ({type(error).__name__}: {error})"
            ok = False
        result = StepResult(name, ok, self._redact(detail), time.monotonic() - started)
        self.results.append(result)
        self.report(result)
        return ok

    def _redact(self, text: str) -> str:
        """Defence in depth: no message may carry the password, whatever produced it."""
        password = self.target.password
        if password:
            for form in {password, urllib.parse.quote(password, safe=""), repr(password)[1:-1]}:
                text = text.replace(form, "***")
        return text

    def _host(self) -> str:
        return urllib.parse.urlsplit(self.target.url).netloc

    def _has_created_something(self) -> bool:
        return self.created.experiment_id is not None

    # ------------------------------------------------------------------ HTTP helpers

    def _api(self, path: str) -> str:
        return f"{self.target.url}/api/2.0/mlflow/{path}"

    def _expect(self, response: requests.Response, what: str, status: int = 200) -> None:
        if response.status_code != status:
            hint = _status_hint(response.status_code)
            reason = _error_text(response)
            message = f"{what}: HTTP {response.status_code}"
            if reason:
                message += f" {reason}"
            if hint:
                message += f" ({hint})"
            raise StepFailedError(message)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        response = self._authenticated.get(self._api(path), params=params, timeout=self.timeout)
        self._expect(response, f"GET {path}")
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self._authenticated.post(self._api(path), json=body, timeout=self.timeout)
        self._expect(response, f"POST {path}")
        return response.json()

    def _artifact_url(self, relative_path: str) -> str:
        return f"{self.target.url}{ARTIFACT_PROXY_ROOT}/{urllib.parse.quote(relative_path)}"

    # ------------------------------------------------------------------ the steps

    def check_health(self) -> str:
        """GET /health without a login answers 200 (retried for ``wait`` seconds)."""
        url = f"{self.target.url}/health"
        deadline = time.monotonic() + self.wait
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self._anonymous.get(url, timeout=self.timeout, allow_redirects=False)
                if response.status_code == 200:
                    waited = f" after {attempts} attempts" if attempts > 1 else ""
                    return f"GET /health answered 200{waited}"
                hint = _status_hint(response.status_code)
                failure: Exception = StepFailedError(
                    f"GET /health answered {response.status_code}, expected 200"
                    + (f" ({hint})" if hint else "")
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                failure = error
            if time.monotonic() >= deadline:
                raise failure
            time.sleep(self.health_retry_seconds)

    def check_auth(self) -> str:
        """The API refuses a request without a login (401) and accepts one with it (200)."""
        url = self._api("experiments/search")
        body = {"max_results": 1}
        anonymous = self._anonymous.post(url, json=body, timeout=self.timeout)
        if anonymous.status_code == 429:
            raise StepFailedError(f"a request without a login answered 429 ({_status_hint(429)})")
        if anonymous.status_code != 401:
            raise StepFailedError(
                f"a request without a login answered {anonymous.status_code}, expected 401: "
                "basic auth is not protecting the API"
            )
        if "basic" not in anonymous.headers.get("WWW-Authenticate", "").lower():
            raise StepFailedError("the 401 answer has no 'WWW-Authenticate: Basic' challenge")
        authenticated = self._authenticated.post(url, json=body, timeout=self.timeout)
        if authenticated.status_code == 401:
            raise StepFailedError(
                f"the login for user {self.target.username!r} was refused (401): check the "
                "username and password (e.g. `pulumi stack output loginPassword --show-secrets`)"
            )
        self._expect(authenticated, "POST experiments/search with the login")
        return "401 without the login, 200 with it"

    def create_experiment(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{EXPERIMENT_PREFIX}{stamp}-{self.token}"
        body = {"name": name, "tags": [{"key": SMOKE_TAG, "value": "true"}]}
        experiment_id = str(self._post("experiments/create", body)["experiment_id"])
        self.created.experiment_id, self.created.experiment_name = experiment_id, name
        return f"created experiment {name!r} (id {experiment_id})"

    def create_run(self) -> str:
        body = {
            "experiment_id": self.created.experiment_id,
            "run_name": "smoke-check",
            "start_time": int(time.time() * 1000),
            "tags": [{"key": SMOKE_TAG, "value": "true"}],
        }
        info = self._post("runs/create", body)["run"]["info"]
        self.created.run_id = str(info["run_id"])
        artifact_uri = str(info["artifact_uri"])
        parsed = urllib.parse.urlsplit(artifact_uri)
        if parsed.scheme != "mlflow-artifacts":
            raise StepFailedError(
                f"run {self.created.run_id} stores artifacts at {artifact_uri!r}, not through "
                "the server's artifact proxy (mlflow-artifacts:): start MLflow with "
                "--artifacts-destination so clients need no S3 keys"
            )
        self.created.artifact_path = f"{parsed.path.strip('/')}/{ARTIFACT_FILE_NAME}"
        return f"created run {self.created.run_id} (artifacts at {artifact_uri})"

    @property
    def _param_value(self) -> str:
        return f"param-{self.token}"

    @property
    def _metric_value(self) -> float:
        return int(self.token[:6], 16) / 1000  # a value unique to this check run

    @property
    def _artifact_content(self) -> bytes:
        return f"mlflow-heroku smoke check {self.token}\n".encode()

    def log_param_and_metric(self) -> str:
        run_id = self.created.run_id
        self._post(
            "runs/log-parameter", {"run_id": run_id, "key": "smoke", "value": self._param_value}
        )
        metric = {
            "run_id": run_id,
            "key": "smoke",
            "value": self._metric_value,
            "timestamp": int(time.time() * 1000),
            "step": 0,
        }
        self._post("runs/log-metric", metric)
        return "logged param 'smoke' and metric 'smoke'"

    def round_trip_artifact(self) -> str:
        assert self.created.artifact_path is not None  # set by create_run
        url = self._artifact_url(self.created.artifact_path)
        content = self._artifact_content
        self.created.artifact_sent = True
        upload = self._authenticated.put(
            url,
            data=content,
            headers={"Content-Type": "application/octet-stream"},
            timeout=self.timeout,
        )
        self._expect(upload, f"PUT {ARTIFACT_PROXY_ROOT}/...")
        download = self._authenticated.get(url, timeout=self.timeout)
        self._expect(download, f"GET {ARTIFACT_PROXY_ROOT}/...")
        if download.content != content:
            raise StepFailedError(
                f"downloaded artifact differs from the upload ({len(download.content)} bytes "
                f"back, {len(content)} sent)"
            )
        return f"uploaded and downloaded {len(content)} bytes through the artifact proxy"

    def read_back(self) -> str:
        run = self._get("runs/get", {"run_id": self.created.run_id})["run"]
        params = {item["key"]: item["value"] for item in run["data"].get("params", [])}
        metrics = {item["key"]: item["value"] for item in run["data"].get("metrics", [])}
        if params.get("smoke") != self._param_value:
            raise StepFailedError(f"param 'smoke' read back as {params.get('smoke')!r}")
        if metrics.get("smoke") != self._metric_value:
            raise StepFailedError(
                f"metric 'smoke' read back as {metrics.get('smoke')!r}, "
                f"logged {self._metric_value!r}"
            )
        listing = self._get("artifacts/list", {"run_id": self.created.run_id})
        listed = {item["path"]: item for item in listing.get("files", [])}
        if ARTIFACT_FILE_NAME not in listed:
            raise StepFailedError(
                f"the run's artifact list lacks {ARTIFACT_FILE_NAME}: {sorted(listed)}"
            )
        return "param, metric and artifact listing match what was logged"

    def clean_up(self) -> str:
        """Delete the artifact, the run and the experiment; try each even if one fails."""
        problems: list[str] = []
        done: list[str] = []
        if self.created.artifact_path is not None and self.created.artifact_sent:
            try:
                response = self._authenticated.delete(
                    self._artifact_url(self.created.artifact_path), timeout=self.timeout
                )
                self._expect(response, "DELETE artifact")
                done.append("artifact")
            except (StepFailedError, requests.RequestException) as error:
                problems.append(str(error))
        for what, path, body in (
            ("run", "runs/delete", {"run_id": self.created.run_id}),
            ("experiment", "experiments/delete", {"experiment_id": self.created.experiment_id}),
        ):
            if next(iter(body.values())) is None:
                continue
            try:
                self._post(path, body)
                done.append(what)
            except (StepFailedError, requests.RequestException) as error:
                problems.append(str(error))
        if problems:
            raise StepFailedError(
                f"could not delete everything (left: experiment {self.created.experiment_name!r}): "
                + "; ".join(problems)
            )
        return f"deleted {', '.join(done)} (MLflow purges deleted runs with `mlflow gc`)"


def _connection_reason(error: requests.ConnectionError) -> str:
    """The innermost cause (e.g. 'Connection refused'), not urllib3's long wrapper text."""
    cause: BaseException | None = error
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause) if cause is not None else str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    return text.split(": ", 1)[-1][:200] if text else type(error).__name__
