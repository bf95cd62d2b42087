"""The contract between the program and the image (infra/heroku_app.py's config vars).

The config vars the program sets on the app (captured from the mocked ConfigAssociation), plus
what Heroku sets on a dyno, must be an environment the image's `load_settings` accepts, for both
stack files and the edge of every setting that reaches the image; and every value the image
would refuse, the program refuses at preview, naming the stack key. Each shared limit is one
constant per side; the tests below check that the two sides agree.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow_heroku_runtime import maintenance
from mlflow_heroku_runtime import settings as image_settings
from mlflow_heroku_runtime.errors import ConfigError
from mlflow_heroku_runtime.htpasswd import BCRYPT_MAX_PASSWORD_BYTES

from infra import settings as stack_settings
from infra.heroku_api import parse_repo_digest
from infra.heroku_app import allowed_hosts, cors_origins
from infra.release import RELEASE_DYNO_PREFIX, RELEASE_PROCESS_TYPE
from infra.settings import Settings, SettingsError

from .conftest import (
    PROJECT,
    SECRET_CONFIG_KEYS,
    HerokuAwsMocks,
    ProgramRun,
    RecordingMonitor,
    base_config,
    is_secret,
    reveal,
    run_program,
)

CONFIG_VARS = "heroku:app/configAssociation:ConfigAssociation"
APP = "heroku:app/app:App"
BUCKET = "aws:s3/bucket:Bucket"
RELEASE = "pulumi-python:dynamic/heroku:ContainerRelease"
# What Heroku itself sets on a web dyno; DATABASE_URL as the Postgres add-on sets it.
HEROKU_DYNO_VARS = {
    "DYNO": "web.1",
    "PORT": "34567",
    "DATABASE_URL": "postgres://user:pass@host:5432/db",
}
# Heroku's limits the image's own defaults must respect (/work/shared/notes/facts.md): the
# router's 30 s to the first response byte (H12) and the 60 s to bind $PORT (R10).
HEROKU_ROUTER_TIMEOUT_SECONDS = 30
HEROKU_BOOT_TIMEOUT_SECONDS = 60
KIB, MIB, GIB = 1024, 1024**2, 1024**3
MIN_BODY, MAX_BODY = stack_settings.MIN_BODY_SIZE, stack_settings.MAX_BODY_SIZE
MAX_WORKERS = stack_settings.MAX_MLFLOW_WORKERS
MAX_POOL = stack_settings.MAX_DB_POOL


def stack_config(stack: str, overrides: Mapping[str, str]) -> dict[str, str]:
    config = base_config(stack)
    for key, value in overrides.items():
        config[key if ":" in key else f"{PROJECT}:{key}"] = value
    return config


def load_stack_settings(stack: str, config: Mapping[str, str]) -> Settings:
    return stack_settings.load(stack, config.get, lambda key: key in SECRET_CONFIG_KEYS, {})


def dyno_environment(program: ProgramRun) -> dict[str, str]:
    """The app's config vars, as Heroku hands them to the dyno with its own."""
    config_vars = program.one(CONFIG_VARS).inputs
    plain, sensitive = config_vars["vars"], config_vars["sensitiveVars"]
    assert is_secret(sensitive)
    sensitive = reveal(sensitive)
    # Heroku's own variables are Heroku's; a var in both maps would be set twice.
    assert not set(plain) & set(sensitive)
    assert not (set(plain) | set(sensitive)) & set(HEROKU_DYNO_VARS)
    environ = {**plain, **sensitive, **HEROKU_DYNO_VARS}
    assert all(isinstance(value, str) for value in environ.values()), environ
    return environ


def with_shared_login(config: Mapping[str, str]) -> dict[str, str]:
    """The same stack with the shared login: the edge cases and generated combinations below
    are sized for its two pools per worker (accounts mode's third pool has its own test)."""
    shared = {key: value for key, value in config.items() if key != f"{PROJECT}:people"}
    shared[f"{PROJECT}:loginMode"] = "shared"
    return shared


