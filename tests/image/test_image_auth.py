"""Basic auth in front of everything but GET /health, and every way around it we know.

Requests go over raw sockets where the exact bytes matter. Each unauthenticated probe
sends its own X-Forwarded-For client address, so the failed-login rate limit of one test
never changes another test's answer.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import re
import socket
import uuid

import pytest
import requests

from tests.support.services import Stack

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
_addresses = itertools.count(1)


def client_address() -> str:
    """A fresh TEST-NET-3 address for one probe's X-Forwarded-For."""
    number = next(_addresses)
    return f"203.0.{113 + number // 250}.{number % 250 + 1}"


def raw_exchange(stack: Stack, payload: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def statuses(response_bytes: bytes) -> list[int]:
    """The status codes of every response in a (possibly pipelined) answer."""
    found = []
    for line in response_bytes.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and len(line) >= 12:
            found.append(int(line[9:12]))
    return found


def request_line(
    target: str,
    *,
    version: str = "HTTP/1.1",
    host: str | None = "localhost",
    extra: str = "",
    method: str = "GET",
) -> bytes:
    headers = f"Host: {host}\r\n" if host is not None else ""
    headers += f"X-Forwarded-For: {client_address()}\r\nConnection: close\r\n{extra}"
    return f"{method} {target} {version}\r\n{headers}\r\n".encode()


def assert_no_mlflow_data(answer: bytes) -> None:
    assert b'"experiments"' not in answer
    assert b"<!doctype html>" not in answer.lower()


def test_right_login_passes_wrong_or_missing_login_gets_401(stack: Stack) -> None:
    assert requests.get(stack.url + API, auth=stack.auth, timeout=10).status_code == 200
    headers = {"X-Forwarded-For": client_address()}
    missing = requests.get(stack.url + API, headers=headers, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Basic realm="MLflow"'
    wrong = requests.get(
        stack.url + API, auth=(stack.username, "wrong password"), headers=headers, timeout=10
    )
    assert wrong.status_code == 401
    other_user = requests.get(
        stack.url + API, auth=("someone", stack.password), headers=headers, timeout=10
    )
    assert other_user.status_code == 401


def test_health_is_open_for_get_only(stack: Stack) -> None:
    health = requests.get(stack.url + "/health", timeout=10)
    assert (health.status_code, health.text) == (200, "OK")
    assert requests.head(stack.url + "/health", timeout=10).status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = requests.request(
            method, stack.url + "/health", headers={"X-Forwarded-For": client_address()}, timeout=10
        )
        # 403: limit_except refuses other methods before the login is even checked.
        assert answer.status_code in (401, 403), method
        assert answer.text != "OK"


# Each target names a path trick; none may reach anything but /health without a login.
BYPASS_TARGETS = [
    "/health/../api/2.0/mlflow/experiments/search?max_results=1",
    "/health/%2e%2e/api/2.0/mlflow/experiments/search?max_results=1",
    "/health/%2E%2E%2Fapi%2F2.0%2Fmlflow%2Fexperiments%2Fsearch?max_results=1",
    "/health%2f..%2fapi/2.0/mlflow/experiments/search?max_results=1",
    "/health/%252e%252e/api/2.0/mlflow/experiments/search?max_results=1",
    "/health/..%252fapi/2.0/mlflow/experiments/search?max_results=1",
    "/./api/2.0/mlflow/experiments/search?max_results=1",
    "/%61pi/2.0/mlflow/experiments/search?max_results=1",
    "/HEALTH",
    "/Health/../api/2.0/mlflow/experiments/search?max_results=1",
    "/health/",
    "/health.json",
    "//api/2.0/mlflow/experiments/search?max_results=1",
    "//health/../api/2.0/mlflow/experiments/search?max_results=1",
    "/health;/../api/2.0/mlflow/experiments/search?max_results=1",
    "/health;x=1",
    "/api/2.0/mlflow/experiments/search;/health",
    "/api/2.0/mlflow/experiments/search?x=/health",
    "/api/2.0/mlflow/experiments/search#/health",
    "/health\\..\\api\\2.0\\mlflow\\experiments\\search",
    "/ajax-api/2.0/mlflow/experiments/search?max_results=1",
    "/api/2.0/mlflow-artifacts/artifacts",
    "/",
    "/static-files/index.html",
    "/version",
    "http://localhost/api/2.0/mlflow/experiments/search?max_results=1",
    "http://localhost/health/../api/2.0/mlflow/experiments/search?max_results=1",
    "http://health/api/2.0/mlflow/experiments/search?max_results=1",
    "*",
]


@pytest.mark.parametrize("target", BYPASS_TARGETS)
def test_path_tricks_need_the_login(stack: Stack, target: str) -> None:
    answer = raw_exchange(stack, request_line(target))
    codes = statuses(answer)
    assert codes, answer[:200]
    assert codes[0] in (400, 401, 404), (target, answer[:300])
    assert_no_mlflow_data(answer)


@pytest.mark.parametrize(
    "target",
    [
        "/health",
        "/health?x=1",
        "/health?/../api/2.0/mlflow/experiments/search",
        "/./health",
        "//health",
        "/%68ealth",
        "/x/../health",
        "http://localhost/health",
    ],
)
def test_spellings_of_health_reach_only_health(stack: Stack, target: str) -> None:
    answer = raw_exchange(stack, request_line(target))
    assert statuses(answer) == [200]
    assert answer.endswith(b"\r\n\r\nOK")


@pytest.mark.parametrize(
    "extra",
    [
        "X-Original-URL: /api/2.0/mlflow/experiments/search\r\n",
        "X-Rewrite-URL: /api/2.0/mlflow/experiments/search\r\n",
        "X-Forwarded-Prefix: /api/2.0/mlflow/experiments/search\r\n",
        "X-HTTP-Method-Override: POST\r\n",
    ],
)
def test_rewrite_headers_on_health_reach_only_health(stack: Stack, extra: str) -> None:
    answer = raw_exchange(stack, request_line("/health", extra=extra))
    assert statuses(answer) == [200]
    assert answer.endswith(b"\r\n\r\nOK")


@pytest.mark.parametrize(
    ("host", "version"),
    [
        (None, "HTTP/1.0"),
        ("localhost", "HTTP/1.0"),
        ("health", "HTTP/1.1"),
        ("localhost/health", "HTTP/1.1"),
        ("localhost:1@health", "HTTP/1.1"),
        ("evil.example", "HTTP/1.1"),
        ("", "HTTP/1.1"),
    ],
)
def test_host_and_version_tricks_need_the_login(
    stack: Stack, host: str | None, version: str
) -> None:
    answer = raw_exchange(stack, request_line(API, host=host, version=version))
    codes = statuses(answer)
    assert codes, answer[:300]
    assert codes[0] in (400, 401), answer[:300]
    assert_no_mlflow_data(answer)


def test_very_long_url_and_headers_are_refused(stack: Stack) -> None:
    long_url = raw_exchange(stack, request_line("/health?" + "a" * 40_000))
    assert statuses(long_url)[0] in (400, 414)
    long_header = raw_exchange(stack, request_line(API, extra=f"X-Padding: {'b' * 40_000}\r\n"))
    assert statuses(long_header)[0] in (400, 431, 494)
    assert_no_mlflow_data(long_header)
    many_headers = "".join(f"X-H{index}: {'c' * 1000}\r\n" for index in range(200))
    crowded = raw_exchange(stack, request_line(API, extra=many_headers))
    assert statuses(crowded)[0] in (400, 431, 494)


def _smuggle(stack: Stack, headers: str, body: str) -> bytes:
    """GET /health (the one request nginx forwards to MLflow without a login) with ambiguous
    framing, followed by a hidden login-less API request (which asks nginx to close after it,
    so that the exchange ends without waiting for the timeout)."""
    hidden = f"GET {API} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    payload = (
        f"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {client_address()}\r\n"
        f"{headers}\r\n{body}{hidden}"
    )
    return raw_exchange(stack, payload.encode(), timeout=5)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 100\r\n", "0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", "0\r\n\r\n"),
        ("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        ("Content-Length: 0\r\nContent-Length: 60\r\n", ""),
        ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
    ],
    ids=["CL.TE", "TE.CL", "TE.TE", "TE-space", "CL.CL", "TE-unknown"],
)
def test_request_smuggling_does_not_pass_the_login(stack: Stack, headers: str, body: str) -> None:
    answer = _smuggle(stack, headers, body)
    assert_no_mlflow_data(answer)
    codes = statuses(answer)
    assert codes, answer[:300]
    # At most the outer /health is answered 200; the hidden request, if nginx saw it as one,
    # got nginx's own 401 (or 400).
    assert all(code in (400, 401) for code in codes[1:]), codes
    # Nor did MLflow queue an answer to it on a connection nginx keeps open to it: the next
    # requests (nginx reuses those connections) get their own answers.
    for _ in range(4):
        follow = requests.get(
            stack.url + "/health", headers={"X-Forwarded-For": client_address()}, timeout=5
        )
        assert (follow.status_code, follow.text) == (200, "OK"), follow.text[:300]
        assert_no_mlflow_data(follow.content)


