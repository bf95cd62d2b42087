"""Unit tests of the runtime: DATABASE_URL, env validation, htpasswd, nginx template."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow_heroku_runtime import database_url, htpasswd, nginx_config
from mlflow_heroku_runtime.errors import ConfigError
from mlflow_heroku_runtime.settings import DEFAULTS, load_settings

GOOD_ENV = {
    "DYNO": "web.1",
    "PORT": "5000",
    "DATABASE_URL": "postgres://u:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1",
    "S3_URI": "s3://team-mlflow/artifacts",
    "MLFLOW_TRACKING_USERNAME": "alice",
    "MLFLOW_TRACKING_PASSWORD": "correct horse battery",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-123",
    "AWS_DEFAULT_REGION": "eu-west-1",
}
SECRETS = ("p@ss", "p%40ss", "correct horse battery", "aws-secret-value-123")


# ----------------------------------------------------------------------------- DATABASE_URL

URL_TABLE = [
    # (DATABASE_URL, expected SQLAlchemy URL)
    (
        "postgres://u:pw@db.example.com:5432/d",
        "postgresql+psycopg://u:pw@db.example.com:5432/d?sslmode=require",
    ),
    (
        "postgresql://u:pw@db.example.com/d",
        "postgresql+psycopg://u:pw@db.example.com/d?sslmode=require",
    ),
    (  # "postgres" inside user, host and database name survives (the 2021 sed broke these)
        "postgres://postgres:pw@postgres.internal:5432/postgres_db",
        "postgresql+psycopg://postgres:pw@postgres.internal:5432/postgres_db?sslmode=require",
    ),
    (  # URL-encoded password characters stay encoded exactly once
        "postgres://u:p%40ss%3Aw%2Frd%25@h.example:5432/d",
        "postgresql+psycopg://u:p%40ss%3Aw%2Frd%25@h.example:5432/d?sslmode=require",
    ),
    (  # an explicit sslmode wins
        "postgres://u:pw@h.example:5432/d?sslmode=verify-full",
        "postgresql+psycopg://u:pw@h.example:5432/d?sslmode=verify-full",
    ),
    (  # loopback needs no TLS
        "postgres://u:pw@127.0.0.1:5432/d",
        "postgresql+psycopg://u:pw@127.0.0.1:5432/d",
    ),
    ("postgres://u:pw@localhost/d", "postgresql+psycopg://u:pw@localhost/d"),
    ("postgres://u:pw@[::1]:5432/d", "postgresql+psycopg://u:pw@[::1]:5432/d"),
    (  # other query options are kept
        "postgres://u:pw@h.example/d?application_name=mlflow",
        "postgresql+psycopg://u:pw@h.example/d?application_name=mlflow&sslmode=require",
    ),
    (
        "postgresql+psycopg://u:pw@h.example/d",
        "postgresql+psycopg://u:pw@h.example/d?sslmode=require",
    ),
    ("  postgres://u:pw@h.example/d \n", "postgresql+psycopg://u:pw@h.example/d?sslmode=require"),
    (  # an '@' in the query is not the password's
        "postgres://u:pw@h.example/d?application_name=a@b",
        "postgresql+psycopg://u:pw@h.example/d?application_name=a%40b&sslmode=require",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), URL_TABLE)
def test_database_url_rewrites_only_the_scheme(raw: str, expected: str) -> None:
    url = database_url.to_sqlalchemy_url(raw)
    assert url.render_as_string(hide_password=False) == expected


def test_database_url_keeps_the_decoded_password() -> None:
    url = database_url.to_sqlalchemy_url("postgres://u:p%40ss%3Aw%2Frd%25@h.example/d")
    assert url.password == "p@ss:w/rd%"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "DATABASE_URL is empty"),
        ("not a url", "DATABASE_URL is not a database URL"),
        ("mysql://u:pw@h/d", "scheme 'mysql'"),
        ("sqlite:///tmp/x.db", "scheme 'sqlite'"),
        ("postgresql+psycopg2://u:pw@h/d", "scheme 'postgresql+psycopg2'"),
        ("postgres://u:pw@/d", "has no host"),
        ("postgres://u:pw@h.example:5432", "has no database name"),
        ("postgres://u:secretpw@h.example:99999/d", "invalid port"),
        ("postgres://u:secretpw@h.example:abc/d", "not a database URL (check the port)"),
        ("postgres://u:secretpw@[::1/d", "not a database URL"),
        ("postgres://u:secret@pw@h.example/d", "unencoded '@': URL-encode the password"),
    ],
)
def test_bad_database_urls_are_named_without_the_secret(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL") as raised:
        database_url.to_sqlalchemy_url(raw)
    assert problem in str(raised.value)
    assert "secretpw" not in str(raised.value)
    assert "pw@" not in str(raised.value)


# ----------------------------------------------------------------------------- settings


def test_good_environment_loads() -> None:
    loaded = load_settings(GOOD_ENV)
    assert loaded.port == 5000
    assert loaded.backend_store_uri.startswith("postgresql+psycopg://u:p%40ss@")
    assert loaded.backend_store_uri.endswith("sslmode=require")
    assert loaded.database_description == "ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1"
    assert loaded.artifacts_destination == "s3://team-mlflow/artifacts"
    assert (loaded.workers, loaded.pool_size, loaded.max_overflow) == (2, 3, 1)
    assert loaded.mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert loaded.mlflow_env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert loaded.mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "*"
    assert set(SECRETS) <= set(loaded.secrets)


def test_user_choices_for_mlflow_variables_are_kept() -> None:
    loaded = load_settings(
        {
            **GOOD_ENV,
            "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow.example.com",
            "MLFLOW_DISABLE_TELEMETRY": "false",
            "WEB_CONCURRENCY": "3",
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "4",
        }
    )
    assert loaded.mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "mlflow.example.com"
    assert loaded.mlflow_env["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert loaded.workers == 3
    assert loaded.mlflow_env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "4"


REMOVED_OR_BAD = [
    # (variable, value or None to remove it, expected words in the one problem)
    ("PORT", None, "PORT is not set"),
    ("PORT", "http", "PORT must be a whole number"),
    ("PORT", "70000", "PORT must be from 1 to 65535"),
    ("DATABASE_URL", None, "DATABASE_URL is not set"),
    ("DATABASE_URL", "", "DATABASE_URL is empty"),
    ("DATABASE_URL", "mysql://u:p@h/d", "DATABASE_URL has scheme 'mysql'"),
    ("S3_URI", None, "S3_URI is not set"),
    ("S3_URI", "", "S3_URI is empty"),
    ("S3_URI", "https://bucket/x", "S3_URI must start with s3://"),
    ("S3_URI", "s3://Bad_Bucket/x", "S3_URI has an invalid bucket name"),
    ("S3_URI", "s3://bucket/x?y=1", "S3_URI must not have a query"),
    ("MLFLOW_TRACKING_USERNAME", None, "MLFLOW_TRACKING_USERNAME is not set"),
    ("MLFLOW_TRACKING_USERNAME", "a:b", "MLFLOW_TRACKING_USERNAME must not contain ':'"),
    ("MLFLOW_TRACKING_USERNAME", "a\nb", "MLFLOW_TRACKING_USERNAME contains a control character"),
    ("MLFLOW_TRACKING_PASSWORD", None, "MLFLOW_TRACKING_PASSWORD is not set"),
    ("MLFLOW_TRACKING_PASSWORD", "short", "MLFLOW_TRACKING_PASSWORD is too short"),
    ("MLFLOW_TRACKING_PASSWORD", "é" * 40, "MLFLOW_TRACKING_PASSWORD is longer than 72 bytes"),
    ("MLFLOW_TRACKING_PASSWORD", "long enough\npw", "MLFLOW_TRACKING_PASSWORD contains a control"),
    ("AWS_ACCESS_KEY_ID", None, "AWS_ACCESS_KEY_ID is not set"),
    ("AWS_SECRET_ACCESS_KEY", None, "AWS_SECRET_ACCESS_KEY is not set"),
    ("AWS_DEFAULT_REGION", "Europe", "AWS_DEFAULT_REGION must look like eu-west-1"),
    ("AWS_REGION", "eu_west_1", "AWS_REGION must look like eu-west-1"),
    ("MLFLOW_S3_ENDPOINT_URL", "localhost:9000", "MLFLOW_S3_ENDPOINT_URL must be an http(s)"),
    ("MLFLOW_S3_ENDPOINT_URL", "http://[::1", "MLFLOW_S3_ENDPOINT_URL must be an http(s)"),
    ("MLFLOW_S3_ENDPOINT_URL", "http://h:port", "MLFLOW_S3_ENDPOINT_URL must be an http(s)"),
    ("S3_URI", "s3://[bucket/x", "S3_URI is not a URL"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be from 1 to 16"),
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number"),
    ("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "0", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE must be from 1"),
    ("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "0", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW must be"),
    ("MLFLOW_HEROKU_DB_WAIT_SECONDS", "90", "MLFLOW_HEROKU_DB_WAIT_SECONDS must be from 0 to 50"),
    ("MLFLOW_HEROKU_MAX_BODY_SIZE", "lots", "MLFLOW_HEROKU_MAX_BODY_SIZE must be a size"),
    ("MLFLOW_HEROKU_MAX_BODY_SIZE", "100m", "MLFLOW_HEROKU_MAX_BODY_SIZE must be at least 1g"),
    ("MLFLOW_HEROKU_MAX_BODY_SIZE", "5121g", "MLFLOW_HEROKU_MAX_BODY_SIZE must be at most 5120g"),
    ("MLFLOW_HEROKU_MAX_BODY_SIZE", "9999999999g", "MLFLOW_HEROKU_MAX_BODY_SIZE must be at most"),
    ("MLFLOW_HEROKU_PROXY_READ_TIMEOUT", "1", "MLFLOW_HEROKU_PROXY_READ_TIMEOUT must be from 5"),
    ("MLFLOW_HEROKU_LISTEN_ADDRESS", "localhost", "MLFLOW_HEROKU_LISTEN_ADDRESS must be an IP"),
    ("MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE", "0", "MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE"),
    ("MLFLOW_SERVER_ALLOWED_HOSTS", "a.example,,b", "MLFLOW_SERVER_ALLOWED_HOSTS must be a comma"),
    ("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", " ", "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS must be"),
    ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "maybe", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION must be"),
    ("MLFLOW_DISABLE_TELEMETRY", "yes please", "MLFLOW_DISABLE_TELEMETRY must be true or false"),
    # Bytes that are not UTF-8 (a Latin-1 environment) reach Python as lone surrogates.
    ("MLFLOW_TRACKING_PASSWORD", "p\udce4ssword-12", "MLFLOW_TRACKING_PASSWORD is not valid UTF-8"),
    ("MLFLOW_TRACKING_USERNAME", "j\udcf6rg", "MLFLOW_TRACKING_USERNAME is not valid UTF-8"),
]


@pytest.mark.parametrize(("name", "value", "message"), REMOVED_OR_BAD)
def test_each_bad_variable_has_its_own_message(name: str, value: str | None, message: str) -> None:
    env = dict(GOOD_ENV)
    if value is None:
        env.pop(name, None)
    else:
        env[name] = value
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert len(raised.value.problems) == 1, raised.value.problems
    assert message in raised.value.problems[0]
    for secret in SECRETS:
        assert secret not in str(raised.value)


def test_listen_address_is_all_interfaces_on_a_dyno_unless_set() -> None:
    assert load_settings(GOOD_ENV).listen_address == "0.0.0.0"  # noqa: S104 (the dyno default)
    loopback = {**GOOD_ENV, "MLFLOW_HEROKU_LISTEN_ADDRESS": "127.0.0.1"}
    assert load_settings(loopback).listen_address == "127.0.0.1"
    ipv6 = {**GOOD_ENV, "MLFLOW_HEROKU_LISTEN_ADDRESS": "::1"}
    assert load_settings(ipv6).listen_address == "[::1]"


@pytest.mark.parametrize(
    ("listen_address", "reachable"),
    [
        ("0.0.0.0", "127.0.0.1"),  # noqa: S104 (the dyno default)
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("[::]", "::1"),  # nginx binds [::] IPv6-only
        ("[::1]", "::1"),
    ],
)
def test_the_supervisor_checks_nginx_where_it_listens(listen_address: str, reachable: str) -> None:
    from mlflow_heroku_runtime.settings import reachable_address

    assert reachable_address(listen_address) == reachable


def test_nginx_preload_is_the_variable_or_the_image_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow_heroku_runtime import settings as settings_module

    library = tmp_path / "nginx_graceful_term.so"
    library.write_bytes(b"")
    chosen = {**GOOD_ENV, "MLFLOW_HEROKU_NGINX_PRELOAD": str(library)}
    assert load_settings(chosen).nginx_preload == str(library)
    # Unset: the image's fixed path when the file is there, else None (the supervisor warns).
    monkeypatch.setattr(settings_module, "DEFAULT_NGINX_PRELOAD", library)
    assert load_settings(GOOD_ENV).nginx_preload == str(library)
    monkeypatch.setattr(settings_module, "DEFAULT_NGINX_PRELOAD", tmp_path / "absent.so")
    assert load_settings(GOOD_ENV).nginx_preload is None


@pytest.mark.parametrize("kind", ["missing", "directory", "relative", "empty"])
def test_bad_nginx_preload_is_named(tmp_path: Path, kind: str) -> None:
    value = {
        "missing": str(tmp_path / "absent.so"),
        "directory": str(tmp_path),
        "relative": "nginx_graceful_term.so",
        "empty": "",
    }[kind]
    with pytest.raises(ConfigError) as raised:
        load_settings({**GOOD_ENV, "MLFLOW_HEROKU_NGINX_PRELOAD": value})
    assert raised.value.problems == [
        "MLFLOW_HEROKU_NGINX_PRELOAD must be the absolute path of an existing file "
        "(nginx_graceful_term.so, built from image/nginx_graceful_term.c); unset it to use "
        "/usr/local/lib/mlflow-heroku/nginx_graceful_term.so"
    ]


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"DYNO": "web.1"})
    text = str(raised.value)
    for name in (
        "PORT",
        "DATABASE_URL",
        "S3_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):
        assert name in text


def test_local_mode_is_refused_on_a_dyno(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--local is refused on a Heroku dyno"):
        load_settings(GOOD_ENV, local=True, data_dir=tmp_path)


def test_local_mode_uses_embedded_defaults(tmp_path: Path) -> None:
    loaded = load_settings(
        {}, local=True, data_dir=tmp_path, generate_password=lambda: "generated-pw-123"
    )
    assert loaded.port == 8080
    assert loaded.backend_store_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert loaded.artifacts_destination == str((tmp_path / "artifacts").resolve())
    assert (loaded.username, loaded.password) == ("mlflow", "generated-pw-123")
    assert "MLFLOW_SERVER_ALLOWED_HOSTS" not in loaded.mlflow_env  # MLflow's localhost default
    assert loaded.workers == 1  # SQLite: one writer; a dyno's default is 2
    three = {"WEB_CONCURRENCY": "3", "MLFLOW_TRACKING_PASSWORD": "local-pw-123"}
    assert load_settings(three, local=True, data_dir=tmp_path).workers == 3


URL_PIECES = [
    "postgres://",
    "s3://",
    "http://",
    "u",
    ":",
    "@",
    "%40",
    "%zz",
    "[",
    "]",
    "::1",
    "h.example",
    "/",
    "d",
    "?",
    "sslmode=",
    "&",
    "5432",
    "port",
    "bucket",
    " ",
    "é",
]
KNOWN_VARIABLES = sorted({name for name, _value, _message in REMOVED_OR_BAD})


@settings(max_examples=500, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(KNOWN_VARIABLES),
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
            # URL-shaped values reach the parsers' corners (brackets, ports, '@', escapes).
            st.lists(st.sampled_from(URL_PIECES), max_size=12).map("".join),
        ),
        max_size=4,
    )
)
def test_fuzzed_environment_gives_named_errors_only(changes: dict[str, str]) -> None:
    """Any values: either valid settings or ConfigError lines that each name a variable."""
    env = {**GOOD_ENV, **changes}
    problems: list[str] = []
    try:
        load_settings(env)
    except ConfigError as error:
        problems = error.problems
        assert problems
    for problem in problems:
        assert any(name in problem for name in KNOWN_VARIABLES), problem
        for secret in SECRETS:
            assert secret not in problem


# ----------------------------------------------------------------------------- htpasswd

TRICKY_PASSWORDS = [
    "plain-password",
    "per%cent,comma:colon",
    "quotes ' and \" and `back`",
    "$dollar$ !bang! \\backslash",
    "spaces  inside  ",
    "ünïcödé ✓ 密码",
    "#hash {brace} [x] ;semi",
    "x" * 72,
    "a~>?b>?~",  # "alice:" + this encodes with a "+" (a regex operator in nginx's auth match)
    "~>?~>?",  # ... and this with a "/"
]


@pytest.mark.parametrize("password", TRICKY_PASSWORDS)
def test_htpasswd_line_verifies_with_bcrypt(password: str) -> None:
    line = htpasswd.htpasswd_line("alice", password)
    user, hashed = line.rstrip("\n").split(":", 1)
    assert user == "alice"
    assert hashed.startswith(f"$2b$0{htpasswd.BCRYPT_COST}$")
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"wrong", hashed.encode())
    assert password not in line


def test_htpasswd_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.write_htpasswd(path, "alice", "some password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("user", "password"), [("a:b", "password"), ("", "password"), ("a", ""), ("a", "x" * 73)]
)
def test_htpasswd_refuses_what_basic_auth_cannot_carry(user: str, password: str) -> None:
    with pytest.raises(ValueError, match=r"user name|password"):
        htpasswd.htpasswd_line(user, password)


# ----------------------------------------------------------------------------- nginx config


def _params(
    tmp_path: Path,
    port: int = 5000,
    password: str = "s3cret-pw",  # noqa: S107 (test login)
) -> nginx_config.NginxParams:
    return nginx_config.NginxParams(
        runtime_dir=tmp_path,
        htpasswd_path=tmp_path / "htpasswd",
        port=port,
        mlflow_ports=[port + 1],
        username="alice",
        password=password,
        max_body_size="5g",
        proxy_read_timeout=28,
        auth_failures_per_minute=10,
        listen_address="127.0.0.1",
    )


def test_rendered_config_has_what_heroku_needs(tmp_path: Path) -> None:
    text = nginx_config.render(_params(tmp_path))
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


def test_free_loopback_ports_are_distinct_and_never_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker gets its own port, and none is $PORT, even when the kernel offers it."""
    from types import SimpleNamespace

    from mlflow_heroku_runtime import prepare

    offered = iter([5000, 41000, 41001, 41002])

    class FakeSocket:
        def __init__(self) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def bind(self, _address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(prepare, "socket", SimpleNamespace(socket=FakeSocket))
    assert prepare.free_loopback_ports(3, avoid=5000) == [41000, 41001, 41002]
    monkeypatch.undo()
    real = prepare.free_loopback_ports(16, avoid=5000)
    assert len(set(real)) == 16
    assert 5000 not in real


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
    params = nginx_config.NginxParams(
        **{**_params(tmp_path).__dict__, "max_body_size": max_body_size, "username": username}
    )
    config.write_text(nginx_config.render(params))
    assert_nginx_accepts(config, tmp_path)


@contextlib.contextmanager
def _nginx_with_login(password: str, htpasswd_password: str | None = None) -> Iterator[str]:
    """Real nginx on the rendered config for alice:password (its exact-header fast path),
    with an htpasswd file for alice:htpasswd_password (bcrypt's path; default the same);
    yields its base URL. No MLflow behind it: a request past the login gets 503."""
    import pwd
    import shutil
    import tempfile

    from tests.support.services import free_port, wait_for_port

    # Under /tmp, not pytest's private tmp_path: nginx's workers (nobody, as root) must be
    # able to reach the htpasswd file, as in the entrypoint's own runtime dir.
    runtime = Path(tempfile.mkdtemp(prefix="htpasswd-nginx-"))
    try:
        port = free_port()
        params = _params(runtime, port=port, password=password)
        htpasswd.write_htpasswd(params.htpasswd_path, "alice", htpasswd_password or password)
        if os.geteuid() == 0:  # as root, nginx workers run as nobody and must read the file
            nobody = pwd.getpwnam("nobody")
            os.chown(params.htpasswd_path, nobody.pw_uid, nobody.pw_gid)
            runtime.chmod(0o711)
            params = nginx_config.NginxParams(
                **{**params.__dict__, "worker_user": "nobody nogroup"}
            )
        config = runtime / "nginx.conf"
        config.write_text(nginx_config.render(params))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        process = subprocess.Popen(
            [nginx, "-e", "stderr", "-p", str(runtime), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert wait_for_port(port, 5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()
            process.wait(10)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


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


def test_resident_supervisor_stays_light() -> None:
    """The supervisor lives as long as the dyno: no mlflow, SQLAlchemy, jinja2 or bcrypt."""
    import sys

    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mlflow_heroku_runtime.supervisor;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'mlflow', 'sqlalchemy', 'jinja2', 'bcrypt', 'pandas', 'numpy'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_plan_round_trips_through_json() -> None:
    from mlflow_heroku_runtime.plan import Plan

    plan = Plan(
        runtime_dir="/tmp/x",
        nginx_config="/tmp/x/nginx.conf",
        port=5000,
        mlflow_ports=[40000, 40001],
        backend_store_uri="postgresql+psycopg://u:p%40ss@h/d",
        database_description="h:5432/d",
        artifacts_destination="s3://b/p",
        workers=1,
        db_wait_seconds=40,
        local=False,
        username="alice",
        password='pw with "quotes" and é',
        mlflow_env={"DO_NOT_TRACK": "true"},
        secrets=["pw", "p@ss"],
    )
    assert Plan.from_json(plan.to_json()) == plan


# ------------------------------------------------------------------- error filter, redactor


def _run_filtered(status: int, chunks: list[bytes]) -> list[dict[str, object]]:
    import asyncio

    from mlflow_heroku_runtime.error_filter import ScrubDatabaseErrors

    async def fake_mlflow(scope: object, receive: object, send: object) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"999")]
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})  # type: ignore[operator]

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    # A private loop: asyncio.run() would leave the thread without a current loop afterwards,
    # which breaks later tests whose libraries call asyncio.get_event_loop() (Pulumi's SDK).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            ScrubDatabaseErrors(fake_mlflow)({"type": "http"}, receive, send)  # type: ignore[arg-type]
        )
    finally:
        loop.close()
    return sent


