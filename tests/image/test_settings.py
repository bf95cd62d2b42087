"""The environment's validation: one named message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow_heroku_runtime.errors import ConfigError
from mlflow_heroku_runtime.settings import Person, flask_secret_key, load_people, load_settings

from tests.image.runtime_values import ACCOUNTS_ENV, ACCOUNTS_SECRETS, GOOD_ENV, SECRETS


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


# ----------------------------------------------------------------------------- accounts mode


def test_accounts_environment_loads() -> None:
    loaded = load_settings(ACCOUNTS_ENV)
    assert loaded.accounts
    assert loaded.login_mode == "accounts"
    assert (loaded.username, loaded.password) == ("", "")  # nginx knows no login
    assert (loaded.default_permission, loaded.auth_cache_ttl_seconds) == ("READ", 30)
    env = loaded.mlflow_env
    assert env["MLFLOW_HEROKU_LOGIN_MODE"] == "accounts"
    assert env["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] == "true"
    assert env["MLFLOW_BASIC_AUTH_FAIL_CLOSED"] == "true"
    key = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert len(key) == 64
    assert key == flask_secret_key("admin password 1234")
    assert key != flask_secret_key("another admin password")  # derived, not a constant
    assert set(ACCOUNTS_SECRETS) | {key} <= set(loaded.secrets)
    # Nothing of the admin's or the people's goes to MLflow's workers through the settings.
    for secret in ACCOUNTS_SECRETS[3:]:
        assert secret not in " ".join(env.values())


def test_accounts_settings_are_read() -> None:
    loaded = load_settings(
        {
            **ACCOUNTS_ENV,
            "MLFLOW_HEROKU_LOGIN_MODE": " Accounts ",
            "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS": "0",
            "MLFLOW_HEROKU_DEFAULT_PERMISSION": "no_permissions",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "a key the user chose",
        }
    )
    assert (loaded.login_mode, loaded.auth_cache_ttl_seconds) == ("accounts", 0)
    assert loaded.default_permission == "NO_PERMISSIONS"
    assert loaded.mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "a key the user chose"
    assert "a key the user chose" in loaded.secrets


def test_shared_mode_is_the_default_and_unchanged() -> None:
    loaded = load_settings(GOOD_ENV)
    assert loaded.login_mode == "shared"
    assert not loaded.accounts
    assert (loaded.username, loaded.password) == ("alice", "correct horse battery")
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" not in loaded.mlflow_env
    assert "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED" not in loaded.mlflow_env


def test_load_people_reads_the_admin_and_the_people() -> None:
    people = load_people(ACCOUNTS_ENV)
    assert (people.admin_username, people.admin_password) == ("team-admin", "admin password 1234")
    assert people.people == (
        Person("ana", "editor"),
        Person("bo.reader", "reader"),
        Person("cy@example.com", "admin"),
    )
    assert people.initial_passwords["bo.reader"] == "bo initial pw 22"
    no_people = {**ACCOUNTS_ENV, "MLFLOW_HEROKU_PEOPLE": "[]"}
    del no_people["MLFLOW_HEROKU_PEOPLE_PASSWORDS"]
    assert load_people(no_people).people == ()  # only the admin


def people_plus(entry: str) -> str:
    """ACCOUNTS_ENV's people with one more entry."""
    return ACCOUNTS_ENV["MLFLOW_HEROKU_PEOPLE"][:-1] + ", " + entry + "]"


