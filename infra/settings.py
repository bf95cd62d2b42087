"""The stack's settings: read once from `pulumi.Config`, typed and validated.

Every default lives in `DEFAULTS` and every whole-number range in `INTEGER_RANGES` (Pulumi.yaml's
`config:` block documents the same values; tests keep the two equal, because the SDK never reads
Pulumi.yaml). Limits the image enforces too are one constant here each (MAX_BODY_SIZE, ...);
tests/infra/test_heroku_app.py checks that the image agrees. A bad value fails before any
resource is declared, with one message that names each bad key, its value and what is allowed.
Secret values are never repeated in a message.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import pulumi

PROJECT: Final = "mlflow-heroku"

# Config keys of this project (without the "mlflow-heroku:" namespace) and their defaults. A key
# absent here is required (appName) or optional without a default (loginPassword, kmsKeyArn, ...).
DEFAULTS: Final[Mapping[str, str | int | bool | list[str]]] = {
    "region": "us",
    "postgresPlan": "essential-0",
    "dynoSize": "basic",
    "dynoCount": 1,
    "mlflowWorkers": 2,
    "dbPoolSize": 3,
    "dbMaxOverflow": 1,
    "maxBodySize": "5g",
    "loginUser": "mlflow",
    "artifactPrefix": "artifacts",
    "bucketVersioning": False,
    "noncurrentVersionExpirationDays": 30,
    "accessKeyGeneration": 1,
    "protectData": False,
    "customDomains": [],
    "releaseTimeoutSeconds": 600,
    # -- login modes and team accounts (issue 15) --
    "loginMode": "shared",
    "adminUsername": "admin",
    "authCacheTtlSeconds": 30,
    "defaultPermission": "READ",
    # Scheduled maintenance (image/mlflow_heroku_runtime/maintenance.py, docs/operations.md).
    "backupRetentionDays": 30,
    "gcAfterDays": 30,
}
OPTIONAL_KEYS: Final = ("loginPassword", "bucketName", "kmsKeyArn", "adminPassword", "people")
REQUIRED_KEYS: Final = ("appName",)
SECRET_KEYS: Final = ("loginPassword", "adminPassword")

# Heroku's Common Runtime regions. Private Space regions (virginia, oregon, frankfurt, ...) need a
# Private Space, which this program does not create.
HEROKU_REGIONS: Final = ("us", "eu")

# Heroku Postgres plans on sale and their connection limits (Heroku Dev Center, "Heroku Postgres
# Plans"). Retired plans (hobby-dev, hobby-basic, mini, basic) are refused by name below.
POSTGRES_CONNECTION_LIMITS: Final[Mapping[str, int]] = {
    "essential-0": 20,
    "essential-1": 20,
    "essential-2": 40,
    "standard-0": 120,
    "standard-2": 400,
    **{f"standard-{n}": 500 for n in range(3, 11)},
    "premium-0": 120,
    "premium-2": 400,
    **{f"premium-{n}": 500 for n in range(3, 11)},
}
RETIRED_POSTGRES_PLANS: Final = ("hobby-dev", "hobby-basic", "mini", "basic")

# Connections kept free for migrations at boot, `heroku pg:psql` and Heroku's own monitoring.
DB_CONNECTION_MARGIN: Final = 3
# Each MLflow worker keeps two SQLAlchemy engines, each with its own pool of the configured size:
# the tracking store's and the model registry's (mlflow/store/*/sqlalchemy_store.py).
DB_POOLS_PER_WORKER: Final = 2

# -- login modes and team accounts (issue 15) ----------------------------------------------------
# shared: one basic-auth login checked by nginx. accounts: a login per person in MLflow's
# basic-auth app, its users and permissions in the same Heroku Postgres.
LOGIN_MODES: Final = ("shared", "accounts")
# Roles a person in `people` can have; docs/image.md says what each may do in MLflow.
ROLES: Final = ("admin", "editor", "reader")
# MLflow's permission names (mlflow/server/auth/permissions.py), for defaultPermission.
PERMISSIONS: Final = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
# Those that can write: as the default they would be every reader's too, so they are refused
# while people lists a reader.
WRITING_PERMISSIONS: Final = ("EDIT", "MANAGE")
# Keys each mode alone reads; the other mode refuses them when they differ from their default.
SHARED_LOGIN_KEYS: Final = ("loginUser", "loginPassword")
ACCOUNTS_KEYS: Final = (
    "adminUsername",
    "adminPassword",
    "people",
    "authCacheTtlSeconds",
    "defaultPermission",
)
# The accounts store (mlflow/server/auth/sqlalchemy_store.py) opens one more engine per worker,
# with the same MLFLOW_SQLALCHEMYSTORE_POOL_SIZE and _MAX_OVERFLOW (mlflow/store/db/utils.py).
# NOTE: assumed until the image's accounts mode says otherwise; set it to 0 if the image shares
# the tracking store's engine with the accounts store.
AUTH_STORE_POOLS_PER_WORKER: Final = 1
# Heroku allows 32 kB of config vars per app; each person costs about 100 bytes in two of them.
MAX_PEOPLE: Final = 100
MAX_AUTH_CACHE_TTL_SECONDS: Final = 3600


def db_pools_per_worker(login_mode: str) -> int:
    """SQLAlchemy pools each MLflow worker keeps in ``login_mode``."""
    accounts = AUTH_STORE_POOLS_PER_WORKER if login_mode == "accounts" else 0
    return DB_POOLS_PER_WORKER + accounts


def db_connections_needed(
    dyno_count: int, workers: int, pool_size: int, max_overflow: int, login_mode: str = "shared"
) -> int:
    """Most connections the dynos can open at once, plus the margin."""
    per_worker = db_pools_per_worker(login_mode) * (pool_size + max_overflow)
    return dyno_count * workers * per_worker + DB_CONNECTION_MARGIN


# Dyno sizes: memory in MB and the most dynos of one process type Heroku allows for the size.
DYNO_MEMORY_MB: Final[Mapping[str, int]] = {
    "eco": 512,
    "basic": 512,
    "standard-1x": 512,
    "standard-2x": 1024,
    "performance-m": 2560,
    "performance-l": 14336,
    "performance-l-ram": 30720,
    "performance-xl": 63488,
    "performance-2xl": 129024,
}
SINGLE_DYNO_SIZES: Final = ("eco", "basic")
MAX_DYNO_COUNT: Final = 100
# The most MLflow workers (WEB_CONCURRENCY) a dyno runs; the image refuses more.
MAX_MLFLOW_WORKERS: Final = 16
# Peak memory of the whole dyno under artifact uploads, one worker (uvicorn alone) or workers
# forked from one import (gunicorn --preload), rounded up for headroom (docs/benchmark.md, "Forked
# workers").
SINGLE_WORKER_MEMORY_MB: Final = 360
FORKED_BASE_MEMORY_MB: Final = 300
FORKED_WORKER_MEMORY_MB: Final = 60


def dyno_memory_needed_mb(workers: int) -> int:
    """About the most memory a dyno running ``workers`` MLflow workers uses."""
    if workers == 1:
        return SINGLE_WORKER_MEMORY_MB
    return FORKED_BASE_MEMORY_MB + workers * FORKED_WORKER_MEMORY_MB


def max_workers_for(memory_mb: int) -> int:
    """The most MLflow workers whose memory fits a dyno of ``memory_mb`` (at least one)."""
    fitting = (n for n in range(1, MAX_MLFLOW_WORKERS + 1) if dyno_memory_needed_mb(n) <= memory_mb)
    return max(fitting, default=1)


_APP_NAME = re.compile(r"[a-z][a-z0-9-]{2,29}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_S3_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*")
_NGINX_SIZE = re.compile(r"([1-9][0-9]{0,9})([kKmMgG]?)")
_GIB: Final = 1024**3
_SIZE_FACTORS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": _GIB}
MAX_RELEASE_TIMEOUT_SECONDS: Final = 1800
MIN_BODY_SIZE: Final = _GIB  # the image refuses less: artifacts of 1 GB must fit
MAX_BODY_SIZE: Final = 5 * 1024**4  # S3's largest object; the image refuses more
# Each SQLAlchemy pool setting (dbPoolSize, dbMaxOverflow) per store; the image refuses more.
MAX_DB_POOL: Final = 50
AWS_REGION_NAME: Final = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d")  # fullmatch
_KMS_KEY = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,128}")
_HOSTNAME_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOGIN_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
MIN_PASSWORD_LENGTH: Final = 16
MAX_PASSWORD_BYTES: Final = 72  # bcrypt, which the image hashes it with, ignores the rest

# Allowed values of the whole-number keys; Pulumi.yaml's descriptions state the same ranges.
INTEGER_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "dynoCount": (1, MAX_DYNO_COUNT),
    "mlflowWorkers": (1, MAX_MLFLOW_WORKERS),
    "dbPoolSize": (1, MAX_DB_POOL),
    # MLflow reads 0 as "unset" (SQLAlchemy's 10), so the image refuses 0 and so does this.
    "dbMaxOverflow": (1, MAX_DB_POOL),
    "noncurrentVersionExpirationDays": (1, 3650),
    "accessKeyGeneration": (1, 1_000_000),
    # At most 30 min: the deploy job's 60 min must also cover the image build and push.
    "releaseTimeoutSeconds": (60, MAX_RELEASE_TIMEOUT_SECONDS),
    # 0 turns MLflow's credential cache off: every request hashes the password again.
    "authCacheTtlSeconds": (0, MAX_AUTH_CACHE_TTL_SECONDS),
    # Scheduled maintenance: the newest backup always stays; gcAfterDays 0 turns the gc off.
    "backupRetentionDays": (1, 3650),
    "gcAfterDays": (0, 3650),
}


class SettingsError(pulumi.RunError, ValueError):
    """Bad stack configuration. Pulumi prints a RunError's message without a Python traceback."""


