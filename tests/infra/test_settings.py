"""Stack settings: defaults, every validation message, and hypothesis-generated bad values."""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Callable, Mapping

import pulumi
import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the lock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import settings as stack_settings
from infra.heroku_app import GENERATED_PASSWORD_LENGTH
from infra.settings import DEFAULTS, Settings, SettingsError, load

from .conftest import ROOT, base_config

API_KEY = "0123456789abcdef-heroku-key"
MINIMAL = {
    "mlflow-heroku:appName": "acme-mlflow",
    "aws:region": "eu-west-1",
    "heroku:apiKey": API_KEY,
}
SECRET = {"heroku:apiKey", "mlflow-heroku:loginPassword", "mlflow-heroku:adminPassword"}
# Accounts mode on a plan whose connections hold the default pools (essential-0's do not).
ACCOUNTS = {"loginMode": "accounts", "postgresPlan": "essential-2"}


def load_config(
    overrides: Mapping[str, str | None] | None = None,
    secret_keys: set[str] = SECRET,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    config: dict[str, str] = dict(MINIMAL)
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"mlflow-heroku:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return load("dev", config.get, lambda key: key in secret_keys, environ or {})


def problem(overrides: Mapping[str, str | None], **kwargs: object) -> str:
    with pytest.raises(SettingsError) as raised:
        load_config(overrides, **kwargs)  # type: ignore[arg-type]
    return str(raised.value)


def test_minimal_config_gets_every_default() -> None:
    loaded = load_config()
    assert loaded.app_name == "acme-mlflow"
    assert loaded.region == DEFAULTS["region"]
    assert loaded.postgres_plan == DEFAULTS["postgresPlan"]
    assert loaded.dyno_size == DEFAULTS["dynoSize"]
    assert loaded.dyno_count == DEFAULTS["dynoCount"]
    assert loaded.mlflow_workers == DEFAULTS["mlflowWorkers"]
    assert loaded.db_pool_size == DEFAULTS["dbPoolSize"]
    assert loaded.db_max_overflow == DEFAULTS["dbMaxOverflow"]
    assert loaded.max_body_size == DEFAULTS["maxBodySize"]
    assert loaded.login_user == DEFAULTS["loginUser"]
    assert loaded.artifact_prefix == DEFAULTS["artifactPrefix"]
    assert loaded.bucket_versioning is DEFAULTS["bucketVersioning"]
    assert loaded.protect_data is DEFAULTS["protectData"]
    assert loaded.custom_domains == ()
    assert loaded.login_password is None
    assert loaded.bucket_name is None
    assert loaded.kms_key_arn is None
    assert loaded.aws_region == "eu-west-1"
    assert loaded.login_mode == DEFAULTS["loginMode"] == "shared"
    assert loaded.admin_username == DEFAULTS["adminUsername"]
    assert loaded.admin_password is None
    assert loaded.people == ()
    assert loaded.auth_cache_ttl_seconds == DEFAULTS["authCacheTtlSeconds"] == 30
    assert loaded.default_permission == DEFAULTS["defaultPermission"] == "READ"
    assert loaded.backup_retention_days == DEFAULTS["backupRetentionDays"]
    assert loaded.gc_after_days == DEFAULTS["gcAfterDays"]


def test_values_are_parsed() -> None:
    loaded = load_config(
        {
            "dynoSize": "standard-2x",
            "postgresPlan": "standard-0",
            "dynoCount": "3",
            "mlflowWorkers": "2",
            "bucketVersioning": "True",
            "customDomains": '["mlflow.example.com", "ml.example.org"]',
            "bucketName": "acme-artifacts",
            "kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-12345678",
            "backupRetentionDays": "3650",
            "gcAfterDays": "0",
        }
    )
    assert (loaded.backup_retention_days, loaded.gc_after_days) == (3650, 0)  # 0: gc off
    assert (loaded.dyno_size, loaded.dyno_count, loaded.mlflow_workers) == ("standard-2x", 3, 2)
    assert loaded.bucket_versioning is True
    assert loaded.custom_domains == ("mlflow.example.com", "ml.example.org")
    assert loaded.bucket_name == "acme-artifacts"
    assert loaded.db_connections_needed == 3 * 2 * 2 * (2 + 2) + stack_settings.DB_CONNECTION_MARGIN


def resolved(output: pulumi.Output[str]) -> tuple[str | None, bool]:
    """An output's value and whether it is secret (the autouse fixture gives the loop)."""
    loop = asyncio.get_event_loop()
    value, secret = loop.run_until_complete(asyncio.gather(output.future(), output.is_secret()))
    return value, secret


def test_api_key_may_come_from_the_environment_and_stays_secret() -> None:
    environ = {"HEROKU_API_KEY": "from-env-key"}
    loaded = load_config({"heroku:apiKey": None}, environ=environ)
    assert resolved(loaded.heroku_api_key) == ("from-env-key", True)
    # The stack's own key wins over the environment's.
    assert resolved(load_config(environ=environ).heroku_api_key) == (API_KEY, True)


BAD_VALUES = [
    ("appName", None, "mlflow-heroku:appName: is required"),
    ("appName", "ab", "'ab' is not a valid Heroku app name; it needs 3 to 30 characters"),
    ("appName", "My-App", "'My-App' is not a valid Heroku app name"),
    ("appName", "1app", "'1app' is not a valid Heroku app name"),
    ("appName", "a" * 31, "is not a valid Heroku app name"),
    ("appName", "app-", "'app-' is not a valid Heroku app name"),
    ("region", "virginia", "mlflow-heroku:region: 'virginia' is not allowed; allowed: us, eu"),
    ("postgresPlan", "hobby-dev", "'hobby-dev' is not allowed: Heroku retired it"),
    ("postgresPlan", "mini", "'mini' is not allowed: Heroku retired it"),
    ("postgresPlan", "essential-9", "not a current Heroku Postgres plan; allowed: essential-0"),
    ("dynoSize", "Standard-1X", "'Standard-1X' must be written in lowercase ('standard-1x')"),
    ("dynoSize", "hobby", "'hobby' is a retired dyno type"),
    ("dynoSize", "huge", "'huge' is not a Heroku Common Runtime dyno size; allowed: eco, basic"),
    ("dynoCount", "0", "mlflow-heroku:dynoCount: 0 is out of range; allowed: 1 to 100"),
    ("dynoCount", "two", "'two' is not a whole number; allowed: 1 to 100"),
    ("dynoCount", "2", "Heroku runs at most 1 basic dyno per process type"),
    ("mlflowWorkers", "4", "4 workers need about 540 MB, more than a basic dyno's 512 MB"),
    ("mlflowWorkers", "17", "17 is out of range; allowed: 1 to 16"),
    ("dbPoolSize", "0", "mlflow-heroku:dbPoolSize: 0 is out of range; allowed: 1 to 50"),
    ("dbMaxOverflow", "0", "mlflow-heroku:dbMaxOverflow: 0 is out of range; allowed: 1 to 50"),
    ("dbPoolSize", "8", "= 39 connections, more than essential-0's limit of 20"),
    ("maxBodySize", "100m", "'100m' is too small; allowed: 1g or more"),
    ("maxBodySize", "9999999999g", "'9999999999g' is too large; allowed: up to 5120g"),
    ("maxBodySize", "5 GB", "'5 GB' is not an nginx size"),
    ("loginUser", "ml:flow", "'ml:flow' must not contain ':'"),
    ("loginUser", "", "'' is not a valid login user"),
    ("loginUser", "a b", "'a b' is not a valid login user"),
    ("bucketName", "My_Bucket", "'My_Bucket' is not a valid S3 bucket name"),
    ("bucketName", "ab", "'ab' is not a valid S3 bucket name"),
    ("bucketName", "a..b", "no two dots or a dot and a dash side by side"),
    ("bucketName", "192.168.1.10", "must not look like an IP address"),
    ("bucketName", "xn--bucket", "names starting with 'xn--' are reserved by AWS"),
    ("bucketName", "bucket-s3alias", "names ending with '-s3alias' are reserved by AWS"),
    ("bucketName", "my.bucket", "'my.bucket' must not contain dots"),
    ("artifactPrefix", "/artifacts", "'/artifacts' is not a valid artifact prefix"),
    ("artifactPrefix", "a//b", "'a//b' is not a valid artifact prefix"),
    ("artifactPrefix", "a/../b", "'a/../b' is not a valid artifact prefix"),
    ("artifactPrefix", "backups/x", "'backups/x' is where the database backups go"),
    ("bucketVersioning", "yes", "'yes' is not a boolean; allowed: true or false"),
    ("protectData", "1", "mlflow-heroku:protectData: '1' is not a boolean"),
    ("noncurrentVersionExpirationDays", "0", "0 is out of range; allowed: 1 to 3650"),
    ("kmsKeyArn", "alias/mine", "'alias/mine' is not a KMS key ARN"),
    ("accessKeyGeneration", "-1", "-1 is out of range; allowed: 1 to 1000000"),
    (
        "kmsKeyArn",
        "arn:aws:kms:us-east-1:123456789012:key/abcd",
        "is a key in us-east-1, but the bucket is in eu-west-1",
    ),
    ("customDomains", "[1, 2]", "is not a list of host names"),
    ("customDomains", '["Example.com"]', "'Example.com' is not a valid lowercase DNS host name"),
    ("customDomains", '["x.herokuapp.com"]', "'x.herokuapp.com' is a herokuapp.com name"),
    ("customDomains", '["a.example.com", "a.example.com"]', "lists a host name twice"),
    ("releaseTimeoutSeconds", "5", "5 is out of range; allowed: 60 to 1800"),
    ("releaseTimeoutSeconds", "3600", "3600 is out of range; allowed: 60 to 1800"),
    ("backupRetentionDays", "0", "backupRetentionDays: 0 is out of range; allowed: 1 to 3650"),
    ("backupRetentionDays", "3651", "3651 is out of range; allowed: 1 to 3650"),
    ("gcAfterDays", "-1", "mlflow-heroku:gcAfterDays: -1 is out of range; allowed: 0 to 3650"),
    ("gcAfterDays", "30d", "'30d' is not a whole number; allowed: 0 to 3650"),
    ("aws:region", None, "aws:region: is required"),
    ("aws:region", "europe", "aws:region: 'europe' is not an AWS region name"),
    ("heroku:apiKey", None, "heroku:apiKey: is required"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_bad_value_names_key_value_and_what_is_allowed(
    key: str, value: str | None, message: str
) -> None:
    text = problem({key: value})
    assert message in text
    qualified = key if ":" in key else f"mlflow-heroku:{key}"
    assert f"{qualified}:" in text


def test_custom_domains_may_be_a_comma_separated_string() -> None:
    assert load_config({"customDomains": "ml.example.com"}).custom_domains == ("ml.example.com",)


def test_every_problem_is_reported_at_once() -> None:
    text = problem({"region": "mars", "dynoSize": "huge", "appName": "X"})
    assert text.count("\n  - ") == 3


def test_secret_values_are_refused_in_plain_text_and_never_echoed() -> None:
    password = "short-Secret1"
    text = problem({"loginPassword": password})
    assert "is too short" in text
    assert password not in text
    text = problem({"loginPassword": "x" * 20}, secret_keys={"heroku:apiKey"})
    assert "mlflow-heroku:loginPassword: is stored in plain text" in text
    assert "x" * 20 not in text
    text = problem({}, secret_keys=set())
    assert "heroku:apiKey: is stored in plain text" in text
    assert API_KEY not in text
    text = problem({"loginPassword": "p" * 73})
    assert "at most 72 bytes" in text
    # Bytes that were not UTF-8 reach Python as lone surrogates: a message, not a traceback.
    text = problem({"loginPassword": "QZXJ-long-enough-p\udce4ss"})
    assert "mlflow-heroku:loginPassword: (value not shown) is not valid UTF-8 text" in text
    assert "QZXJ" not in text


def test_connection_limit_counts_every_worker_of_every_dyno() -> None:
    # 1 dyno x 2 workers x 2 pools x (2 + 2) + 3 = 19 fits essential-0's 20; 2 dynos do not.
    fits = {"dynoSize": "standard-2x", "dynoCount": "1", "mlflowWorkers": "2"}
    assert load_config(fits).db_connections_needed == 19
    text = problem({**fits, "dynoCount": "2"})
    assert "= 35 connections, more than essential-0's limit of 20" in text
    assert "2 pools (tracking, model registry)" in text
    assert load_config({**fits, "dynoCount": "2", "postgresPlan": "standard-0"}).dyno_count == 2


# -- login modes and team accounts ------------------------------------------------------------

TEAM = json.dumps(
    [
        {"username": "alice", "role": "admin"},
        {"username": "bob.smith@example.com", "role": "editor"},
        {"username": "carol", "role": "reader"},
    ]
)


def test_accounts_mode_reads_the_team() -> None:
    loaded = load_config(
        {
            **ACCOUNTS,
            "adminUsername": "root-admin",
            "adminPassword": "an-admin-password-0123",
            "people": TEAM,
            "authCacheTtlSeconds": "0",
            "defaultPermission": "NO_PERMISSIONS",
        }
    )
    assert loaded.login_mode == "accounts"
    assert loaded.admin_username == "root-admin"
    assert loaded.admin_password is not None
    assert resolved(loaded.admin_password) == ("an-admin-password-0123", True)
    assert loaded.people == (
        stack_settings.Person("alice", "admin"),
        stack_settings.Person("bob.smith@example.com", "editor"),
        stack_settings.Person("carol", "reader"),
    )
    assert (loaded.auth_cache_ttl_seconds, loaded.default_permission) == (0, "NO_PERMISSIONS")
    # The shared login's settings keep their defaults and are not used.
    assert loaded.login_password is None
    assert loaded.login_user == DEFAULTS["loginUser"]


def test_a_writing_default_is_allowed_without_readers() -> None:
    editors = json.dumps([{"username": "bob", "role": "editor"}])
    for permission in stack_settings.WRITING_PERMISSIONS:
        loaded = load_config({**ACCOUNTS, "defaultPermission": permission, "people": editors})
        assert loaded.default_permission == permission


def test_an_empty_team_is_the_admin_alone() -> None:
    assert load_config({**ACCOUNTS, "people": "[]"}).people == ()
    assert load_config(ACCOUNTS).people == ()


# (overrides in accounts mode, the key the message names, what it says): each names the key,
# the problem and the fix.
ACCOUNTS_BAD_VALUES = [
    ({"people": "alice,bob"}, "people", "is not a list of people; write it in Pulumi.<stack>"),
    ({"people": '{"alice": "editor"}'}, "people", "is not a list of people"),
    ({"people": '["alice"]'}, "people[0]", "'alice' is not a person; write it in"),
    (
        {"people": '[{"username": "alice", "role": "editor", "email": "a@x"}]'},
        "people[0]",
        "has unknown fields 'email'; allowed: username, role",
    ),
    (
        {"people": '[{"role": "editor"}]'},
        "people[0].username",
        "is missing or not text; give each person a username",
    ),
    (
        {"people": '[{"username": "al ice", "role": "editor"}]'},
        "people[0].username",
        "'al ice' is not a valid login user; use 1 to 64 letters",
    ),
    (
        {"people": '[{"username": "a:b", "role": "editor"}]'},
        "people[0].username",
        "'a:b' must not contain ':'",
    ),
    (
        {"people": '[{"username": "alice", "role": "writer"}]'},
        "people[0].role",
        "'writer' is not a role; allowed: admin, editor, reader",
    ),
    (
        {"people": '[{"username": "alice"}]'},
        "people[0].role",
        "is missing; allowed: admin, editor, reader",
    ),
    (
        {"people": json.dumps([{"username": "alice", "role": "editor"}, {"username": "Alice"}])},
        "people[1].username",
        "'Alice' is listed twice (also people[0]; usernames are compared ignoring case)",
    ),
    (
        {"people": '[{"username": "Admin", "role": "editor"}]'},
        "people[0].username",
        "'Admin' is the admin account (adminUsername), which the program creates itself; give",
    ),
    (
        {"people": json.dumps([{"username": f"p{n}", "role": "reader"} for n in range(101)])},
        "people",
        "lists 101 people, more than 100",
    ),
    (
        {"people": '[{"username": ".alice", "role": "editor"}]'},
        "people[0].username",
        "'.alice' must start with a letter or digit",
    ),
    ({"adminUsername": "-admin"}, "adminUsername", "'-admin' must start with a letter or digit"),
    (
        {"adminPassword": "pässwörd-long-enough"},
        "adminPassword",
        "(value not shown) contains characters outside ASCII: MLflow reads logins as ASCII",
    ),
    (
        {"defaultPermission": "EDIT", "people": TEAM},
        "defaultPermission",
        "'EDIT' would let every account write, the readers in people (carol) too; use READ or "
        "NO_PERMISSIONS",
    ),
    ({"adminUsername": "ad min"}, "adminUsername", "'ad min' is not a valid login user"),
    ({"adminUsername": ""}, "adminUsername", "'' is not a valid login user"),
    (
        {"authCacheTtlSeconds": "-1"},
        "authCacheTtlSeconds",
        "-1 is out of range; allowed: 0 to 3600",
    ),
    ({"authCacheTtlSeconds": "3601"}, "authCacheTtlSeconds", "3601 is out of range"),
    ({"authCacheTtlSeconds": "30s"}, "authCacheTtlSeconds", "'30s' is not a whole number"),
    (
        {"defaultPermission": "read"},
        "defaultPermission",
        "'read' is not allowed; allowed: READ, EDIT, MANAGE, NO_PERMISSIONS",
    ),
    ({"loginMode": "sso"}, "loginMode", "'sso' is not allowed; allowed: shared, accounts"),
    ({"adminPassword": "short-Secret1"}, "adminPassword", "(value not shown) is too short"),
    (
        {"adminPassword": "p" * 73},
        "adminPassword",
        "(value not shown) is too long: use at most 72 bytes (the limit this project keeps for "
        "every password)",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "message"), ACCOUNTS_BAD_VALUES)
def test_bad_accounts_settings_name_the_key_the_problem_and_the_fix(
    overrides: dict[str, str], key: str, message: str
) -> None:
    text = problem({**ACCOUNTS, **overrides})
    assert f"  - mlflow-heroku:{key}: {message}" in text


def test_every_bad_person_is_reported_at_once() -> None:
    people = [
        {"username": "ok", "role": "reader"},
        {"username": "", "role": "reader"},
        {"username": "bad role", "role": "owner"},
        {"username": "OK", "role": "editor"},
    ]
    text = problem({**ACCOUNTS, "people": json.dumps(people)})
    assert text.count("\n  - ") == 4
    assert "people[1].username" in text
    assert "people[2].username" in text
    assert "people[2].role" in text
    assert "people[3].username" in text


def test_each_login_mode_refuses_the_other_modes_settings() -> None:
    """A setting the stack's mode never reads would silently do nothing: refused, naming the
    key and both ways out, never the value."""
    for key, value in {
        "adminUsername": "boss",
        "adminPassword": "a-secret-admin-password",
        "people": TEAM,
        "authCacheTtlSeconds": "60",
        "defaultPermission": "EDIT",
    }.items():
        text = problem({key: value})
        assert (
            f"mlflow-heroku:{key}: is set (value not shown), but it applies to loginMode accounts "
            "only and this stack's loginMode is shared; remove it (`pulumi config rm "
            f"{key}`), or set loginMode accounts" in text
        ), key
        assert value not in text
    for key, value in {"loginUser": "team", "loginPassword": "a-secret-shared-password"}.items():
        text = problem({**ACCOUNTS, key: value})
        assert (
            f"mlflow-heroku:{key}: is set (value not shown), but it applies to loginMode shared "
            "only and this stack's loginMode is accounts" in text
        ), key
        assert value not in text


def test_the_other_modes_defaults_are_not_refused() -> None:
    """The CLI hands the program Pulumi.yaml's defaults for keys a stack never set: those are
    not "set", in either mode."""
    defaults = {
        key: str(DEFAULTS[key])
        for key in (*stack_settings.ACCOUNTS_KEYS, "loginUser")
        if key in DEFAULTS
    }
    assert load_config({**defaults, "people": "[]"}).login_mode == "shared"
    assert load_config({**defaults, **ACCOUNTS}).login_mode == "accounts"


def test_the_connection_budget_counts_the_accounts_store() -> None:
    small = {"loginMode": "accounts", "postgresPlan": "essential-0"}
    # 1 dyno x 1 worker x 3 pools x (3 + 1) + 3 = 15 fits essential-0's 20.
    assert load_config({**small, "mlflowWorkers": "1"}).db_connections_needed == 15
    # The default pools and workers need 27 connections with accounts, 19 in shared mode.
    assert load_config().db_connections_needed == 19
    text = problem(small)
    assert (
        "mlflow-heroku:dbPoolSize: dynoCount 1 x mlflowWorkers 2 x 3 pools (tracking, model "
        "registry, accounts) x (dbPoolSize 3 + dbMaxOverflow 1) + 3 spare = 27 connections, "
        "more than essential-0's limit of 20; lower dbPoolSize + dbMaxOverflow to at most 2 in "
        "total, or choose a larger postgresPlan" in text
    )
    assert load_config({**small, "dbPoolSize": "1"}).db_connections_needed == 15
    assert load_config({**small, "postgresPlan": "essential-2"}).db_connections_needed == 27
    # When no pool sizes can fit, the message says to lower the workers instead.
    crowded = {**small, "dynoSize": "standard-2x", "mlflowWorkers": "4", "dbPoolSize": "1"}
    text = problem(crowded)
    assert "= 27 connections, more than essential-0's limit of 20; lower mlflowWorkers or " in text
    assert stack_settings.db_pools_per_worker("accounts") == (
        stack_settings.DB_POOLS_PER_WORKER + stack_settings.AUTH_STORE_POOLS_PER_WORKER
    )


def test_an_admin_password_is_refused_in_plain_text_and_never_echoed() -> None:
    password = "an-admin-password-in-plain-text"
    text = problem({**ACCOUNTS, "adminPassword": password}, secret_keys={"heroku:apiKey"})
    assert (
        "mlflow-heroku:adminPassword: is stored in plain text; run "
        "`pulumi config set --secret adminPassword`" in text
    )
    assert password not in text


def test_stack_files_are_valid_and_hold_no_secrets() -> None:
    for stack in ("dev", "prod"):
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert not SECRET & set(config)
        assert not any(isinstance(value, dict) and "secure" in value for value in config.values())
        # Native YAML types, so the CLI's check against Pulumi.yaml's declared types passes.
        project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
        kinds = {"integer": int, "boolean": bool, "string": str}
        for key, value in config.items():
            name = key.removeprefix("mlflow-heroku:")
            if name == "people":  # undeclared (Pulumi.yaml types have no objects)
                assert isinstance(value, list), key
            elif name != key:
                assert isinstance(value, kinds[project[name]["type"]]), key
        # What the CLI hands the program: strings, booleans as "true"/"false".
        raw = base_config(stack)
        loaded = load(stack, raw.get, lambda key: key == "heroku:apiKey", {})
        assert loaded.app_name.endswith(stack)
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    dev = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    assert prod["mlflow-heroku:protectData"] is True
    assert prod["mlflow-heroku:bucketVersioning"] is True
    assert dev["mlflow-heroku:protectData"] is False
    limits = stack_settings.POSTGRES_CONNECTION_LIMITS
    assert limits[prod["mlflow-heroku:postgresPlan"]] > limits[dev["mlflow-heroku:postgresPlan"]]
    # Prod runs team accounts with an example team; dev pins the shared login explicitly, so a
    # later change of the default cannot switch it.
    assert prod["mlflow-heroku:loginMode"] == "accounts"
    assert dev["mlflow-heroku:loginMode"] == "shared"
    raw = base_config("prod")
    people = load("prod", raw.get, lambda key: key == "heroku:apiKey", {}).people
    assert {person.role for person in people} == set(stack_settings.ROLES)


def test_pulumi_yaml_declares_exactly_the_settings_and_their_defaults() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == stack_settings.PROJECT
    assert project["runtime"]["name"] == "python"
    declared = project["config"]
    # Optional keys without a default stay undeclared (the CLI would demand them in every
    # stack); Pulumi.yaml documents them in a comment instead.
    assert set(declared) == set(DEFAULTS) | set(stack_settings.REQUIRED_KEYS)
    text = (ROOT / "Pulumi.yaml").read_text()
    for key in stack_settings.OPTIONAL_KEYS:
        assert f"\n#   {key} " in text, key
    for key, declaration in declared.items():
        assert declaration.get("description"), key
        if key in DEFAULTS:
            assert declaration.get("default") == DEFAULTS[key], key
            kind = {bool: "boolean", int: "integer", str: "string", list: "array"}
            assert declaration["type"] == kind[type(DEFAULTS[key])], key
        else:
            assert "default" not in declaration, key
    assert set(stack_settings.SECRET_KEYS) <= set(stack_settings.OPTIONAL_KEYS)


def test_pulumi_yaml_states_the_programs_limits() -> None:
    """The ranges and rules Pulumi.yaml's descriptions give are the ones the program enforces."""
    text = (ROOT / "Pulumi.yaml").read_text()
    declared = yaml.safe_load(text)["config"]
    assert set(stack_settings.INTEGER_RANGES) == {
        key for key, value in DEFAULTS.items() if type(value) is int
    }
    for key, (low, high) in stack_settings.INTEGER_RANGES.items():
        assert re.search(rf"\b{low}-{high}\b", declared[key]["description"]), key
    gib = 1024**3
    body = f"{stack_settings.MIN_BODY_SIZE // gib}g to {stack_settings.MAX_BODY_SIZE // gib}g"
    assert body in declared["maxBodySize"]["description"]
    for mode in stack_settings.LOGIN_MODES:
        formula = (
            f"dynoCount x mlflowWorkers x {stack_settings.db_pools_per_worker(mode)} x "
            f"(dbPoolSize + dbMaxOverflow) + {stack_settings.DB_CONNECTION_MARGIN}"
        )
        assert formula in declared["dbPoolSize"]["description"], mode
    modes = declared["loginMode"]["description"]
    assert all(f"{mode}:" in modes for mode in stack_settings.LOGIN_MODES)
    permissions = declared["defaultPermission"]["description"]
    assert f"{', '.join(stack_settings.PERMISSIONS[:-1])} or {stack_settings.PERMISSIONS[-1]}" in (
        permissions
    )
    # The header comment documents the undeclared keys; read it as one text.
    header = " ".join(
        line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")
    )
    roles = f"{', '.join(stack_settings.ROLES[:-1])} or {stack_settings.ROLES[-1]}"
    assert f"role {roles};" in header
    assert f"at most {stack_settings.MAX_PEOPLE})" in header
    password = f"{stack_settings.MIN_PASSWORD_LENGTH}-{stack_settings.MAX_PASSWORD_BYTES} bytes"
    assert (
        f"#   loginPassword  secret (`pulumi config set --secret loginPassword`), {password}"
        in text
    )
    assert f"(`pulumi config set --secret adminPassword`), {password}" in text
    assert f"Unset: a {GENERATED_PASSWORD_LENGTH}-character password is generated" in text
    dyno_sizes = declared["dynoSize"]["description"]
    assert ", ".join(stack_settings.DYNO_MEMORY_MB) in dyno_sizes
    assert f"{' and '.join(stack_settings.SINGLE_DYNO_SIZES)} allow 1 dyno only" in dyno_sizes
    assert " or ".join(stack_settings.HEROKU_REGIONS) in declared["region"]["description"]


def test_pulumi_yaml_descriptions_carry_no_measurements() -> None:
    """Figures go stale in a config file: descriptions point at docs/benchmark.md instead."""
    for key, declaration in yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"].items():
        description = declaration["description"]
        assert not re.search(r"~|\d\s*(%|MB|GB|ms\b|req/s)|\brun [A-Z]\b", description), key


# -- fuzzing: generated bad values fail with SettingsError naming the key, nothing else ----------

printable = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def _not(check: Callable[[str], str | None]) -> Callable[[str], bool]:
    """A filter keeping the values `check` refuses."""
    return lambda value: check(value) is not None


def out_of_range(key: str) -> st.SearchStrategy[str]:
    low, high = stack_settings.INTEGER_RANGES[key]
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)).map(str)


BAD_STRATEGIES = {
    "appName": printable.filter(_not(stack_settings.check_app_name)),
    "region": printable.filter(lambda value: value not in stack_settings.HEROKU_REGIONS),
    "postgresPlan": printable.filter(_not(stack_settings.check_postgres_plan)),
    "dynoSize": printable.filter(_not(stack_settings.check_dyno_size)),
    "dynoCount": st.one_of(
        out_of_range("dynoCount"),
        printable.filter(lambda value: not re.fullmatch(r"\s*\+?0*1\s*", value)),
    ),
    "mlflowWorkers": out_of_range("mlflowWorkers"),
    "releaseTimeoutSeconds": out_of_range("releaseTimeoutSeconds"),
    "dbPoolSize": out_of_range("dbPoolSize"),
    "dbMaxOverflow": out_of_range("dbMaxOverflow"),
    "maxBodySize": printable.filter(_not(stack_settings.check_body_size)),
    "loginUser": printable.filter(_not(stack_settings.check_login_user)),
    "bucketName": printable.filter(_not(stack_settings.check_bucket_name)),
    "artifactPrefix": printable.filter(_not(stack_settings.check_artifact_prefix)),
    "bucketVersioning": printable.filter(lambda v: v.strip().lower() not in ("true", "false")),
    "kmsKeyArn": printable.filter(_not(stack_settings.check_kms_key)),
    "customDomains": st.lists(
        st.text(
            alphabet=string.ascii_letters + string.digits + "._-*", min_size=1, max_size=20
        ).filter(_not(stack_settings.check_hostname)),
        min_size=1,
        max_size=3,
    ).map(json.dumps),
    "aws:region": printable.filter(
        lambda v: v != "" and not stack_settings.AWS_REGION_NAME.fullmatch(v)
    ),
}


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_generated_bad_values_give_a_clear_error_naming_the_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(BAD_STRATEGIES)), label="key")
    value = data.draw(BAD_STRATEGIES[key], label="value")
    with pytest.raises(SettingsError) as raised:
        load_config({key: value})
    qualified = key if ":" in key else f"mlflow-heroku:{key}"
    assert f"  - {qualified}: " in str(raised.value)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    config=st.dictionaries(
        st.sampled_from(sorted({*DEFAULTS, *stack_settings.OPTIONAL_KEYS, "appName"})),
        printable,
        max_size=6,
    )
)
def test_any_config_either_loads_or_fails_with_settings_error(config: dict[str, str]) -> None:
    """Whatever the values, the only exception is SettingsError (never a library traceback),
    in either login mode."""
    for mode in stack_settings.LOGIN_MODES:
        result = outcome({"loginMode": mode, **config})
        if isinstance(result, SettingsError):
            assert str(result).startswith("Invalid configuration for stack 'dev':")
        else:
            assert isinstance(result, Settings)
    result = outcome(config)
    if isinstance(result, SettingsError):
        assert str(result).startswith("Invalid configuration for stack 'dev':")
    else:
        assert isinstance(result, Settings)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    password=printable.map(lambda text: f"QZXJ{text}"),
    plain=st.booleans(),
    key=st.sampled_from(["loginPassword", "adminPassword"]),
    mode=st.sampled_from(stack_settings.LOGIN_MODES),
)
def test_a_password_is_never_echoed(password: str, plain: bool, key: str, mode: str) -> None:
    result = outcome(
        {"loginMode": mode, key: password}, secret_keys={"heroku:apiKey"} if plain else SECRET
    )
    if isinstance(result, SettingsError):
        assert "QZXJ" not in str(result)
        assert f"mlflow-heroku:{key}: " in str(result)
    else:
        assert not plain


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | printable,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["username", "role", "x"]), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(people=st.lists(json_values, max_size=4).map(json.dumps) | printable)
def test_any_people_value_loads_or_names_the_entry_at_fault(people: str) -> None:
    result = outcome({**ACCOUNTS, "mlflowWorkers": "1", "people": people})
    if isinstance(result, SettingsError):
        for line in str(result).splitlines()[1:]:
            assert line.startswith("  - mlflow-heroku:people"), line
    else:
        usernames = [person.username.casefold() for person in result.people]
        assert len(set(usernames)) == len(usernames)
        assert all(person.role in stack_settings.ROLES for person in result.people)


def outcome(config: Mapping[str, str], secret_keys: set[str] = SECRET) -> Settings | SettingsError:
    try:
        return load_config(config, secret_keys=secret_keys)
    except SettingsError as error:
        return error


def test_forked_workers_memory_model_fits_three_on_512_mb() -> None:
    """Workers forked from one import share its memory (docs/benchmark.md, "Forked workers"),
    so a basic dyno takes three if the connections fit; four would not fit its 512 MB."""
    three = {"mlflowWorkers": "3", "dbPoolSize": "1", "dbMaxOverflow": "1"}
    assert load_config(three).mlflow_workers == 3
    assert "allowed: 1 to 3 (or a larger dynoSize)" in problem({**three, "mlflowWorkers": "4"})