ACCOUNTS_BAD = [
    # (variable, value or None to remove it, expected words in the one problem)
    ("MLFLOW_HEROKU_LOGIN_MODE", "per-person", "MLFLOW_HEROKU_LOGIN_MODE must be shared"),
    ("MLFLOW_AUTH_ADMIN_USERNAME", None, "MLFLOW_AUTH_ADMIN_USERNAME is not set"),
    ("MLFLOW_AUTH_ADMIN_USERNAME", "team admin", "MLFLOW_AUTH_ADMIN_USERNAME must be 1-100"),
    ("MLFLOW_AUTH_ADMIN_USERNAME", "a:b", "MLFLOW_AUTH_ADMIN_USERNAME must be 1-100"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD", None, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "", "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "short-pw", "MLFLOW_AUTH_ADMIN_PASSWORD is too short"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "pässwörd-long-enough", "must be printable ASCII"),
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "long enough\tpassword", "must be printable ASCII"),
    ("MLFLOW_HEROKU_PEOPLE", "ana=editor", "MLFLOW_HEROKU_PEOPLE is not valid JSON"),
    ("MLFLOW_HEROKU_PEOPLE", '{"ana": "editor"}', "MLFLOW_HEROKU_PEOPLE must be a JSON list"),
    ("MLFLOW_HEROKU_PEOPLE", people_plus('"ana"'), "entry 4 must be an object with exactly"),
    (
        "MLFLOW_HEROKU_PEOPLE",
        people_plus('{"username": "ana", "role": "editor", "admin": true}'),
        "entry 4 must be an object with exactly username and role",
    ),
    (
        "MLFLOW_HEROKU_PEOPLE",
        people_plus('{"username": "dee", "role": "writer"}'),
        'entry 4 (dee) has the role "writer": use admin, editor or reader',
    ),
    ("MLFLOW_HEROKU_PEOPLE", people_plus('{"username": "", "role": "reader"}'), "entry 4's user"),
    ("MLFLOW_HEROKU_PEOPLE", people_plus('{"username": 7, "role": "reader"}'), "entry 4's user"),
    (
        "MLFLOW_HEROKU_PEOPLE",
        people_plus('{"username": "ana", "role": "reader"}'),
        "lists ana twice",
    ),
    (
        "MLFLOW_HEROKU_PEOPLE",
        people_plus('{"username": "team-admin", "role": "admin"}'),
        "lists the admin account team-admin: it comes from MLFLOW_AUTH_ADMIN_USERNAME",
    ),
    ("MLFLOW_HEROKU_PEOPLE_PASSWORDS", None, "MLFLOW_HEROKU_PEOPLE_PASSWORDS is not set"),
    ("MLFLOW_HEROKU_PEOPLE_PASSWORDS", "{ana: x}", "MLFLOW_HEROKU_PEOPLE_PASSWORDS is not valid"),
    ("MLFLOW_HEROKU_PEOPLE_PASSWORDS", '["x"]', "must be a JSON object of strings"),
    (
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS",
        '{"ana": "ana initial pw 1", "bo.reader": "bo initial pw 22"}',
        "has no initial password for cy@example.com: add one",
    ),
    (
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS",
        '{"ana": "ana initial pw 1", "bo.reader": "bo initial pw 22", '
        '"cy@example.com": "cy initial pw 333", "dee": "dee initial pw 4"}',
        "has a password for dee, who is not in MLFLOW_HEROKU_PEOPLE",
    ),
    (
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS",
        '{"ana": "short", "bo.reader": "bo initial pw 22", "cy@example.com": "cy initial pw 333"}',
        "password for ana is too short",
    ),
    ("MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS", "-1", "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS must be"),
    ("MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS", "1h", "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS must be"),
    ("MLFLOW_HEROKU_DEFAULT_PERMISSION", "WRITE", "MLFLOW_HEROKU_DEFAULT_PERMISSION must be one"),
    ("MLFLOW_HEROKU_DEFAULT_PERMISSION", "DENY", "MLFLOW_HEROKU_DEFAULT_PERMISSION must be one"),
    (
        "MLFLOW_HEROKU_DEFAULT_PERMISSION",
        "EDIT",
        "EDIT would let every account write, the readers in MLFLOW_HEROKU_PEOPLE (bo.reader) too",
    ),
    ("MLFLOW_CRYPTO_KEK_PASSPHRASE", None, "MLFLOW_CRYPTO_KEK_PASSPHRASE is not set"),
]


@pytest.mark.parametrize(("name", "value", "message"), ACCOUNTS_BAD)
def test_each_bad_accounts_variable_has_its_own_message(
    name: str, value: str | None, message: str
) -> None:
    env = dict(ACCOUNTS_ENV)
    if value is None:
        env.pop(name, None)
    else:
        env[name] = value
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert len(raised.value.problems) == 1, raised.value.problems
    assert message in raised.value.problems[0]
    for secret in (*ACCOUNTS_SECRETS, "short-pw", "pässwörd-long-enough", "dee initial pw 4"):
        assert secret not in str(raised.value)


