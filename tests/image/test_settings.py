"""The environment's validation: one named message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow_heroku_runtime.errors import ConfigError
from mlflow_heroku_runtime.settings import load_settings

from tests.image.runtime_values import GOOD_ENV, SECRETS


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