def run_stack(
    program_module: ModuleType,
    stack: str,
    overrides: Mapping[str, str],
    login_mode_of_the_stack_file: bool = False,
) -> tuple[Settings, ProgramRun]:
    config = stack_config(stack, overrides)
    if not login_mode_of_the_stack_file:
        config = with_shared_login(config)
    program = run_program(stack, config, program=program_module.main)
    return load_stack_settings(stack, config), program


def assert_image_runs_the_stack(stack: Settings, program: ProgramRun) -> None:
    """The image accepts the dyno's environment and reads each setting as the stack meant it."""
    environ = dyno_environment(program)
    try:
        image = image_settings.load_settings(environ)
    except ConfigError as error:
        pytest.fail(f"the image refuses what the program allows: {error.problems}")
    assert image.behind_heroku_router
    assert image.port == int(HEROKU_DYNO_VARS["PORT"])
    assert image.database_description == "host:5432/db"
    assert (image.workers, image.pool_size, image.max_overflow) == (
        stack.mlflow_workers,
        stack.db_pool_size,
        stack.db_max_overflow,
    )
    assert image.max_body_size == stack.max_body_size.lower()
    sensitive = reveal(program.one(CONFIG_VARS).inputs["sensitiveVars"])
    assert image.login_mode == stack.login_mode
    if stack.login_mode == "accounts":
        assert (image.username, image.password) == ("", "")  # nginx knows no login
        # What the migration step makes of the accounts (accounts.py).
        people = image_settings.load_people(environ)
        assert people.admin_username == stack.admin_username
        assert [(p.username, p.role) for p in people.people] == [
            (p.username, p.role) for p in stack.people
        ]
        assert image.auth_cache_ttl_seconds == stack.auth_cache_ttl_seconds
        assert image.default_permission == stack.default_permission
        secret_values = [sensitive["MLFLOW_AUTH_ADMIN_PASSWORD"]]
        secret_values += list(people.initial_passwords.values())
    else:
        assert image.username == stack.login_user
        assert image.password == sensitive["MLFLOW_TRACKING_PASSWORD"]
        secret_values = [sensitive["MLFLOW_TRACKING_PASSWORD"]]
    # The image redacts the program's secrets from its children's output.
    for value in [
        *secret_values,
        sensitive["AWS_SECRET_ACCESS_KEY"],
        sensitive["MLFLOW_CRYPTO_KEK_PASSPHRASE"],
    ]:
        assert value in image.secrets
    bucket = program.one(BUCKET).outputs["bucket"]
    if stack.bucket_name is not None:
        assert bucket == stack.bucket_name
    assert image.artifacts_destination == f"s3://{bucket}/{stack.artifact_prefix}"
    host = program.one(APP).outputs["webUrl"].removeprefix("https://").rstrip("/")
    assert image.mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"] == allowed_hosts(
        host, stack.custom_domains
    )
    assert image.mlflow_env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == cors_origins(
        host, stack.custom_domains
    )
    assert image.mlflow_env["AWS_DEFAULT_REGION"] == stack.aws_region
    # The one-off maintenance dyno reads its own settings from the same config vars.
    upkeep = maintenance.load_config(environ)
    assert upkeep.artifacts_destination == image.artifacts_destination
    assert (upkeep.retention_days, upkeep.gc_after_days) == (
        stack.backup_retention_days,
        stack.gc_after_days,
    )


# -- the program's settings at their edges: the image accepts every one --------------------------

