"""An MLflow REST client that retries as MLflow 3.18's own client does, call by call, and
records what each call met (for the restart tests, tests/resilience/test_restart.py).

MLflow 3.18 cannot be installed here (PyPI lacks its mlflow-tracing 3.18.0), and 3.17's
client has no public setting for per-call retry rules, so this is a requests Session with
urllib3's ``Retry`` configured as 3.18 configures it. The rules, from ``mlflow/utils/
rest_utils.py`` and ``mlflow/utils/request_utils.py`` of the mlflow-skinny 3.18.0 wheel:

- Every call: urllib3 ``Retry(total=connect=read=redirect=status=7)`` (the default of
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, so 8 attempts), ``backoff_factor=2``,
  ``backoff_jitter=1.0``, ``respect_retry_after_header=True``, any method,
  ``raise_on_status=False``, and a 120 s timeout per attempt (``MLFLOW_HTTP_REQUEST_TIMEOUT``).
  Between attempts it waits 0, 4, 8, 16, 32, 64, 120 s (plus up to 1 s of jitter), or what a
  Retry-After header asks.
- GETs, and the POSTs whose response message is in ``_RETRY_SAFE_POST_RESPONSES`` (reads, and
  writes the server applies idempotently: LogMetric, LogParam, LogBatch, UpdateRun, SetTag,
  DeleteRun, SearchRuns, ...): retried on 408, 429, 500, 502, 503, 504
  (``_TRANSIENT_FAILURE_RESPONSE_CODES``), on connection and read errors, and on a 413/429/503
  that carries Retry-After.
- Every other POST (CreateExperiment, CreateRun, CreateRegisteredModel, CreateModelVersion,
  CreateLoggedModel, ...: ``_non_idempotent_write_retry_kwargs``): retried only on 408 and 429
  (``_UNPROCESSED_REQUEST_RESPONSE_CODES``: the server did not process the request) and on
  connection errors; a read error (a reset, a timeout) or any other status ends the call,
  since the server may have created the object already.

Each method below names its call's class in 3.18; the client never retries anything itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.adapters
import requests.auth
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util.retry import Retry

MAX_RETRIES = 7
BACKOFF_FACTOR = 2
BACKOFF_JITTER = 1.0
TIMEOUT_SECONDS = 120
TRANSIENT_FAILURE_CODES = frozenset([408, 429, 500, 502, 503, 504])
UNPROCESSED_REQUEST_CODES = frozenset([408, 429])
API = "/api/2.0/mlflow"


class StatusForcelistOnlyRetry(Retry):
    """3.18's retry for writes that are not safe to repeat: a 413/429/503 with Retry-After is
    not retried for its header alone (a proxy may add one after the write committed); a
    retried status still waits as long as the header asks."""

    RETRY_AFTER_STATUS_CODES = frozenset()


def session_with(retry: Retry) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def retry_policy(*, safe_to_repeat: bool) -> Retry:
    retry_class = Retry if safe_to_repeat else StatusForcelistOnlyRetry
    return retry_class(
        total=MAX_RETRIES,
        connect=MAX_RETRIES,
        # False raises the read error itself instead of retrying it.
        read=MAX_RETRIES if safe_to_repeat else False,
        redirect=MAX_RETRIES,
        status=MAX_RETRIES,
        status_forcelist=TRANSIENT_FAILURE_CODES if safe_to_repeat else UNPROCESSED_REQUEST_CODES,
        backoff_factor=BACKOFF_FACTOR,
        backoff_jitter=BACKOFF_JITTER,
        raise_on_status=False,
        respect_retry_after_header=True,
        allowed_methods=None,  # every method, as MLflow sets it
    )


@dataclass(frozen=True)
class Call:
    """One client call as the caller saw it: its time, and each failed attempt before the
    last (``retried``: "connect: ...", "read: ...", "status 503", as urllib3 recorded them)."""

    name: str
    began: float  # time.monotonic()
    seconds: float
    ok: bool
    outcome: str  # "200", "HTTP 503: ...", or the exception that ended it
    retried: tuple[str, ...] = ()


class CallFailedError(Exception):
    def __init__(self, call: Call) -> None:
        super().__init__(f"{call.name} failed after {call.seconds:.1f} s: {call.outcome}")
        self.call = call


@dataclass
class Mlflow318Client:
    """MLflow's REST API at ``url`` with 3.18's retries; every call is kept in ``calls``."""

    url: str
    auth: requests.auth.AuthBase
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        # One session per rule, as MLflow caches one per retry configuration.
        self._safe = session_with(retry_policy(safe_to_repeat=True))
        self._unsafe = session_with(retry_policy(safe_to_repeat=False))
        self._lock = threading.Lock()

    def close(self) -> None:
        self._safe.close()
        self._unsafe.close()

    # ------------------------------------------------------------- calls, by 3.18's class

    def create_experiment(self, name: str) -> str:  # not safe to repeat
        reply = self._call("CreateExperiment", "POST", "/experiments/create", {"name": name})
        experiment_id: str = reply["experiment_id"]
        return experiment_id

    def create_run(self, experiment_id: str, run_name: str) -> str:  # not safe to repeat
        body = {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": int(time.time() * 1000),
        }
        run_id: str = self._call("CreateRun", "POST", "/runs/create", body)["run"]["info"]["run_id"]
        return run_id

    def log_param(self, run_id: str, key: str, value: str) -> None:  # safe
        body = {"run_id": run_id, "key": key, "value": value}
        self._call("LogParam", "POST", "/runs/log-parameter", body)

    def log_metric(self, run_id: str, key: str, value: float, step: int) -> None:  # safe
        body = {
            "run_id": run_id,
            "key": key,
            "value": value,
            "timestamp": int(time.time() * 1000),
            "step": step,
        }
        self._call("LogMetric", "POST", "/runs/log-metric", body)

    def log_batch(  # safe
        self,
        run_id: str,
        metrics: list[dict[str, Any]],
        params: list[dict[str, str]],
        tags: list[dict[str, str]],
    ) -> None:
        body = {"run_id": run_id, "metrics": metrics, "params": params, "tags": tags}
        self._call("LogBatch", "POST", "/runs/log-batch", body)

    def finish_run(self, run_id: str) -> None:  # UpdateRun: safe
        body = {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)}
        self._call("UpdateRun", "POST", "/runs/update", body)

    def get_run(self, run_id: str) -> dict[str, Any]:  # GET: safe
        run: dict[str, Any] = self._call("GetRun", "GET", "/runs/get", {"run_id": run_id})["run"]
        return run

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:  # GET: safe
        reply = self._call(
            "GetMetricHistory",
            "GET",
            "/metrics/get-history",
            {"run_id": run_id, "metric_key": key, "max_results": 25000},
        )
        points: list[dict[str, Any]] = reply.get("metrics", [])
        return points

    def search_runs(self, experiment_id: str) -> list[dict[str, Any]]:  # SearchRuns: safe
        found: list[dict[str, Any]] = []
        page_token = ""
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": 1000}
            if page_token:
                body["page_token"] = page_token
            reply = self._call("SearchRuns", "POST", "/runs/search", body)
            found += reply.get("runs", [])
            page_token = reply.get("next_page_token", "")
            if not page_token:
                return found

    # ------------------------------------------------------------- the one way out

    def _call(self, name: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        safe = method == "GET" or name in RETRY_SAFE_POSTS
        session = self._safe if safe else self._unsafe
        began = time.monotonic()
        retried: tuple[str, ...] = ()
        try:
            response = session.request(
                method,
                f"{self.url}{API}{path}",
                params=body if method == "GET" else None,
                json=body if method != "GET" else None,
                auth=self.auth,
                timeout=TIMEOUT_SECONDS,
            )
            history = getattr(response.raw, "retries", None)
            retried = tuple(_attempt(entry) for entry in getattr(history, "history", ()))
            ok = response.status_code == 200
            outcome = "200" if ok else f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as error:
            ok, outcome = False, f"{type(error).__name__}: {error}"
        call = Call(name, began, time.monotonic() - began, ok, outcome, retried)
        with self._lock:
            self.calls.append(call)
        if not ok:
            raise CallFailedError(call)
        reply: dict[str, Any] = response.json()
        return reply


# The POSTs of the methods above that 3.18 lists in _RETRY_SAFE_POST_RESPONSES (by their
# response messages mlflow.LogParam.Response, ...); CreateExperiment and CreateRun are not.
RETRY_SAFE_POSTS = frozenset(["LogParam", "LogMetric", "LogBatch", "UpdateRun", "SearchRuns"])


def _attempt(entry: Any) -> str:
    """One urllib3 RequestHistory entry as text: what made that attempt fail, in urllib3's
    classes (a refused or timed-out connect is a ConnectTimeoutError, NewConnectionError
    included; a reset or timed-out answer a read error)."""
    if entry.error is None:
        return f"status {entry.status}"
    kind = "connect" if isinstance(entry.error, ConnectTimeoutError) else "read"
    return f"{kind}: {type(entry.error).__name__}"