@dataclass(frozen=True)
class Person:
    """One entry of `people`: an account MLflow's basic-auth app gets in loginMode accounts."""

    username: str
    role: str  # one of ROLES


@dataclass(frozen=True)
class Settings:
    """Everything the program needs from the stack's configuration, validated."""

    stack: str
    app_name: str
    region: str
    postgres_plan: str
    dyno_size: str
    dyno_count: int
    mlflow_workers: int
    db_pool_size: int
    db_max_overflow: int
    max_body_size: str
    login_user: str
    login_password: pulumi.Output[str] | None  # secret; None means "generate one"
    bucket_name: str | None  # None means "let Pulumi name it from the app name"
    artifact_prefix: str
    bucket_versioning: bool
    noncurrent_version_expiration_days: int
    kms_key_arn: str | None
    access_key_generation: int
    protect_data: bool
    custom_domains: tuple[str, ...]
    release_timeout_seconds: int
    # Scheduled maintenance.
    backup_retention_days: int
    gc_after_days: int  # 0: off
    aws_region: str
    heroku_api_key: pulumi.Output[str]  # secret
    # -- login modes and team accounts (the accounts fields are defaults in shared mode) --
    login_mode: str  # one of LOGIN_MODES
    admin_username: str
    admin_password: pulumi.Output[str] | None  # secret; None means "generate one"
    people: tuple[Person, ...]
    auth_cache_ttl_seconds: int
    default_permission: str

    @property
    def db_connections_needed(self) -> int:
        """Most connections the dynos can open at once, plus the margin."""
        return db_connections_needed(
            self.dyno_count,
            self.mlflow_workers,
            self.db_pool_size,
            self.db_max_overflow,
            self.login_mode,
        )