# (stack file, overrides): each setting that reaches the image at its smallest, its largest and
# with odd characters; combinations of them are generated further below.
ALLOWED = {
    "dev stack file": ("dev", {}),
    "prod stack file": ("prod", {}),
    "smallest of everything": (
        "dev",
        {
            "appName": "abc",
            "mlflowWorkers": "1",
            "dbPoolSize": "1",
            "dbMaxOverflow": "1",
            "maxBodySize": f"{MIN_BODY // GIB}g",
            "loginUser": "a",
            "loginPassword": "p" * stack_settings.MIN_PASSWORD_LENGTH,
            "artifactPrefix": "a",
            "aws:region": "us-east-1",
        },
    ),
    "most workers a 512 MB dyno fits": (
        "dev",
        {
            "dynoSize": "basic",
            "mlflowWorkers": str(stack_settings.max_workers_for(512)),
            "dbPoolSize": "1",
            "dbMaxOverflow": "1",
        },
    ),
    "most workers": (
        "prod",
        {
            "dynoSize": "performance-l",
            "postgresPlan": "standard-3",
            "mlflowWorkers": str(MAX_WORKERS),
            "dbPoolSize": "14",
            "dbMaxOverflow": "1",
        },
    ),
    "largest pools": (
        "prod",
        {
            "postgresPlan": "standard-2",
            "mlflowWorkers": "1",
            "dbPoolSize": str(MAX_POOL),
            "dbMaxOverflow": str(MAX_POOL),
        },
    ),
    "several dynos": (
        "prod",
        {"dynoSize": "standard-1x", "dynoCount": "3", "postgresPlan": "standard-0"},
    ),
    **{
        f"body size {size}": ("dev", {"maxBodySize": size})
        for size in (
            f"{MIN_BODY // MIB}m",
            f"{MIN_BODY // KIB}K",
            str(MIN_BODY),
            f"{MAX_BODY // GIB}g",
            f"{MAX_BODY // GIB}G",
            f"{MAX_BODY // MIB}m",
            f"{MAX_BODY // KIB}k",
        )
    },
    "longest names": (
        "dev",
        {
            "appName": "a" + "b1-" * 9 + "cd",
            "loginUser": "u" * 64,
            "loginPassword": "x" * stack_settings.MAX_PASSWORD_BYTES,
            "artifactPrefix": "/".join(["p" * 63] * 8),
            "customDomains": json.dumps([".".join(["h" * 63] * 3) + ".example.com"]),
        },
    ),
    "longest bucket name": ("dev", {"bucketName": "b" * 63}),
    "shortest bucket name": ("dev", {"bucketName": "0-0"}),
    "odd characters": (
        "dev",
        {
            "appName": "a--1-b",
            "loginUser": "first.last+ml@example.com_-",
            # Every ASCII punctuation mark, ':' included (basic auth splits at the first one).
            "loginPassword": string.punctuation,
            "artifactPrefix": "!_.*'()-/Mixed.Case/v2(x)",
            "customDomains": json.dumps(["ml.example.com", "a-b.c0.example.org"]),
            "aws:region": "us-gov-west-1",
        },
    ),
    "multibyte password at bcrypt's limit": ("dev", {"loginPassword": "é" * 36}),
    "four-byte characters in the password": ("dev", {"loginPassword": "\U0001f600" * 18}),
    "other AWS regions": ("prod", {"aws:region": "ap-southeast-2"}),
    "maintenance at its edges": ("dev", {"backupRetentionDays": "1", "gcAfterDays": "0"}),
    "maintenance at its other edges": (
        "prod",
        {"backupRetentionDays": "3650", "gcAfterDays": "3650"},
    ),
    "an isolated AWS region": ("prod", {"aws:region": "us-isob-east-1"}),
}


@pytest.mark.parametrize(("stack", "overrides"), list(ALLOWED.values()), ids=list(ALLOWED))
def test_the_image_accepts_what_the_program_allows(
    program_module: ModuleType, stack: str, overrides: dict[str, str]
) -> None:
    assert_image_runs_the_stack(*run_stack(program_module, stack, overrides))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_image_accepts_each_stack_file_in_its_login_mode(
    program_module: ModuleType, stack: str
) -> None:
    """dev's shared login and prod's accounts (its people, the admin, the cache, the default
    permission) as the image and its migration step read them."""
    settings, program = run_stack(program_module, stack, {}, login_mode_of_the_stack_file=True)
    assert settings.login_mode == {"dev": "shared", "prod": "accounts"}[stack]
    assert_image_runs_the_stack(settings, program)