def test_the_migration_step_gets_the_same_messages() -> None:
    env = {**ACCOUNTS_ENV, "MLFLOW_HEROKU_PEOPLE": '[{"username": "ana", "role": "owner"}]'}
    with pytest.raises(ConfigError) as raised:
        load_people(env)
    assert raised.value.problems == [
        'MLFLOW_HEROKU_PEOPLE entry 1 (ana) has the role "owner": use admin, editor or reader',
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS has a password for bo.reader, who is not in "
        "MLFLOW_HEROKU_PEOPLE: remove it, or add the person",
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS has a password for cy@example.com, who is not in "
        "MLFLOW_HEROKU_PEOPLE: remove it, or add the person",
    ]


def test_a_writing_default_is_fine_without_readers() -> None:
    env = {
        **ACCOUNTS_ENV,
        "MLFLOW_HEROKU_PEOPLE": '[{"username": "ana", "role": "editor"}]',
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS": '{"ana": "ana initial pw 1"}',
        "MLFLOW_HEROKU_DEFAULT_PERMISSION": "MANAGE",
    }
    assert load_settings(env).default_permission == "MANAGE"


KEK_CASES = [
    # (changes, expected problem or None)
    ({"MLFLOW_CRYPTO_KEK_PASSPHRASE": "too-short"}, "MLFLOW_CRYPTO_KEK_PASSPHRASE is too short"),
    (
        {"MLFLOW_CRYPTO_KEK_PASSPHRASE": "mlflow-default-kek-passphrase-for-development-only"},
        "MLFLOW_CRYPTO_KEK_PASSPHRASE is MLflow's public default passphrase",
    ),
    ({"MLFLOW_CRYPTO_KEK_PASSPHRASE": None}, "set it to a random value of at least 32"),
    ({"MLFLOW_CRYPTO_KEK_PASSPHRASE": None, "MLFLOW_ENABLE_AI_GATEWAY": "true"}, "is not set"),
    ({"MLFLOW_CRYPTO_KEK_PASSPHRASE": None, "MLFLOW_ENABLE_AI_GATEWAY": "false"}, None),
    ({"MLFLOW_CRYPTO_KEK_PASSPHRASE": None, "DYNO": None}, None),  # a host, not a dyno
    ({"MLFLOW_ENABLE_AI_GATEWAY": "off"}, "MLFLOW_ENABLE_AI_GATEWAY must be true or false"),
]


@pytest.mark.parametrize("environment", [GOOD_ENV, ACCOUNTS_ENV], ids=["shared", "accounts"])
@pytest.mark.parametrize(("changes", "problem"), KEK_CASES)
def test_a_dyno_never_runs_the_gateway_on_the_public_passphrase(
    environment: dict[str, str], changes: dict[str, str | None], problem: str | None
) -> None:
    env = {**environment, **{name: value for name, value in changes.items() if value}}
    for name in [name for name, value in changes.items() if value is None]:
        env.pop(name, None)
    if problem is None:
        loaded = load_settings(env)
        gateway = changes.get("MLFLOW_ENABLE_AI_GATEWAY")
        assert loaded.mlflow_env.get("MLFLOW_ENABLE_AI_GATEWAY") == gateway
        return
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert len(raised.value.problems) == 1, raised.value.problems
    assert problem in raised.value.problems[0]
    assert "too-short" not in raised.value.problems[0]


ACCOUNTS_VARIABLES = sorted({name for name, _value, _message in ACCOUNTS_BAD})
JSON_PIECES = ["[", "]", "{", "}", '"username"', '"role"', '"ana"', '"reader"', ":", ",", '"']


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(ACCOUNTS_VARIABLES),
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
            st.lists(st.sampled_from(JSON_PIECES), max_size=14).map("".join),
        ),
        max_size=4,
    )
)
def test_fuzzed_accounts_environment_gives_named_errors_only(changes: dict[str, str]) -> None:
    env = {**ACCOUNTS_ENV, **changes}
    problems: list[str] = []
    try:
        load_settings(env)
    except ConfigError as error:
        problems = error.problems
        assert problems
    for problem in problems:
        assert any(name in problem for name in ACCOUNTS_VARIABLES), problem
        for secret in ACCOUNTS_SECRETS:
            assert secret not in problem
