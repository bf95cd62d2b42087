"""The rendered nginx config, checked as text and by a real nginx."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_heroku_runtime import htpasswd, nginx_config
from mlflow_heroku_runtime.settings import DEFAULTS, load_settings

from tests.image.runtime_values import GOOD_ENV, TRICKY_PASSWORDS
from tests.support.nginx_alone import nginx_alone


def _render(
    runtime_dir: Path,
    port: int = 5000,
    worker_user: str = "",
    **changes: Any,
) -> str:
    """The config for alice (password s3cret-pw unless changed) on 127.0.0.1:port, MLflow's
    one worker on port + 1, with the default settings otherwise."""
    settings = dataclasses.replace(
        load_settings(GOOD_ENV),
        **{
            "port": port,
            "username": "alice",
            "password": "s3cret-pw",
            "listen_address": "127.0.0.1",
            **changes,
        },
    )
    return nginx_config.render(
        settings,
        runtime_dir=runtime_dir,
        htpasswd_path=runtime_dir / "htpasswd",
        mlflow_ports=[port + 1],
        worker_user=worker_user,
    )


def test_rendered_config_has_what_heroku_needs(tmp_path: Path) -> None:
    text = _render(tmp_path)
    assert "listen 127.0.0.1:5000 default_server;" in text
    assert "server 127.0.0.1:5001;" in text
    assert "daemon off;" in text
    assert "error_log stderr" in text
    assert "access_log /dev/stdout" in text
    assert "client_max_body_size 5g;" in text
    assert "proxy_request_buffering off;" in text
    assert "s3cret-pw" not in text  # only the base64 Authorization value, for the rate limit
    for directive in (
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
        "pid",
    ):
        line = next(line for line in text.splitlines() if line.strip().startswith(directive + " "))
        assert str(tmp_path) in line, line
    # Slow clients: every client phase has a deadline.
    for directive in (
        "client_header_timeout 10s;",
        "client_body_timeout 30s;",
        "send_timeout 30s;",
    ):
        assert directive in text
    assert "proxy_read_timeout 28s;" in text
    assert "rate=10r/m;" in text  # MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE's default
    # Heroku's Router 2.0 drops an idle connection to a dyno after 90 s; nginx must outlast it,
    # so a request the router sends on a kept connection never meets nginx's close.
    client_idle = re.search(r"^    keepalive_timeout (\d+)s;$", text, re.M)
    assert client_idle is not None
    assert int(client_idle.group(1)) > 90


def test_nginx_answers_a_slow_request_before_herokus_router_does() -> None:
    """Heroku's router gives up on a request without a first byte 30 s after delivering it
    (H12, with its own error page); nginx's read timeout starts a little later, when it has
    passed the request on, so the default must be shorter for nginx's 504 to be what the
    client gets. The value must also reach nginx's config."""
    default = int(DEFAULTS["MLFLOW_HEROKU_PROXY_READ_TIMEOUT"])
    assert 20 <= default <= 28
    assert load_settings(GOOD_ENV).proxy_read_timeout == default


def assert_nginx_accepts(config: Path, prefix: Path) -> None:
    """`nginx -t` on a rendered config (paths in it resolve under prefix)."""
    result = subprocess.run(
        ["nginx", "-t", "-e", "stderr", "-p", str(prefix), "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": os.environ["PATH"] + ":/usr/sbin"},
    )
    assert result.returncode == 0, result.stderr