def test_the_edge_cases_really_are_edges() -> None:
    """Guards the table above: each edge is where the program starts refusing."""
    config = stack_config("dev", ALLOWED["most workers a 512 MB dyno fits"][1])
    config[f"{PROJECT}:mlflowWorkers"] = str(stack_settings.max_workers_for(512) + 1)
    with pytest.raises(SettingsError, match=f"{PROJECT}:mlflowWorkers: "):
        load_stack_settings("dev", config)
    config = stack_config("prod", ALLOWED["most workers"][1])
    config[f"{PROJECT}:dbPoolSize"] = "15"  # one connection per pool too many for standard-3
    with pytest.raises(SettingsError, match=f"{PROJECT}:dbPoolSize: "):
        load_stack_settings("prod", config)
    longest = ALLOWED["longest names"][1]
    assert len(longest["appName"]) == 30
    assert len(longest["artifactPrefix"]) == 511
    assert len(json.loads(longest["customDomains"])[0]) == 203
    assert len(ALLOWED["multibyte password at bcrypt's limit"][1]["loginPassword"].encode()) == 72


def test_a_generated_bucket_name_fits_s3_and_the_image(program_module: ModuleType) -> None:
    """The longest app name gives the longest bucket prefix; with the provider's unique suffix
    the name stays within S3's 63 characters, which the image checks again."""
    stack, program = run_stack(program_module, "dev", {"appName": "a" * 30})
    bucket = program.one(BUCKET).outputs["bucket"]
    assert len(bucket) == 62
    assert stack_settings.check_bucket_name(bucket) is None
    assert_image_runs_the_stack(stack, program)