class _Reader:
    """Reads raw config strings and collects every problem instead of stopping at the first."""

    def __init__(self, get: Callable[[str], str | None], is_secret: Callable[[str], bool]) -> None:
        self._get = get
        self._is_secret = is_secret
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{_qualified(key)}: {message}")

    def raw(self, key: str) -> str | None:
        return self._get(key)

    def is_secret(self, key: str) -> bool:
        return self._is_secret(key)

    def string(self, key: str, check: Callable[[str], str | None]) -> str:
        raw = self.raw(key)
        value = str(DEFAULTS[key]) if raw is None else raw
        if (problem := check(value)) is not None:
            self.fail(key, f"{value!r} {problem}")
        return value

    def integer(self, key: str) -> int:
        low, high = INTEGER_RANGES[key]
        raw = self.raw(key)
        default = DEFAULTS[key]
        assert isinstance(default, int)
        if raw is None:
            return default
        # ASCII digits only: int() would also take "1_000" and non-Latin digits.
        if not re.fullmatch(r"\s*[+-]?[0-9]{1,12}\s*", raw):
            self.fail(key, f"{raw!r} is not a whole number; allowed: {low} to {high}")
            return default
        value = int(raw.strip())
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range; allowed: {low} to {high}")
            return default
        return value

    def boolean(self, key: str) -> bool:
        raw = self.raw(key)
        default = DEFAULTS[key]
        assert isinstance(default, bool)
        if raw is None:
            return default
        if raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        self.fail(key, f"{raw!r} is not a boolean; allowed: true or false")
        return default