def _upstream_block(text: str) -> list[str]:
    start = text.index("upstream mlflow {")
    return [
        line.strip()
        for line in text[start : text.index("}", start)].splitlines()[1:]
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_upstream_has_one_server_per_worker_and_keeps_connections(
    tmp_path: Path, workers: int
) -> None:
    """One worker: its port, plainly. Forked workers: each port once with max_conns=1 (an idle
    worker first), the first weighted up (it takes the work while idle), then each as a backup
    for when all are busy (least_conn: the fewest requests). Never marked down. Connections
    are kept, and nginx drops them before uvicorn would; the config passes nginx -t."""
    from mlflow_heroku_runtime import prepare
    from mlflow_heroku_runtime.plan import UPSTREAM_IDLE_SECONDS

    loaded = load_settings({**GOOD_ENV, "WEB_CONCURRENCY": str(workers)})
    ports = prepare.free_loopback_ports(workers, avoid=loaded.port)
    config = prepare.write_nginx_files(loaded, tmp_path, ports)
    lines = _upstream_block(config.read_text())
    keep = ["keepalive 16;", f"keepalive_timeout {UPSTREAM_IDLE_SECONDS}s;"]
    if workers == 1:
        assert lines == [f"server 127.0.0.1:{ports[0]};", *keep]
    else:
        assert lines == [
            "least_conn;",
            *(
                f"server 127.0.0.1:{port} max_conns=1 max_fails=0 weight={100 if i == 0 else 1};"
                for i, port in enumerate(ports)
            ),
            *(f"server 127.0.0.1:{port} max_fails=0 backup;" for port in ports),
            *keep,
        ]
    assert_nginx_accepts(config, tmp_path)


@pytest.mark.parametrize(
    ("max_body_size", "username"),
    [
        ("1g", "alice"),  # the allowed range's ends
        ("5g", "alice"),
        ("5120g", "alice"),
        # A long login makes a long expected header: no map hash bucket limit applies to it.
        ("5g", "u" * 300),
    ],
)
def test_rendered_config_passes_nginx_t(tmp_path: Path, max_body_size: str, username: str) -> None:
    htpasswd.write_htpasswd(tmp_path / "htpasswd", username, "s3cret-pw")
    config = tmp_path / "nginx.conf"
    config.write_text(_render(tmp_path, max_body_size=max_body_size, username=username))
    assert_nginx_accepts(config, tmp_path)


@contextlib.contextmanager
def _nginx_with_login(password: str, htpasswd_password: str | None = None) -> Iterator[str]:
    """The URL of a route nginx passes on to MLflow, on nginx_alone (see there)."""
    with nginx_alone(password, htpasswd_password) as base_url:
        yield f"{base_url}/version"


def _status(url: str, authorization: str) -> int:
    import requests

    return requests.get(url, headers={"Authorization": authorization}, timeout=5).status_code


def _token(password: str) -> str:
    import base64

    return base64.b64encode(f"alice:{password}".encode()).decode()


def test_real_nginx_accepts_the_htpasswd_hashes() -> None:
    """nginx itself (crypt() of the system) verifies what Python wrote, for each password."""
    tokens = [_token(p) for p in TRICKY_PASSWORDS]
    assert any("+" in t for t in tokens)
    assert any("/" in t for t in tokens)
    for password in TRICKY_PASSWORDS:
        token = _token(password)
        wrong = _token(f"{password[:-1]}{'y' if password[-1] != 'y' else 'z'}")
        with _nginx_with_login(password) as url:
            # The exact header (fast path), and a lower-case scheme, which misses the fast
            # path so that bcrypt decides. Past the login, MLflow is absent: 503.
            assert _status(url, f"Basic {token}") == 503, password
            assert _status(url, f"basic {token}") == 503, password
            # The token with its letters' case swapped decodes to other bytes: a wrong login.
            assert _status(url, f"Basic {token.swapcase()}") == 401, password
            assert _status(url, f"Basic {wrong}") == 401, password


@pytest.mark.parametrize("password", [p for p in TRICKY_PASSWORDS if "+" in _token(p)])
def test_the_fast_path_matches_the_exact_header_only(password: str) -> None:
    """With an htpasswd file that accepts no login, only the fast path can let a request
    through: the exact header does; one letter's case or a dropped "+" (a regex operator,
    escaped in the pattern) does not."""
    token = _token(password)
    assert re.fullmatch(
        nginx_config.expected_authorization_pattern("alice", password), f"Basic {token}"
    )
    with _nginx_with_login(password, htpasswd_password="another-password-entirely") as url:
        assert _status(url, f"Basic {token}") == 503
        assert _status(url, f"basic {token}") == 401  # bcrypt's path: that file refuses it
        assert _status(url, f"Basic {token.replace('+', '')}") == 401
        assert _status(url, f"Basic {token.swapcase()}") == 401


def test_forwarded_for_is_trusted_only_behind_herokus_router(tmp_path: Path) -> None:
    on_dyno = _render(tmp_path)
    assert "(?<last_entry>" in on_dyno
    elsewhere = _render(tmp_path, behind_heroku_router=False)
    assert "(?<last_entry>" not in elsewhere
    assert "map $remote_addr $client_address" in elsewhere
    assert load_settings(GOOD_ENV).behind_heroku_router
    assert not load_settings(
        {k: v for k, v in GOOD_ENV.items() if k != "DYNO"}
    ).behind_heroku_router


def test_the_ui_directory_is_the_installed_mlflows_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found without importing MLflow; without its built UI, the start fails saying so."""
    import importlib.util
    import sys

    from mlflow_heroku_runtime.errors import ConfigError

    imported = "mlflow" in sys.modules
    ui_dir = nginx_config.mlflow_ui_dir()
    assert ("mlflow" in sys.modules) == imported
    assert (ui_dir / "index.html").is_file()
    assert ui_dir.parts[-4:] == ("mlflow", "server", "js", "build")
    assert f"alias {ui_dir}/;" in _render(tmp_path)

    fake_package = tmp_path / "mlflow"
    (fake_package / "server").mkdir(parents=True)
    spec = importlib.util.spec_from_file_location(
        "mlflow", fake_package / "__init__.py", submodule_search_locations=[str(fake_package)]
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ConfigError, match=r"UI files are missing .* install the mlflow wheel"):
        _render(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="UI files are missing"):
        nginx_config.mlflow_ui_dir()


def test_accounts_mode_leaves_the_login_to_mlflow(tmp_path: Path) -> None:
    """No password check and no htpasswd in nginx; the Authorization header reaches MLflow;
    MLflow's 401 is counted in @login_failed, the one place limit_req may run (it runs once
    per request); the UI's page comes from MLflow, which asks for the login first."""
    text = _render(tmp_path, login_mode="accounts", username="", password="")
    for gone in ("auth_basic $", "auth_basic_user_file", 'proxy_set_header Authorization ""'):
        assert gone not in text
    assert "error_page 401 = @login_failed;" in text
    assert text.count("limit_req zone=") == 1
    login_failed = text[text.index("location @login_failed {") :]
    login_failed = login_failed[: login_failed.index("}")]
    assert "limit_req zone=auth_failures burst=10 nodelay;" in login_failed
    assert "try_files /login-failed =401;" in login_failed
    assert "limit_req_zone $client_address zone=auth_failures:2m rate=10r/m;" in text
    page = text[text.index("location = / {") :]
    assert "proxy_pass http://mlflow;" in page[: page.index("}")]
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    assert_nginx_accepts(config, tmp_path)
    shared = _render(tmp_path)
    assert "auth_basic $login_realm;" in shared
    assert "@login_failed" not in shared