# Values the program allows, drawn from its own rules; combinations the dyno's memory or the
# Postgres plan refuse are steered around rather than filtered, so each example runs.
@st.composite
def allowed_overrides(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    stack = draw(st.sampled_from(["dev", "prod"]))
    dyno_size = draw(st.sampled_from(sorted(stack_settings.DYNO_MEMORY_MB)))
    plan = draw(st.sampled_from(sorted(stack_settings.POSTGRES_CONNECTION_LIMITS)))
    single = dyno_size in stack_settings.SINGLE_DYNO_SIZES
    dynos = 1 if single else draw(st.integers(1, 3))
    spare = stack_settings.POSTGRES_CONNECTION_LIMITS[plan] - stack_settings.DB_CONNECTION_MARGIN
    per_pool_pair = dynos * stack_settings.DB_POOLS_PER_WORKER  # x workers x (pool + overflow)
    memory = stack_settings.DYNO_MEMORY_MB[dyno_size]
    most_workers = min(stack_settings.max_workers_for(memory), spare // (per_pool_pair * 2))
    workers = draw(st.integers(1, max(most_workers, 1)))
    budget = min(2 * MAX_POOL, spare // (per_pool_pair * workers))
    pool = draw(st.integers(1, min(MAX_POOL, budget - 1)))
    overflow = draw(st.integers(1, min(MAX_POOL, budget - pool)))
    unit = draw(st.sampled_from(["", "k", "K", "m", "M", "g", "G"]))
    factor = {"": 1, "k": KIB, "m": MIB, "g": GIB}[unit.lower()]
    smallest = -(-MIN_BODY // factor)
    body = draw(st.integers(smallest, min(MAX_BODY // factor, 10**10 - 1)))
    user = draw(
        st.text(string.ascii_letters + string.digits + "._@+-:é ", min_size=1, max_size=64).filter(
            lambda value: stack_settings.check_login_user(value) is None
        )
    )
    password = draw(
        st.text(
            st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S")),
            min_size=16,
            max_size=40,
        ).filter(lambda value: stack_settings.check_password(value) is None)
    )
    prefix = draw(
        st.lists(
            st.text(string.ascii_letters + string.digits + "!_.*'()-", min_size=1, max_size=20),
            min_size=1,
            max_size=4,
        )
        .map("/".join)
        .filter(lambda value: stack_settings.check_artifact_prefix(value) is None)
    )
    overrides = {
        "dynoSize": dyno_size,
        "postgresPlan": plan,
        "dynoCount": str(dynos),
        "mlflowWorkers": str(workers),
        "dbPoolSize": str(pool),
        "dbMaxOverflow": str(overflow),
        "maxBodySize": f"{body}{unit}",
        "loginUser": user,
        "loginPassword": password,
        "artifactPrefix": prefix,
        "aws:region": draw(st.sampled_from(["eu-west-1", "us-gov-east-1", "ap-northeast-3"])),
    }
    if draw(st.booleans()):
        overrides["customDomains"] = json.dumps(
            draw(st.lists(st.sampled_from(["a.example.com", "b.c.example.org"]), unique=True))
        )
    return stack, overrides


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(case=allowed_overrides())
def test_the_image_accepts_generated_combinations_the_program_allows(
    program_module: ModuleType, case: tuple[str, dict[str, str]]
) -> None:
    stack, overrides = case
    assert_image_runs_the_stack(*run_stack(program_module, stack, overrides))


# -- what the image refuses, the program refuses first ------------------------------------------

# (stack key, stack value, the config var it becomes, that var's value in the dev stack's
# environment: "{bucket}" and "{host}" stand for the dev stack's bucket and app host name).
# Limits come from the image's side where it names them, so a program looser than the image
# fails here; the first step of the test checks the image really refuses each value.
IMAGE_MIN_BODY, IMAGE_MAX_BODY = image_settings.MIN_BODY_BYTES, image_settings.MAX_BODY_BYTES
REFUSED = [
    ("mlflowWorkers", "0", "WEB_CONCURRENCY", None),
    ("mlflowWorkers", str(MAX_WORKERS + 1), "WEB_CONCURRENCY", None),
    ("dbPoolSize", "0", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", None),
    ("dbPoolSize", str(image_settings.MAX_DB_POOL + 1), "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", None),
    ("dbMaxOverflow", "0", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", None),
    (
        "dbMaxOverflow",
        str(image_settings.MAX_DB_POOL + 1),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW",
        None,
    ),
    ("maxBodySize", f"{IMAGE_MIN_BODY // KIB - 1}k", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("maxBodySize", f"{IMAGE_MIN_BODY // MIB - 1}m", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("maxBodySize", f"{IMAGE_MAX_BODY // KIB + 1}k", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("maxBodySize", f"{IMAGE_MAX_BODY // GIB + 1}g", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("maxBodySize", "5 GB", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("maxBodySize", "", "MLFLOW_HEROKU_MAX_BODY_SIZE", None),
    ("loginUser", "ml:flow", "MLFLOW_TRACKING_USERNAME", None),
    ("loginUser", "", "MLFLOW_TRACKING_USERNAME", None),
    ("loginUser", "ml\nflow", "MLFLOW_TRACKING_USERNAME", None),
    ("loginUser", "j\udcf6rg", "MLFLOW_TRACKING_USERNAME", None),
    ("loginPassword", "x" * (BCRYPT_MAX_PASSWORD_BYTES + 1), "MLFLOW_TRACKING_PASSWORD", None),
    ("loginPassword", "é" * 37, "MLFLOW_TRACKING_PASSWORD", None),
    (
        "loginPassword",
        "x" * (image_settings.MIN_PASSWORD_LENGTH - 1),
        "MLFLOW_TRACKING_PASSWORD",
        None,
    ),
    ("loginPassword", "long-enough-password\n", "MLFLOW_TRACKING_PASSWORD", None),
    ("loginPassword", "long-enough-p\udce4ssword", "MLFLOW_TRACKING_PASSWORD", None),
    ("bucketName", "Bad_Bucket", "S3_URI", "s3://Bad_Bucket/artifacts"),
    ("bucketName", "ab", "S3_URI", "s3://ab/artifacts"),
    ("artifactPrefix", "a?b=1", "S3_URI", "s3://{bucket}/a?b=1"),
    ("artifactPrefix", "a#b", "S3_URI", "s3://{bucket}/a#b"),
    ("aws:region", "Europe", "AWS_DEFAULT_REGION", None),
    ("aws:region", "eu_west_1", "AWS_DEFAULT_REGION", None),
    (
        "customDomains",
        '["ml.example.com", ""]',
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "{host},ml.example.com,",
    ),
]


@pytest.fixture(scope="module")
def dev_environment(program_module: ModuleType) -> dict[str, str]:
    return dyno_environment(run_stack(program_module, "dev", {})[1])


@pytest.mark.parametrize(("key", "value", "var", "var_value"), REFUSED)
def test_what_the_image_refuses_the_program_refuses_at_preview(
    program_module: ModuleType,
    dev_environment: dict[str, str],
    key: str,
    value: str,
    var: str,
    var_value: str | None,
) -> None:
    # The value really is one the image refuses, naming the variable.
    bucket = dev_environment["S3_URI"].removeprefix("s3://").split("/")[0]
    host = dev_environment["MLFLOW_SERVER_ALLOWED_HOSTS"]
    environ = dict(dev_environment)
    if var_value is None:
        environ[var] = value
    else:
        environ[var] = var_value.replace("{bucket}", bucket).replace("{host}", host)
    with pytest.raises(ConfigError) as refused:
        image_settings.load_settings(environ)
    assert any(var in problem for problem in refused.value.problems), refused.value.problems
    # The program refuses it in a preview, naming the stack key, before declaring anything.
    monitor = RecordingMonitor(HerokuAwsMocks(preview=True))
    qualified = key if ":" in key else f"{PROJECT}:{key}"
    with pytest.raises(SettingsError) as raised:
        run_program(
            "dev",
            stack_config("dev", {key: value}),
            preview=True,
            program=program_module.main,
            monitor=monitor,
        )
    assert f"  - {qualified}: " in str(raised.value)
    assert monitor.registrations == []


def test_every_config_var_the_program_sets_is_one_the_image_checks(
    dev_environment: dict[str, str],
) -> None:
    """A var the image never reads (a typo, a renamed variable) would be set for nothing: each
    one the program sets, emptied, makes the image refuse to start (or the maintenance command
    refuse to run, for its own variables), naming it."""
    assert set(maintenance.VARIABLES) <= set(dev_environment)
    for var in sorted(set(dev_environment) - set(HEROKU_DYNO_VARS)):
        if var in maintenance.VARIABLES:
            with pytest.raises(maintenance.MaintenanceError, match=f"^{var}="):
                maintenance.load_config({**dev_environment, var: ""})
            continue
        with pytest.raises(ConfigError) as refused:
            image_settings.load_settings({**dev_environment, var: ""})
        assert any(var in problem for problem in refused.value.problems), var


# (stack key, the maintenance command's variable): the program's range is the command's.
MAINTENANCE_KEYS = {
    "backupRetentionDays": maintenance.RETENTION_DAYS_VARIABLE,
    "gcAfterDays": maintenance.GC_AFTER_DAYS_VARIABLE,
}


@pytest.mark.parametrize("key", sorted(MAINTENANCE_KEYS))
def test_maintenance_settings_have_the_commands_names_defaults_and_ranges(
    program_module: ModuleType, dev_environment: dict[str, str], key: str
) -> None:
    var = MAINTENANCE_KEYS[key]
    assert str(stack_settings.DEFAULTS[key]) == dev_environment[var]
    assert stack_settings.DEFAULTS[key] == maintenance.DEFAULTS[var]
    assert stack_settings.INTEGER_RANGES[key] == maintenance.RANGES[var]
    low, high = maintenance.RANGES[var]
    for value in (low - 1, high + 1):
        with pytest.raises(maintenance.MaintenanceError, match=f"^{var}='?{value}'? "):
            maintenance.load_config({**dev_environment, var: str(value)})
        monitor = RecordingMonitor(HerokuAwsMocks(preview=True))
        with pytest.raises(SettingsError) as raised:
            run_program(
                "dev",
                stack_config("dev", {key: str(value)}),
                preview=True,
                program=program_module.main,
                monitor=monitor,
            )
        assert f"  - {PROJECT}:{key}: " in str(raised.value)
        assert monitor.registrations == []


# -- each shared limit: one constant per side, and the two agree --------------------------------


def test_shared_limits_agree() -> None:
    assert stack_settings.MIN_BODY_SIZE == image_settings.MIN_BODY_BYTES
    assert stack_settings.MAX_BODY_SIZE == image_settings.MAX_BODY_BYTES
    assert stack_settings.MAX_DB_POOL == image_settings.MAX_DB_POOL
    assert stack_settings.MAX_PASSWORD_BYTES == BCRYPT_MAX_PASSWORD_BYTES
    # Stricter on purpose: the program's passwords face the internet.
    assert stack_settings.MIN_PASSWORD_LENGTH >= image_settings.MIN_PASSWORD_LENGTH


def test_the_backup_prefix_the_key_reaches_is_where_the_image_writes_backups() -> None:
    from mlflow_heroku_runtime import backup

    from infra.artifact_store import BACKUP_PREFIX

    target = backup.backup_target({"S3_URI": "s3://team-bucket/artifacts"})
    assert (target.bucket, target.prefix) == ("team-bucket", BACKUP_PREFIX)


def test_the_release_phase_process_is_the_one_the_image_dispatches_on(
    program_module: ModuleType,
) -> None:
    """Heroku runs the image released as the `release` process in a dyno whose DYNO is
    `release.<n>`; the image's entrypoint runs the release phase for that prefix. The program
    releases the image for that process type (pushed to `<app>/release`), and a web dyno's
    DYNO (`web.1`) is not taken for it.

    TODO(lead): the image side's constant does not exist on main yet; once the release-phase
    branch adds one (e.g. mlflow_heroku_runtime.release_phase.DYNO_PREFIX, used by
    image/entrypoint.py), assert RELEASE_DYNO_PREFIX == that constant here."""
    _, program = run_stack(program_module, "dev", {})
    release = program.one(RELEASE)
    repository, _ = parse_repo_digest(release.inputs["release_image_ref"])
    assert repository == f"{release.inputs['app_name']}/{RELEASE_PROCESS_TYPE}"
    assert RELEASE_PROCESS_TYPE in release.outputs["process_types"]
    assert f"{RELEASE_PROCESS_TYPE}.9768".startswith(RELEASE_DYNO_PREFIX)
    assert RELEASE_DYNO_PREFIX == "release."  # Heroku's own name for the release phase
    assert not HEROKU_DYNO_VARS["DYNO"].startswith(RELEASE_DYNO_PREFIX)


def test_image_defaults_are_the_programs_defaults() -> None:
    """The image's defaults (what a dyno without the var runs) are the stack defaults."""
    pairs = {
        "mlflowWorkers": "WEB_CONCURRENCY",
        "dbPoolSize": "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
        "dbMaxOverflow": "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW",
        "maxBodySize": "MLFLOW_HEROKU_MAX_BODY_SIZE",
    }
    for key, var in pairs.items():
        assert str(stack_settings.DEFAULTS[key]) == image_settings.DEFAULTS[var], key


def test_the_image_knobs_the_program_leaves_alone_suit_heroku(
    dev_environment: dict[str, str],
) -> None:
    """The program sets no read timeout, database wait or login rate limit (docs/deploy.md):
    the image's defaults run on every dyno, so they must fit Heroku's limits."""
    left_alone = (
        "MLFLOW_HEROKU_PROXY_READ_TIMEOUT",
        "MLFLOW_HEROKU_DB_WAIT_SECONDS",
        "MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE",
    )
    assert not set(left_alone) & set(dev_environment)
    image = image_settings.load_settings(dev_environment)
    # nginx's 504 (which says what to do for the route) must come before the router's H12.
    assert image.proxy_read_timeout < HEROKU_ROUTER_TIMEOUT_SECONDS
    assert image.db_wait_seconds < HEROKU_BOOT_TIMEOUT_SECONDS
    assert image.auth_failures_per_minute >= 1