def _qualified(key: str) -> str:
    return key if ":" in key else f"{PROJECT}:{key}"


def _one_of(allowed: tuple[str, ...] | list[str]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in allowed else f"is not allowed; allowed: {', '.join(allowed)}"

    return check


def check_app_name(value: str) -> str | None:
    if _APP_NAME.fullmatch(value) and not value.endswith("-"):
        return None
    return (
        "is not a valid Heroku app name; it needs 3 to 30 characters: a lowercase letter first, "
        "then lowercase letters, digits or dashes, not ending in a dash"
    )


def check_postgres_plan(value: str) -> str | None:
    if value in POSTGRES_CONNECTION_LIMITS:
        return None
    plan = value.removeprefix("heroku-postgresql:")
    if plan in RETIRED_POSTGRES_PLANS or plan.startswith("hobby-"):
        hint = "Heroku retired it; use essential-0 (the cheapest current plan) or larger"
    else:
        hint = "it is not a current Heroku Postgres plan"
    return f"is not allowed: {hint}; allowed: {', '.join(POSTGRES_CONNECTION_LIMITS)}"


def check_dyno_size(value: str) -> str | None:
    if value in DYNO_MEMORY_MB:
        return None
    lowered = value.lower()
    if lowered in DYNO_MEMORY_MB:
        return f"must be written in lowercase ({lowered!r})"
    if lowered in ("free", "hobby", "standard-1x-free"):
        return f"is a retired dyno type; allowed: {', '.join(DYNO_MEMORY_MB)}"
    return f"is not a Heroku Common Runtime dyno size; allowed: {', '.join(DYNO_MEMORY_MB)}"


def check_bucket_name(value: str) -> str | None:
    """S3's general purpose bucket naming rules."""
    rule = (
        "is not a valid S3 bucket name; it needs 3 to 63 characters: lowercase letters, digits, "
        "dots and dashes, starting and ending with a letter or digit"
    )
    if not _BUCKET_NAME.fullmatch(value):
        return rule
    if ".." in value or ".-" in value or "-." in value:
        return f"{rule}, with no two dots or a dot and a dash side by side"
    if _IPV4.fullmatch(value):
        return f"{rule}, and it must not look like an IP address"
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if value.startswith(prefix):
            return f"{rule}; names starting with {prefix!r} are reserved by AWS"
    for suffix in ("-s3alias", "--ol-s3", "--x-s3", "--table-s3", ".mrap"):
        if value.endswith(suffix):
            return f"{rule}; names ending with {suffix!r} are reserved by AWS"
    if "." in value:
        # Virtual-hosted TLS (*.s3.amazonaws.com) does not cover names with dots.
        return "must not contain dots: S3's TLS certificate does not cover such bucket names"
    return None


def check_artifact_prefix(value: str) -> str | None:
    if value.split("/", 1)[0] == "backups":
        return "is where the database backups go; choose another prefix, e.g. artifacts"
    if _S3_PREFIX.fullmatch(value) and len(value) <= 512 and "/../" not in f"/{value}/":
        return None
    return (
        "is not a valid artifact prefix; use S3-safe path segments (letters, digits, "
        "!_.*'()- ) joined by single '/', without a leading or trailing '/'"
    )


def check_body_size(value: str) -> str | None:
    match = _NGINX_SIZE.fullmatch(value)
    if not match:
        return "is not an nginx size; use a number with an optional k, m or g suffix, e.g. 5g"
    size = int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]
    if size < MIN_BODY_SIZE:
        return (
            f"is too small; allowed: {MIN_BODY_SIZE // _GIB}g or more (e.g. 1024m, 5g), "
            "so large artifacts fit"
        )
    if size > MAX_BODY_SIZE:
        return (
            f"is too large; allowed: up to {MAX_BODY_SIZE // _GIB}g (S3's largest object is 5 TiB)"
        )
    return None