def test_database_text_in_an_error_is_replaced_status_and_code_kept() -> None:
    import json

    leaked = json.dumps(
        {
            "error_code": "BAD_REQUEST",
            "message": "(psycopg.errors.NumericValueOutOfRange) integer out of range\n"
            "[SQL: SELECT experiments.experiment_id FROM experiments WHERE id = %(id)s]\n"
            "(Background on this error at: https://sqlalche.me/e/20/9h9h)",
        }
    ).encode()
    sent = _run_filtered(400, [leaked[:50], leaked[50:]])
    start, body = sent
    assert start["status"] == 400
    payload = json.loads(body["body"])  # type: ignore[arg-type]
    assert payload["error_code"] == "BAD_REQUEST"
    assert "NumericValueOutOfRange" in payload["message"]
    assert "SELECT" not in payload["message"]
    assert "psycopg" not in payload["message"]
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"content-length"] == str(len(body["body"])).encode()  # type: ignore[arg-type]


def test_ordinary_errors_and_successes_pass_unchanged() -> None:
    plain = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run \'x\' not found"}'
    sent = _run_filtered(404, [plain])
    assert sent[1]["body"] == plain
    streamed = _run_filtered(200, [b"part one ", b"sqlalchemy. in a 200 body stays"])
    assert [message.get("body") for message in streamed[1:]] == [
        b"part one ",
        b"sqlalchemy. in a 200 body stays",
    ]