def test_get_health_with_a_body_does_not_smuggle(stack: Stack) -> None:
    hidden = f"GET {API} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    payload = (
        f"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {client_address()}\r\n"
        f"Connection: close\r\nContent-Length: {len(hidden)}\r\n\r\n{hidden}"
    )
    answer = raw_exchange(stack, payload.encode(), timeout=5)
    assert statuses(answer) == [200], answer[:300]  # /health's answer; the body is only a body
    assert_no_mlflow_data(answer)


def test_heroku_router_headers_and_security_headers(stack: Stack) -> None:
    app_host = "mlflow-dev-1a2b3c4d5e6f.herokuapp.com"
    heroku = {
        "Host": app_host,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "198.51.100.20",
        "X-Forwarded-Port": "443",
        "X-Request-Start": "1700000000000",
    }
    api = requests.get(stack.url + API, auth=stack.auth, headers=heroku, timeout=10)
    assert api.status_code == 200
    assert api.headers["Strict-Transport-Security"].startswith("max-age=")
    ui = requests.get(stack.url + "/", auth=stack.auth, headers=heroku, timeout=10)
    assert ui.status_code == 200
    assert "<html" in ui.text.lower()
    for response in (api, ui):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert "," not in response.headers["X-Frame-Options"]  # not doubled with MLflow's
    plain = requests.get(stack.url + API, auth=stack.auth, timeout=10)
    assert "Strict-Transport-Security" not in plain.headers  # no HSTS over plain HTTP
    unauthenticated = requests.get(
        stack.url + "/", headers={**heroku, "X-Forwarded-For": client_address()}, timeout=10
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "nginx/" not in unauthenticated.headers.get("Server", "")  # no version disclosed


def test_ui_writes_from_own_origin_work_foreign_origin_is_rejected(stack: Stack) -> None:
    app_host = "mlflow-dev-1a2b3c4d5e6f.herokuapp.com"
    base = {"Host": app_host, "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.21"}
    create = "/ajax-api/2.0/mlflow/experiments/create"
    same_origin = requests.post(
        stack.url + create,
        auth=stack.auth,
        headers={**base, "Origin": f"https://{app_host}"},
        json={"name": f"ui-write-{uuid.uuid4().hex[:8]}"},
        timeout=10,
    )
    assert same_origin.status_code == 200, same_origin.text
    for origin in (
        "https://evil.example",
        f"http://{app_host}",  # a downgraded scheme is another origin
        f"https://{app_host}.evil.example",
        f"https://evil.example|https://{app_host}",
    ):
        foreign = requests.post(
            stack.url + create,
            auth=stack.auth,
            headers={**base, "Origin": origin},
            json={"name": f"foreign-{uuid.uuid4().hex[:8]}"},
            timeout=10,
        )
        assert foreign.status_code == 403, (origin, foreign.text)
        assert "Cross-origin request blocked" in foreign.text


def test_wrong_passwords_are_rate_limited_per_real_client(stack: Stack) -> None:
    attacker = client_address()
    wrong = requests.auth.HTTPBasicAuth(stack.username, "not the password")
    codes = []
    with requests.Session() as session:
        for index in range(40):
            # The attacker varies the part of X-Forwarded-For it controls; Heroku's router
            # appends the real address last, which is what counts.
            headers = {"X-Forwarded-For": f"10.0.0.{index}, {attacker}"}
            codes.append(
                session.get(stack.url + API, auth=wrong, headers=headers, timeout=10).status_code
            )
        assert codes[0] == 401
        assert codes.count(429) >= 15, codes
        # The right login from the same address still works while the limit holds.
        right = session.get(
            stack.url + API, auth=stack.auth, headers={"X-Forwarded-For": attacker}, timeout=10
        )
        assert right.status_code == 200
        still_limited = session.get(
            stack.url + API, auth=wrong, headers={"X-Forwarded-For": attacker}, timeout=10
        )
        assert still_limited.status_code == 429
        # Another client is not affected.
        bystander = session.get(
            stack.url + API, auth=wrong, headers={"X-Forwarded-For": client_address()}, timeout=10
        )
        assert bystander.status_code == 401


def test_unicode_password_works_through_nginx(stack: Stack) -> None:
    """Browsers and MLflow's client send the login UTF-8 encoded."""
    token = base64.b64encode(f"{stack.username}:{stack.password}".encode()).decode()
    answer = requests.get(stack.url + API, headers={"Authorization": f"Basic {token}"}, timeout=10)
    assert answer.status_code == 200


def test_both_login_paths_work(stack: Stack) -> None:
    """The exact header takes nginx's fast path; any other spelling is checked by bcrypt."""
    token = base64.b64encode(f"{stack.username}:{stack.password}".encode()).decode()
    for header in (f"Basic {token}", f"basic {token}", f"BASIC  {token}"):
        answer = requests.get(stack.url + API, headers={"Authorization": header}, timeout=10)
        assert answer.status_code == 200, header
    wrong = base64.b64encode(f"{stack.username}:{stack.password}!".encode()).decode()
    # nginx compares plain map keys ignoring case: the token with other letter cases (other
    # bytes once decoded) must not pass as the exact header.
    other_cases = (token.swapcase(), token.upper(), token.lower())
    for header in (
        f"Basic {wrong}",
        f"basic {wrong}",
        f"Basic x{token}",
        f"Bearer {token}",
        *(f"Basic {variant}" for variant in other_cases if variant != token),
    ):
        answer = requests.get(
            stack.url + API,
            headers={"Authorization": header, "X-Forwarded-For": client_address()},
            timeout=10,
        )
        assert answer.status_code == 401, header


def test_ui_assets_are_compressed(stack: Stack) -> None:
    index = requests.get(stack.url + "/", auth=stack.auth, timeout=10)
    scripts = re.findall(r'src="([^"]+\.js)"', index.text)
    assert scripts, index.text[:500]
    target = scripts[0] if scripts[0].startswith("/") else "/" + scripts[0].lstrip("./")
    plain = requests.get(
        stack.url + target, auth=stack.auth, headers={"Accept-Encoding": "identity"}, timeout=30
    )
    assert plain.status_code == 200
    compressed = requests.get(
        stack.url + target,
        auth=stack.auth,
        headers={"Accept-Encoding": "gzip"},
        timeout=30,
        stream=True,
    )
    assert compressed.headers.get("Content-Encoding") == "gzip"
    raw = compressed.raw.read(decode_content=False)
    assert len(raw) < len(plain.content) / 2
    assert gzip.decompress(raw) == plain.content


def test_the_remote_assistant_stays_refused(stack: Stack) -> None:
    """MLflow serves its Assistant only to clients on its own host, as uvicorn sees them
    through nginx's X-Forwarded-For (the real client's: Heroku's last entry)."""
    path = "/ajax-api/3.0/mlflow/assistant/providers/claude_code/health"
    for forwarded_for in ("198.51.100.9", "127.0.0.1, 198.51.100.9"):
        refused = requests.get(
            stack.url + path,
            auth=stack.auth,
            headers={"X-Forwarded-For": forwarded_for, "Forwarded": "for=127.0.0.1"},
            timeout=30,
        )
        assert refused.status_code == 403, refused.text
        assert "only accessible from the same host" in refused.text
    # A client on the server's own host gets past that check to the provider's own answer.
    local = requests.get(stack.url + path, auth=stack.auth, timeout=30)
    assert local.status_code != 403, local.text