def check_kms_key(value: str) -> str | None:
    if _KMS_KEY.fullmatch(value):
        return None
    return (
        "is not a KMS key ARN; use arn:aws:kms:<region>:<account id>:key/<key id> "
        "(not an alias: the IAM policy grants use of exactly this key)"
    )


def check_login_user(value: str) -> str | None:
    if ":" in value:
        return "must not contain ':' (HTTP basic auth splits user and password at the first ':')"
    if _LOGIN_USER.fullmatch(value):
        return None
    return "is not a valid login user; use 1 to 64 letters, digits or . _ @ + -"


def check_account_name(value: str) -> str | None:
    """adminUsername and each person's username: loginUser's rules, and a letter or digit
    first (the image refuses others)."""
    if (problem := check_login_user(value)) is not None:
        return problem
    if not value[0].isascii() or not value[0].isalnum():
        return "must start with a letter or digit"
    return None


def check_hostname(value: str) -> str | None:
    labels = value.split(".")
    if (
        len(value) <= 253
        and len(labels) >= 2
        and all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        if value.endswith(".herokuapp.com"):
            return (
                "is a herokuapp.com name; Heroku gives the app that one, list only your own domains"
            )
        return None
    return "is not a valid lowercase DNS host name (e.g. mlflow.example.com)"


def check_password(value: str, limit: str = "bcrypt's limit") -> str | None:
    """Checks a secret without ever repeating it; `limit` says where the byte limit comes from."""
    if len(value) < MIN_PASSWORD_LENGTH:
        return f"is too short: use at least {MIN_PASSWORD_LENGTH} characters"
    try:
        encoded = value.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return "is not valid UTF-8 text: set it again from a UTF-8 terminal or file"
    if len(encoded) > MAX_PASSWORD_BYTES:
        return f"is too long: use at most {MAX_PASSWORD_BYTES} bytes ({limit})"
    if not value.isprintable() or any(c.isspace() for c in value):
        return "contains spaces or control characters: use printable characters only"
    return None


def check_account_password(value: str) -> str | None:
    """adminPassword: check_password's rules, in ASCII only, because MLflow's FastAPI routes
    decode a login as ASCII (mlflow/server/auth/__init__.py), so other characters would log in
    on some routes and not on others."""
    if (
        problem := check_password(value, "the limit this project keeps for every password")
    ) is not None:
        return problem
    if not value.isascii():
        return "contains characters outside ASCII: MLflow reads logins as ASCII on some routes"
    return None


def _read_domains(reader: _Reader) -> tuple[str, ...]:
    key = "customDomains"
    raw = reader.raw(key)
    if raw is None:
        return ()
    # `pulumi config set --path 'customDomains[0]' x` stores a JSON list; also accept "a,b".
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        reader.fail(key, f"{raw!r} is not a list of host names; allowed: a YAML list of strings")
        return ()
    for host in parsed:
        if (problem := check_hostname(host)) is not None:
            reader.fail(key, f"{host!r} {problem}")
    if len(set(parsed)) != len(parsed):
        reader.fail(key, "lists a host name twice")
    return tuple(parsed)


def _read_password(
    reader: _Reader, key: str, check: Callable[[str], str | None] = check_password
) -> pulumi.Output[str] | None:
    """A password key: None when unset (the program generates one), else a secret Output."""
    password = reader.raw(key)
    if password is None:
        return None
    if not reader.is_secret(key):
        reader.fail(
            key,
            f"is stored in plain text; run `pulumi config set --secret {key}` "
            "(the value is not shown here)",
        )
    elif (problem := check(password)) is not None:
        reader.fail(key, f"(value not shown) {problem}")
    return pulumi.Output.secret(password)


_PEOPLE_EXAMPLE = (
    "write it in Pulumi.<stack>.yaml as a YAML list, e.g. `- {username: alice, role: editor}`, "
    "or run `pulumi config set --path 'people[0].username' alice` and "
    "`pulumi config set --path 'people[0].role' editor`"
)


def _read_people(reader: _Reader, admin_username: str) -> tuple[Person, ...]:
    """`people`: a list of {username, role}; usernames unique ignoring case, none the admin's."""
    raw = reader.raw("people")
    if raw is None:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list):
        reader.fail("people", f"is not a list of people; {_PEOPLE_EXAMPLE}")
        return ()
    if len(parsed) > MAX_PEOPLE:
        reader.fail(
            "people",
            f"lists {len(parsed)} people, more than {MAX_PEOPLE} (Heroku's 32 kB of config vars "
            "must hold them); add the others in MLflow's admin UI",
        )
        return ()
    people: list[Person] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(parsed):
        where = f"people[{index}]"
        if not isinstance(entry, dict):
            reader.fail(where, f"{entry!r} is not a person; {_PEOPLE_EXAMPLE}")
            continue
        unknown = sorted(set(entry) - {"username", "role"})
        if unknown:
            reader.fail(
                where,
                f"has unknown fields {', '.join(map(repr, unknown))}; allowed: username, role",
            )
        username, role = entry.get("username"), entry.get("role")
        valid = not unknown
        folded = username.casefold() if isinstance(username, str) else ""
        if not isinstance(username, str):
            valid = False
            reader.fail(
                f"{where}.username",
                "is missing or not text; give each person a username, e.g. alice",
            )
        elif (problem := check_account_name(username)) is not None:
            valid = False
            reader.fail(f"{where}.username", f"{username!r} {problem}")
        elif folded == admin_username.casefold():
            valid = False
            reader.fail(
                f"{where}.username",
                f"{username!r} is the admin account (adminUsername), which the program creates "
                "itself; give the person another username, or change adminUsername",
            )
        elif folded in first_index:
            valid = False
            reader.fail(
                f"{where}.username",
                f"{username!r} is listed twice (also people[{first_index[folded]}]; usernames "
                "are compared ignoring case); keep one entry",
            )
        else:
            first_index[folded] = index
        if role not in ROLES:
            valid = False
            shown = "is missing" if role is None else f"{role!r} is not a role"
            reader.fail(f"{where}.role", f"{shown}; allowed: {', '.join(ROLES)}")
        if valid and isinstance(username, str) and isinstance(role, str):
            people.append(Person(username=username, role=role))
    return tuple(people)