def test_redactor_removes_every_secret_longest_first() -> None:
    from mlflow_heroku_runtime.supervisor import Redactor

    redact = Redactor(["p@ss:word", "p%40ss%3Aword", "p@ss", "abc"])
    line = "url postgresql://u:p%40ss%3Aword@h/d and p@ss:word and p@ss, abc stays"
    assert redact(line) == "url postgresql://u:***@h/d and *** and ***, abc stays"


def test_forwarded_for_is_trusted_only_behind_herokus_router(tmp_path: Path) -> None:
    import dataclasses

    on_dyno = nginx_config.render(_params(tmp_path))
    assert "(?<last_entry>" in on_dyno
    elsewhere = nginx_config.render(
        dataclasses.replace(_params(tmp_path), trust_forwarded_for=False)
    )
    assert "(?<last_entry>" not in elsewhere
    assert "map $remote_addr $client_address" in elsewhere
    assert load_settings(GOOD_ENV).behind_heroku_router
    assert not load_settings(
        {k: v for k, v in GOOD_ENV.items() if k != "DYNO"}
    ).behind_heroku_router


def _waiting_uvicorn(flag: Path, supervisor_pid: int) -> subprocess.Popen[str]:
    """A process doing what MLflow's uvicorn does at import: wait for the migration flag."""
    import sys

    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from mlflow_heroku_runtime.migrate import wait_for_migration;"
        "wait_for_migration(); print('migrated', flush=True)"
    )
    env = {
        **os.environ,
        "_MLFLOW_HEROKU_MIGRATED_FLAG": str(flag),
        "_MLFLOW_HEROKU_SUPERVISOR_PID": str(supervisor_pid),
    }
    return subprocess.Popen(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_app_waits_for_the_migration_flag(tmp_path: Path) -> None:
    """uvicorn holds the app back while the migration runs (for as long as it takes: there is
    no time limit to test, the wait has none) and goes on once the supervisor's flag exists."""
    flag = tmp_path / "migrated"
    waiting = _waiting_uvicorn(flag, os.getpid())
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(1.5)
        flag.touch()
        out, err = waiting.communicate(timeout=10)
        assert (waiting.returncode, out) == (0, "migrated\n"), err
    finally:
        waiting.kill()


@pytest.mark.parametrize("reaped", [True, False], ids=["exited", "zombie"])
def test_the_app_stops_waiting_when_the_supervisor_is_gone(tmp_path: Path, reaped: bool) -> None:
    """Also when the killed supervisor is a zombie its parent has not reaped yet."""
    import time

    gone = subprocess.Popen(["true"])
    if reaped:
        gone.wait()
    else:
        while Path(f"/proc/{gone.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
    waiting = _waiting_uvicorn(tmp_path / "never", gone.pid)
    try:
        out, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
    gone.wait()
    assert waiting.returncode == 1
    assert out == ""
    assert "the supervisor exited before the database was migrated" in err


def test_values_checked_after_stripping_reach_mlflow_stripped() -> None:
    """boto3 refuses a region with a trailing newline and MLflow a boolean with spaces, so what
    passes the check stripped is passed on stripped."""
    env = {
        **GOOD_ENV,
        "AWS_REGION": "eu-west-1\n",
        "AWS_DEFAULT_REGION": " us-east-2 ",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": " true",
        "DO_NOT_TRACK": "1\n",
    }
    passed = load_settings(env).mlflow_env
    assert passed["AWS_REGION"] == "eu-west-1"
    assert passed["AWS_DEFAULT_REGION"] == "us-east-2"
    assert passed["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert passed["DO_NOT_TRACK"] == "1"
    with pytest.raises(ConfigError) as raised:
        load_settings({**GOOD_ENV, "AWS_REGION": "eu-west-1\nus-east-1"})
    assert raised.value.problems == ["AWS_REGION must look like eu-west-1 (an AWS region name)"]


def test_each_forked_worker_takes_a_free_slot_and_serves_only_its_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gunicorn's pre_fork hook hands out the lowest slot no live worker holds, so the
    replacement of a dead worker serves the dead one's port; a worker keeps only that port's
    listener of the master's (one per slot, in --bind order), unwrapped to the plain socket
    that uvloop then owns and closes once."""
    from types import SimpleNamespace

    from mlflow_heroku_runtime import forked_workers
    from uvicorn_worker import UvicornWorker

    def worker(slot: int | None = None) -> forked_workers.MlflowWorker:
        made = object.__new__(forked_workers.MlflowWorker)
        if slot is not None:
            made.slot = slot
        return made

    listeners = [SimpleNamespace(sock=f"socket-{port}") for port in ("a", "b", "c")]
    arbiter = SimpleNamespace(WORKERS={}, LISTENERS=listeners)
    for pid in (101, 102, 103):
        new = worker()
        forked_workers.pre_fork(arbiter, new)
        arbiter.WORKERS[pid] = new
    assert [w.slot for w in arbiter.WORKERS.values()] == [0, 1, 2]
    del arbiter.WORKERS[102]  # died; gunicorn reaps it, then forks a replacement
    replacement = worker()
    forked_workers.pre_fork(arbiter, replacement)
    assert replacement.slot == 1

    served: list[list[str]] = []
    monkeypatch.setattr(UvicornWorker, "run", lambda self: served.append(self.sockets))
    running = worker(slot=1)
    running.sockets = list(arbiter.LISTENERS)
    running.run()
    assert served == [["socket-b"]]


def test_the_forked_worker_count_stays_one_per_port() -> None:
    """SIGTTIN / SIGTTOU change gunicorn's worker count through the arbiter's num_workers; the
    hook puts it back to one per port (and says so), while start-up, where there are no ports
    yet, and stopping (0) pass."""
    from types import SimpleNamespace

    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
    from mlflow_heroku_runtime import forked_workers

    warnings: list[str] = []
    arbiter = object.__new__(Arbiter)
    arbiter._num_workers = None
    arbiter.LISTENERS = []
    arbiter.cfg = SimpleNamespace(nworkers_changed=forked_workers.nworkers_changed)
    arbiter.log = SimpleNamespace(warning=warnings.append)

    arbiter.num_workers = 3  # start-up: the listeners do not exist yet
    arbiter.LISTENERS = ["port-a", "port-b", "port-c"]
    assert warnings == []
    arbiter.num_workers += 1  # what SIGTTIN does
    assert arbiter.num_workers == 3
    arbiter.num_workers -= 1  # what SIGTTOU does
    assert arbiter.num_workers == 3
    assert len(warnings) == 2
    assert "keeping 3 workers, one per port" in warnings[0]
    arbiter.num_workers = 0  # stopping
    assert arbiter.num_workers == 0


def test_supervisor_binds_one_port_per_forked_worker_in_slot_order() -> None:
    """gunicorn gets every port of the plan as its own --bind, in slot order, and this
    module as --config (for pre_fork); one worker is uvicorn alone on the plan's one port."""
    from mlflow_heroku_runtime.plan import Plan
    from mlflow_heroku_runtime.supervisor import Supervisor

    def argv(ports: list[int]) -> list[str]:
        plan = Plan(
            runtime_dir="/tmp/x", nginx_config="/tmp/x/nginx.conf", port=5000,
            mlflow_ports=ports, backend_store_uri="sqlite:///x", database_description="x",
            artifacts_destination="/tmp/a", workers=len(ports), db_wait_seconds=40,
            local=False, username="u", password="p",
        )  # fmt: skip
        return Supervisor(plan).mlflow_argv()

    forked = argv([41000, 41001, 41002])
    assert [arg for arg in forked if arg.startswith("--bind")] == [
        "--bind=127.0.0.1:41000",
        "--bind=127.0.0.1:41001",
        "--bind=127.0.0.1:41002",
    ]
    assert forked[forked.index("--workers") + 1] == "3"
    assert forked[forked.index("--config") + 1] == "python:mlflow_heroku_runtime.forked_workers"
    alone = argv([41000])
    assert "uvicorn" in alone
    assert alone[alone.index("--port") + 1] == "41000"