def _is_configured(reader: _Reader, key: str) -> bool:
    """Whether the stack sets `key` to something other than its default. The CLI hands the
    program Pulumi.yaml's defaults for unset keys, so "set to the default" counts as unset."""
    raw = reader.raw(key)
    if raw is None:
        return False
    if key == "people":
        return raw.strip() not in ("", "[]")
    if key not in DEFAULTS:
        return True
    default = DEFAULTS[key]
    if isinstance(default, int) and not isinstance(default, bool):
        return raw.strip() != str(default)
    return raw != str(default)


def _refuse_other_modes_keys(reader: _Reader, login_mode: str) -> None:
    """Each login mode refuses the other mode's keys, so no setting silently does nothing."""
    other_keys = {"shared": ACCOUNTS_KEYS, "accounts": SHARED_LOGIN_KEYS}.get(login_mode, ())
    other = "accounts" if login_mode == "shared" else "shared"
    for key in other_keys:
        if _is_configured(reader, key):
            reader.fail(
                key,
                f"is set (value not shown), but it applies to loginMode {other} only and this "
                f"stack's loginMode is {login_mode}; remove it (`pulumi config rm {key}`), or "
                f'set loginMode {other} (docs/operations.md, "Team accounts")',
            )


def load(
    stack: str,
    get: Callable[[str], str | None],
    is_secret: Callable[[str], bool],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validates the raw configuration; `get` takes fully qualified keys ("aws:region")."""
    env = os.environ if environ is None else environ
    reader = _Reader(lambda key: get(_qualified(key)), lambda key: is_secret(_qualified(key)))

    app_name = reader.raw("appName")
    if app_name is None:
        reader.fail("appName", "is required; run `pulumi config set appName <name>`")
        app_name = ""
    elif (problem := check_app_name(app_name)) is not None:
        reader.fail("appName", f"{app_name!r} {problem}")

    region = reader.string("region", _one_of(HEROKU_REGIONS))
    postgres_plan = reader.string("postgresPlan", check_postgres_plan)
    dyno_size = reader.string("dynoSize", check_dyno_size)
    dyno_count = reader.integer("dynoCount")
    if dyno_size in SINGLE_DYNO_SIZES and dyno_count > 1:
        reader.fail(
            "dynoCount",
            f"{dyno_count} dynos of size {dyno_size!r}: Heroku runs at most 1 {dyno_size} dyno "
            "per process type; use dynoSize standard-1x or larger to scale out",
        )
    workers = reader.integer("mlflowWorkers")
    memory = DYNO_MEMORY_MB.get(dyno_size)
    if memory is not None:
        max_workers = max_workers_for(memory)
        if workers > max_workers:
            reader.fail(
                "mlflowWorkers",
                f"{workers} workers need about {dyno_memory_needed_mb(workers)} MB, "
                f"more than a {dyno_size} dyno's {memory} MB; allowed: 1 to {max_workers} "
                "(or a larger dynoSize)",
            )
    pool_size = reader.integer("dbPoolSize")
    max_overflow = reader.integer("dbMaxOverflow")

    body_size = reader.string("maxBodySize", check_body_size)

    # -- login modes and team accounts --
    login_mode = reader.string("loginMode", _one_of(LOGIN_MODES))
    login_user = str(DEFAULTS["loginUser"])
    login_password: pulumi.Output[str] | None = None
    admin_username = str(DEFAULTS["adminUsername"])
    admin_password: pulumi.Output[str] | None = None
    people: tuple[Person, ...] = ()
    cache_ttl = DEFAULTS["authCacheTtlSeconds"]
    assert isinstance(cache_ttl, int)
    default_permission = str(DEFAULTS["defaultPermission"])
    _refuse_other_modes_keys(reader, login_mode)
    if login_mode == "shared":
        login_user = reader.string("loginUser", check_login_user)
        login_password = _read_password(reader, "loginPassword")
    elif login_mode == "accounts":
        admin_username = reader.string("adminUsername", check_account_name)
        admin_password = _read_password(reader, "adminPassword", check_account_password)
        people = _read_people(reader, admin_username)
        cache_ttl = reader.integer("authCacheTtlSeconds")
        default_permission = reader.string("defaultPermission", _one_of(PERMISSIONS))
        readers = [person.username for person in people if person.role == "reader"]
        if default_permission in WRITING_PERMISSIONS and readers:
            # The image refuses it too: the default would reach the readers (docs/image.md).
            reader.fail(
                "defaultPermission",
                f"{default_permission!r} would let every account write, the readers in people "
                f"({', '.join(readers)}) too; use READ or NO_PERMISSIONS",
            )

    login_password = _read_password(reader, "loginPassword")

    bucket_name = reader.raw("bucketName")
    if bucket_name is not None and (problem := check_bucket_name(bucket_name)) is not None:
        reader.fail("bucketName", f"{bucket_name!r} {problem}")
    artifact_prefix = reader.string("artifactPrefix", check_artifact_prefix)
    versioning = reader.boolean("bucketVersioning")
    expiration_days = reader.integer("noncurrentVersionExpirationDays")
    kms_key_arn = reader.raw("kmsKeyArn")
    if kms_key_arn is not None and (problem := check_kms_key(kms_key_arn)) is not None:
        reader.fail("kmsKeyArn", f"{kms_key_arn!r} {problem}")
    key_generation = reader.integer("accessKeyGeneration")
    protect_data = reader.boolean("protectData")
    custom_domains = _read_domains(reader)
    release_timeout = reader.integer("releaseTimeoutSeconds")
    # Scheduled maintenance.
    backup_retention_days = reader.integer("backupRetentionDays")
    gc_after_days = reader.integer("gcAfterDays")

    aws_region = get("aws:region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not aws_region:
        reader.fail("aws:region", "is required; run `pulumi config set aws:region eu-west-1`")
        aws_region = ""
    elif not AWS_REGION_NAME.fullmatch(aws_region):
        reader.fail("aws:region", f"{aws_region!r} is not an AWS region name (e.g. eu-west-1)")

    api_key = get("heroku:apiKey")
    if api_key is not None and not is_secret("heroku:apiKey"):
        reader.fail(
            "heroku:apiKey",
            "is stored in plain text; run `pulumi config set --secret heroku:apiKey` "
            "(the value is not shown here)",
        )
    api_key = api_key or env.get("HEROKU_API_KEY")
    if not api_key:
        reader.fail(
            "heroku:apiKey",
            "is required; run `pulumi config set --secret heroku:apiKey` with a key from "
            "`heroku authorizations:create`, or export HEROKU_API_KEY",
        )
        api_key = ""
    elif not api_key.isprintable() or any(c.isspace() for c in api_key):
        reader.fail("heroku:apiKey", "(value not shown) contains spaces or control characters")

    if kms_key_arn and aws_region and _KMS_KEY.fullmatch(kms_key_arn):
        key_region = kms_key_arn.split(":")[3]
        if key_region != aws_region:
            reader.fail(
                "kmsKeyArn",
                f"{kms_key_arn!r} is a key in {key_region}, but the bucket is in {aws_region} "
                "(aws:region); S3 encrypts only with a KMS key of the bucket's own region",
            )

    if postgres_plan in POSTGRES_CONNECTION_LIMITS and login_mode in LOGIN_MODES:
        limit = POSTGRES_CONNECTION_LIMITS[postgres_plan]
        needed = db_connections_needed(dyno_count, workers, pool_size, max_overflow, login_mode)
        if needed > limit:
            per_worker = db_pools_per_worker(login_mode)
            most = math.floor((limit - DB_CONNECTION_MARGIN) / (dyno_count * workers * per_worker))
            names = "tracking, model registry" + (", accounts" if login_mode == "accounts" else "")
            # dbPoolSize and dbMaxOverflow are at least 1 each: below 2 only fewer workers help.
            fixes = (
                f"lower dbPoolSize + dbMaxOverflow to at most {most} in total"
                if most >= 2
                else "lower mlflowWorkers or dynoCount"
            )
            reader.fail(
                "dbPoolSize",
                f"dynoCount {dyno_count} x mlflowWorkers {workers} x {per_worker} pools "
                f"({names}) x (dbPoolSize {pool_size} + dbMaxOverflow {max_overflow}) + "
                f"{DB_CONNECTION_MARGIN} spare = {needed} connections, more than "
                f"{postgres_plan}'s limit of {limit}; {fixes}, or choose a larger postgresPlan",
            )

    if reader.problems:
        raise SettingsError(
            f"Invalid configuration for stack {stack!r}:\n  - " + "\n  - ".join(reader.problems)
        )
    return Settings(
        stack=stack,
        app_name=app_name,
        region=region,
        postgres_plan=postgres_plan,
        dyno_size=dyno_size,
        dyno_count=dyno_count,
        mlflow_workers=workers,
        db_pool_size=pool_size,
        db_max_overflow=max_overflow,
        max_body_size=body_size,
        login_user=login_user,
        login_password=login_password,
        bucket_name=bucket_name,
        artifact_prefix=artifact_prefix,
        bucket_versioning=versioning,
        noncurrent_version_expiration_days=expiration_days,
        kms_key_arn=kms_key_arn,
        access_key_generation=key_generation,
        protect_data=protect_data,
        custom_domains=custom_domains,
        release_timeout_seconds=release_timeout,
        backup_retention_days=backup_retention_days,
        gc_after_days=gc_after_days,
        aws_region=aws_region,
        heroku_api_key=pulumi.Output.secret(api_key),
        login_mode=login_mode,
        admin_username=admin_username,
        admin_password=admin_password,
        people=people,
        auth_cache_ttl_seconds=cache_ttl,
        default_permission=default_permission,
    )


def from_pulumi_config() -> Settings:
    """Reads the current stack's configuration. Call it inside the program (after mocks are set
    in tests): `pulumi.Config` binds the project and stack when it is constructed."""
    bags: dict[str, pulumi.Config] = {}

    def get(full_key: str) -> str | None:
        namespace, _, key = full_key.partition(":")
        bag = bags.setdefault(namespace, pulumi.Config(namespace))
        return bag.get(key)

    return load(pulumi.get_stack(), get, pulumi.runtime.is_config_secret)
