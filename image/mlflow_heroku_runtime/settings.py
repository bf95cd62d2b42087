"""The environment contract: every variable read, validated with its own message.

``load_settings(environ, local=...)`` returns ``Settings`` (defined in the light plan.py, for
the supervisor) or raises ``ConfigError`` with
one line per bad variable (naming it and the fix, never echoing a secret).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .database_url import to_sqlalchemy_url
from .errors import ConfigError
from .htpasswd import BCRYPT_MAX_PASSWORD_BYTES
from .internals import ADMIN_BOOTSTRAPPED_VARIABLE, MLFLOW_DEFAULT_KEK_PASSPHRASE
from .plan import ACCOUNTS_LOGIN, LOCAL_PORT, SHARED_LOGIN, Settings, reachable_address

__all__ = [
    "DEFAULTS",
    "People",
    "Person",
    "Settings",
    "generate_local_password",
    "load_people",
    "load_settings",
    "reachable_address",
]

LOCAL_USERNAME = "mlflow"
MIN_PASSWORD_LENGTH = 8
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")  # fullmatch
NGINX_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# S3's largest object; also far below what nginx can represent (a larger value stops nginx).
MAX_BODY_BYTES = 5 * 1024**4
MIN_BODY_BYTES = SIZE_FACTORS["g"]  # artifacts of 1 GB must fit
MAX_DB_POOL = 50  # pool size and max overflow, each
# Where the image puts the LD_PRELOAD library that makes nginx stop gracefully on SIGTERM
# (image/nginx_graceful_term.c; MLFLOW_HEROKU_NGINX_PRELOAD overrides it).
DEFAULT_NGINX_PRELOAD = Path("/usr/local/lib/mlflow-heroku/nginx_graceful_term.so")


# Variables the settings pass on to MLflow unchanged when the user sets them.
MLFLOW_PASSTHROUGH = (
    "MLFLOW_SERVER_ALLOWED_HOSTS",
    "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
    "MLFLOW_SERVER_X_FRAME_OPTIONS",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_S3_UPLOAD_EXTRA_ARGS",
    "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MLFLOW_ENABLE_AI_GATEWAY",
)

# Defaults sized for a 512 MB dyno and a small Postgres plan (essential-0: 20 connections):
# two workers forked from one import fit (docs/benchmark.md); each holds at most
# 2 stores x (pool + overflow) connections.
DEFAULTS = {
    "WEB_CONCURRENCY": "2",
    # Three tracking calls at once per worker (the pool size is the cap, flask_shortcut.py):
    # Heroku Postgres is on another host, and a third call per worker served more than two
    # (docs/benchmark.md, "Tracking calls against a remote database"); the one overflow
    # connection serves uncapped routes.
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "3",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "1",
    "MLFLOW_HEROKU_DB_WAIT_SECONDS": "40",
    "MLFLOW_HEROKU_MAX_BODY_SIZE": "5g",
    # Under Heroku's router limit (the first byte within 30 s of the request's delivery, H12),
    # so that nginx's 504, which says what to do for the route, is what the client gets.
    "MLFLOW_HEROKU_PROXY_READ_TIMEOUT": "28",
    "MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE": "10",
    "MLFLOW_HEROKU_LOGIN_MODE": SHARED_LOGIN,
    # How long a worker trusts a login it checked (MLflow's auth_cache_ttl_seconds). Without
    # the cache every request pays one scrypt hash (~115 ms of CPU here); a removed person's or
    # old password's login still works on another worker for at most this long
    # (docs/image.md, "Accounts").
    "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS": "30",
    "MLFLOW_HEROKU_DEFAULT_PERMISSION": "READ",
}
LOGIN_MODES = (SHARED_LOGIN, ACCOUNTS_LOGIN)
# People's roles (accounts.py maps them onto MLflow's auth model; docs/image.md, "Accounts").
ROLES = ("admin", "editor", "reader")
# MLflow's permission levels that may be its default_permission (DENY is a grant, not a level).
DEFAULT_PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
# Levels that can write: with one of them as the default, every reader could write.
WRITING_PERMISSIONS = ("EDIT", "MANAGE")
# Account names: what a person types at the login prompt and the admin UI lists.
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")  # fullmatch
# MLflow's own minimum (mlflow.utils.validation._validate_password).
MIN_ACCOUNT_PASSWORD_LENGTH = 12
MAX_ACCOUNT_PASSWORD_LENGTH = 256
# MLflow asks for a high-entropy passphrase of 32+ characters (mlflow/utils/crypto.py).
MIN_KEK_PASSPHRASE_LENGTH = 32
ACCOUNTS_CACHE_MAX_SECONDS = 3600


class _Collector:
    """Collects one problem per variable so the user sees all of them at once."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def integer(self, name: str, low: int, high: int, default: str | None = None) -> int:
        raw = self.environ.get(name, default if default is not None else DEFAULTS[name]).strip()
        try:
            value = int(raw)
        except ValueError:
            self.problem(f"{name} must be a whole number from {low} to {high}")
            return low
        if not low <= value <= high:
            self.problem(f"{name} must be from {low} to {high} (got {value})")
            return low
        return value


def _parse_s3_uri(collector: _Collector, raw: str) -> str:
    hint = "set S3_URI to s3://BUCKET or s3://BUCKET/PREFIX"
    try:
        parsed = urllib.parse.urlsplit(raw.strip())
    except ValueError:  # e.g. an unbalanced '[' in the host part
        collector.problem(f"S3_URI is not a URL: {hint}")
        return raw.strip()
    if parsed.scheme != "s3":
        collector.problem(f"S3_URI must start with s3://: {hint}")
    elif not S3_BUCKET.match(parsed.netloc or ""):
        collector.problem(f"S3_URI has an invalid bucket name (3-63 of a-z 0-9 . -): {hint}")
    elif parsed.query or parsed.fragment:
        collector.problem(f"S3_URI must not have a query or fragment: {hint}")
    return raw.strip().rstrip("/")


def _listen_address(collector: _Collector, environ: Mapping[str, str], local: bool) -> str:
    """Heroku's router reaches the dyno on any interface, so a dyno listens on all of them;
    tests, benchmarks and local mode keep nginx on loopback."""
    name = "MLFLOW_HEROKU_LISTEN_ADDRESS"
    default = "127.0.0.1" if local else "0.0.0.0"  # noqa: S104 (a dyno must listen on all)
    raw = environ.get(name, default).strip()
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        collector.problem(f"{name} must be an IP address such as 0.0.0.0 or 127.0.0.1")
        return default
    # nginx wants IPv6 addresses in brackets: listen [::1]:8080.
    return f"[{address}]" if address.version == 6 else str(address)


def _nginx_preload(collector: _Collector, environ: Mapping[str, str]) -> str | None:
    """The graceful-SIGTERM library for nginx: the variable's file (which must exist),
    else the image's default path if present, else None (the supervisor warns)."""
    name = "MLFLOW_HEROKU_NGINX_PRELOAD"
    raw = environ.get(name)
    if raw is None:
        return str(DEFAULT_NGINX_PRELOAD) if DEFAULT_NGINX_PRELOAD.is_file() else None
    path = Path(raw.strip())
    if not raw.strip() or not path.is_absolute() or not path.is_file():
        collector.problem(
            f"{name} must be the absolute path of an existing file (nginx_graceful_term.so, "
            f"built from image/nginx_graceful_term.c); unset it to use {DEFAULT_NGINX_PRELOAD}"
        )
        return None
    return str(path)


def _is_utf8(value: str) -> bool:
    """False for a value that came from the environment as bytes that are not UTF-8 (Python
    keeps them as lone surrogates), which the login's encoding would fail on later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(collector: _Collector, name: str, value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        collector.problem(f"{name} contains a control character (newline, tab...): remove it")


def _body_size(collector: _Collector, raw: str) -> str:
    name = "MLFLOW_HEROKU_MAX_BODY_SIZE"
    match = NGINX_SIZE.match(raw.strip())
    if not match:
        collector.problem(f"{name} must be a size like 1g, 2048m or 5g")
        return DEFAULTS[name]
    size = int(match.group(1)) * SIZE_FACTORS[match.group(2).lower()]
    if size < MIN_BODY_BYTES:
        smallest = MIN_BODY_BYTES // SIZE_FACTORS["g"]
        collector.problem(f"{name} must be at least {smallest}g so large artifacts fit")
    elif size > MAX_BODY_BYTES:
        largest = MAX_BODY_BYTES // SIZE_FACTORS["g"]
        collector.problem(f"{name} must be at most {largest}g (S3's largest object is 5 TiB)")
    return raw.strip().lower()


@dataclass(frozen=True)
class Person:
    username: str
    role: str  # one of ROLES


@dataclass(frozen=True)
class People:
    """The accounts the migration step keeps as listed (accounts.py): the admin, and the
    people of MLFLOW_HEROKU_PEOPLE with their initial passwords."""

    admin_username: str
    admin_password: str
    people: tuple[Person, ...]
    initial_passwords: dict[str, str]  # username -> password, for each listed person


def _is_account_password(value: str) -> bool:
    """Printable ASCII: MLflow's FastAPI routes (artifacts, OTLP traces) decode the login as
    ASCII (mlflow.server.auth._authenticate_fastapi_request), so anything else would work on
    some routes and not on others."""
    return all(32 <= ord(character) < 127 for character in value)


def _check_account_password(collector: _Collector, name: str, password: str) -> None:
    if not _is_account_password(password):
        collector.problem(
            f"{name} must be printable ASCII (letters, digits, punctuation, spaces): MLflow's "
            "API decodes logins as ASCII"
        )
    elif len(password) < MIN_ACCOUNT_PASSWORD_LENGTH:
        collector.problem(
            f"{name} is too short: use at least {MIN_ACCOUNT_PASSWORD_LENGTH} characters "
            "(MLflow's minimum)"
        )
    elif len(password) > MAX_ACCOUNT_PASSWORD_LENGTH:
        collector.problem(f"{name} is longer than {MAX_ACCOUNT_PASSWORD_LENGTH} characters")


def _check_account_name(collector: _Collector, name: str, username: object) -> bool:
    if not isinstance(username, str) or not ACCOUNT_NAME.fullmatch(username):
        collector.problem(
            f"{name} must be 1-100 of the letters, digits and . _ @ + - (starting with a "
            "letter or digit)"
        )
        return False
    return True


def _parse_people(collector: _Collector, admin_username: str) -> tuple[list[Person], set[str]]:
    """The listed people, and every name the list mentions, valid entry or not (so a bad
    entry is reported once, not again as a password for someone unlisted)."""
    name = "MLFLOW_HEROKU_PEOPLE"
    example = '[{"username": "ana", "role": "editor"}]'
    raw = collector.environ.get(name, "[]").strip() or "[]"
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as error:
        collector.problem(f"{name} is not valid JSON ({error.msg}): set it like {example}")
        return [], set()
    if not isinstance(entries, list):
        collector.problem(f"{name} must be a JSON list like {example}")
        return [], set()
    people: list[Person] = []
    seen: set[str] = set()
    mentioned: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"{name} entry {number}"
        if isinstance(entry, dict) and isinstance(entry.get("username"), str):
            mentioned.add(entry["username"])
        if not isinstance(entry, dict) or set(entry) != {"username", "role"}:
            collector.problem(f"{where} must be an object with exactly username and role")
            continue
        username, role = entry["username"], entry["role"]
        if not _check_account_name(collector, f"{where}'s username", username):
            continue
        if role not in ROLES:
            collector.problem(
                f"{where} ({username}) has the role {json.dumps(role)}: use admin, editor or reader"
            )
            continue
        if username == admin_username:
            collector.problem(
                f"{name} lists the admin account {username}: it comes from "
                "MLFLOW_AUTH_ADMIN_USERNAME; remove it from the list"
            )
            continue
        if username in seen:
            collector.problem(f"{name} lists {username} twice: keep one entry per person")
            continue
        seen.add(username)
        people.append(Person(username, role))
    return people, mentioned


def _parse_initial_passwords(
    collector: _Collector, people: list[Person], mentioned: set[str] | None
) -> dict[str, str]:
    """The initial password of each listed person (used only when the account is created).
    Messages name people, never a password or the variable's text. ``mentioned`` is None when
    the list itself was unreadable: then only the passwords' own form is checked."""
    name = "MLFLOW_HEROKU_PEOPLE_PASSWORDS"
    raw = collector.environ.get(name, "").strip()
    if not raw:
        if people:
            collector.problem(
                f"{name} is not set: set it to a JSON object of each person's initial "
                'password, like {"ana": "..."}'
            )
        return {}
    try:
        passwords = json.loads(raw)
    except json.JSONDecodeError:
        collector.problem(f'{name} is not valid JSON: set it like {{"ana": "..."}}')
        return {}
    if not isinstance(passwords, dict) or not all(
        isinstance(value, str) for value in passwords.values()
    ):
        collector.problem(f'{name} must be a JSON object of strings, like {{"ana": "..."}}')
        return {}
    listed = {person.username for person in people}
    for username in sorted(listed - set(passwords)):
        collector.problem(f"{name} has no initial password for {username}: add one")
    for username in sorted(set(passwords) - listed - (mentioned or set())):
        if mentioned is None:
            break
        if ACCOUNT_NAME.fullmatch(username):
            collector.problem(
                f"{name} has a password for {username}, who is not in MLFLOW_HEROKU_PEOPLE: "
                "remove it, or add the person"
            )
        else:
            collector.problem(f"{name} has an entry for a name that is not a valid account name")
    for username in sorted(listed & set(passwords)):
        _check_account_password(collector, f"{name}'s password for {username}", passwords[username])
    return {username: passwords[username] for username in listed & set(passwords)}


def _people(collector: _Collector) -> People:
    """The accounts-mode variables: the admin (never a default) and the people as code."""
    environ = collector.environ
    admin_username = environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "").strip()
    if not admin_username:
        collector.problem(
            "MLFLOW_AUTH_ADMIN_USERNAME is not set: accounts mode needs the admin account's name"
        )
    else:
        _check_account_name(collector, "MLFLOW_AUTH_ADMIN_USERNAME", admin_username)
    admin_password = environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if not admin_password:
        collector.problem(
            "MLFLOW_AUTH_ADMIN_PASSWORD is not set: accounts mode needs the admin account's "
            f"password (at least {MIN_ACCOUNT_PASSWORD_LENGTH} characters; there is no default)"
        )
    else:
        _check_account_password(collector, "MLFLOW_AUTH_ADMIN_PASSWORD", admin_password)
    problems_before = len(collector.problems)
    people, mentioned = _parse_people(collector, admin_username)
    unreadable = not mentioned and len(collector.problems) > problems_before
    passwords = _parse_initial_passwords(collector, people, None if unreadable else mentioned)
    return People(admin_username, admin_password, tuple(people), passwords)


def load_people(environ: Mapping[str, str]) -> People:
    """The accounts-mode variables alone (for the migration step), or ConfigError."""
    collector = _Collector(environ)
    people = _people(collector)
    if collector.problems:
        raise ConfigError(collector.problems)
    return people


def _default_permission(collector: _Collector, people: People | None) -> str:
    """MLflow's default_permission: what every account may do on what it holds no grant for.
    A reader is an account with no grant (accounts.py), so a writing default would let every
    reader write."""
    name = "MLFLOW_HEROKU_DEFAULT_PERMISSION"
    value = collector.environ.get(name, DEFAULTS[name]).strip().upper()
    if value not in DEFAULT_PERMISSIONS:
        collector.problem(f"{name} must be one of {', '.join(DEFAULT_PERMISSIONS)}")
        return DEFAULTS[name]
    readers = (
        [person.username for person in people.people if person.role == "reader"]
        if (people is not None)
        else []
    )
    if value in WRITING_PERMISSIONS and readers:
        collector.problem(
            f"{name}={value} would let every account write, the readers in "
            f"MLFLOW_HEROKU_PEOPLE ({', '.join(readers)}) too: use READ or NO_PERMISSIONS"
        )
    return value


def flask_secret_key(admin_password: str) -> str:
    """The static key MLflow's auth app needs for its CSRF tokens, the same in every worker of
    every dyno: derived from the admin password (never stored), unless the user sets
    MLFLOW_FLASK_SERVER_SECRET_KEY."""
    return hmac.new(
        admin_password.encode(), b"mlflow-heroku: Flask secret key", hashlib.sha256
    ).hexdigest()


def _kek_passphrase(collector: _Collector, on_dyno: bool, secret_values: list[str]) -> None:
    """MLflow's AI gateway encrypts stored provider keys with MLFLOW_CRYPTO_KEK_PASSPHRASE, or
    with a public default passphrase when it is unset (mlflow/utils/crypto.py): a dyno never
    runs on the default while the gateway is on."""
    name = "MLFLOW_CRYPTO_KEK_PASSPHRASE"
    passphrase = collector.environ.get(name, "")
    gateway = collector.environ.get("MLFLOW_ENABLE_AI_GATEWAY", "true").strip().lower()
    if passphrase:
        secret_values.append(passphrase)
        if passphrase == MLFLOW_DEFAULT_KEK_PASSPHRASE:
            collector.problem(f"{name} is MLflow's public default passphrase: set a random one")
        elif len(passphrase) < MIN_KEK_PASSPHRASE_LENGTH:
            collector.problem(
                f"{name} is too short: use a random value of at least "
                f"{MIN_KEK_PASSPHRASE_LENGTH} characters"
            )
    elif on_dyno and gateway not in ("false", "0"):
        collector.problem(
            f"{name} is not set: MLflow's AI gateway would encrypt stored provider keys with "
            f"its public default passphrase; set it to a random value of at least "
            f"{MIN_KEK_PASSPHRASE_LENGTH} characters (keep it: the keys cannot be read "
            "without it), or turn the gateway off with MLFLOW_ENABLE_AI_GATEWAY=false"
        )


def _shared_login(
    collector: _Collector, local: bool, generate_password: Callable[[], str] | None
) -> tuple[str, str]:
    """MLFLOW_TRACKING_USERNAME and _PASSWORD: the one login nginx checks (shared mode)."""
    environ = collector.environ
    username = environ.get("MLFLOW_TRACKING_USERNAME", LOCAL_USERNAME if local else "")
    if not username:
        collector.problem("MLFLOW_TRACKING_USERNAME is not set: set the login's user name")
    elif ":" in username:
        collector.problem("MLFLOW_TRACKING_USERNAME must not contain ':' (basic auth splits there)")
    elif not _is_utf8(username):
        collector.problem(
            "MLFLOW_TRACKING_USERNAME is not valid UTF-8: set it from a UTF-8 locale or tool"
        )
    else:
        _check_text(collector, "MLFLOW_TRACKING_USERNAME", username)
    password = environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not password and local and generate_password is not None:
        password = generate_password()
    if not password:
        collector.problem(
            "MLFLOW_TRACKING_PASSWORD is not set: set the login's password "
            f"(at least {MIN_PASSWORD_LENGTH} characters)"
        )
    elif not _is_utf8(password):
        collector.problem(
            "MLFLOW_TRACKING_PASSWORD is not valid UTF-8: set it from a UTF-8 locale or tool"
        )
    elif len(password) < MIN_PASSWORD_LENGTH:
        collector.problem(
            f"MLFLOW_TRACKING_PASSWORD is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    elif len(password.encode("utf-8")) > BCRYPT_MAX_PASSWORD_BYTES:
        collector.problem(
            f"MLFLOW_TRACKING_PASSWORD is longer than {BCRYPT_MAX_PASSWORD_BYTES} bytes "
            "(bcrypt's limit): use a shorter one"
        )
    else:
        _check_text(collector, "MLFLOW_TRACKING_PASSWORD", password)
    return username, password


def load_settings(
    environ: Mapping[str, str],
    *,
    local: bool = False,
    local_port: int | None = None,
    data_dir: Path | None = None,
    generate_password: Callable[[], str] | None = None,
) -> Settings:
    """Validate ``environ`` (Heroku's dyno contract, or local mode's embedded defaults)."""
    collector = _Collector(environ)
    on_dyno = "DYNO" in environ
    if local and on_dyno:
        raise ConfigError(
            ["--local is refused on a Heroku dyno (DYNO is set): its disk is wiped on restart"]
        )

    # PORT
    if local:
        port = local_port if local_port is not None else LOCAL_PORT
        if not 0 < port < 65536:
            collector.problem("--port must be from 1 to 65535")
    elif "PORT" not in environ:
        collector.problem("PORT is not set: Heroku sets it; elsewhere set PORT=8080")
        port = 0
    else:
        port = collector.integer("PORT", 1, 65535, default="")

    # DATABASE_URL
    secret_values: list[str] = []
    database_url = environ.get("DATABASE_URL", "")
    backend_store_uri = ""
    database_description = ""
    if database_url.strip():
        try:
            url = to_sqlalchemy_url(database_url)
            backend_store_uri = url.render_as_string(hide_password=False)
            database_description = f"{url.host}:{url.port or 5432}/{url.database}"
            if url.password:
                secret_values.append(str(url.password))
                secret_values.append(urllib.parse.quote(str(url.password), safe=""))
        except ValueError as error:
            collector.problem(str(error))
    elif local and data_dir is not None:
        backend_store_uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
        database_description = "SQLite in the local data directory"
    elif "DATABASE_URL" in environ:
        collector.problem("DATABASE_URL is empty: attach Heroku Postgres or set it")
    else:
        collector.problem(
            "DATABASE_URL is not set: attach Heroku Postgres (heroku addons:create "
            "heroku-postgresql) or set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        )

    # S3_URI
    s3_uri = environ.get("S3_URI", "")
    if s3_uri.strip():
        artifacts_destination = _parse_s3_uri(collector, s3_uri)
    elif local and data_dir is not None:
        artifacts_destination = str((data_dir / "artifacts").resolve())
    else:
        artifacts_destination = ""
        state = "empty" if "S3_URI" in environ else "not set"
        collector.problem(
            f"S3_URI is {state}: set it to s3://BUCKET/PREFIX where artifacts are stored"
        )

    # AWS credentials: both or neither; required for S3 on a dyno (no instance role there).
    key_id = environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(key_id) != bool(secret_key):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        collector.problem(f"{missing} is not set: set both AWS_ACCESS_KEY_ID and it, or neither")
    elif on_dyno and s3_uri.strip() and not key_id:
        collector.problem(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set: the server needs them "
            "to write artifacts to S3_URI"
        )
    if secret_key:
        secret_values.append(secret_key)
    # Values checked after stripping are also passed on stripped: MLflow and boto3 would
    # choke on the whitespace (a trailing newline from `heroku config:set X="$(cat f)"`).
    cleaned: dict[str, str] = {}
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        region = environ.get(name)
        if region is None:
            continue
        cleaned[name] = region.strip()
        if not AWS_REGION.fullmatch(cleaned[name]):
            collector.problem(f"{name} must look like eu-west-1 (an AWS region name)")
    endpoint = environ.get("MLFLOW_S3_ENDPOINT_URL")
    if endpoint is not None:
        try:
            parsed = urllib.parse.urlsplit(endpoint)
            valid = parsed.scheme in ("http", "https") and bool(parsed.hostname)
            _port = parsed.port  # raises ValueError when it is not a number
        except ValueError:
            valid = False
        if not valid:
            collector.problem("MLFLOW_S3_ENDPOINT_URL must be an http(s)://HOST[:PORT] URL")

    # Login
    login_mode = environ.get("MLFLOW_HEROKU_LOGIN_MODE", DEFAULTS["MLFLOW_HEROKU_LOGIN_MODE"])
    login_mode = login_mode.strip().lower()
    if login_mode not in LOGIN_MODES:
        collector.problem(
            "MLFLOW_HEROKU_LOGIN_MODE must be shared (one login checked by nginx) or accounts "
            "(a login per person, checked by MLflow)"
        )
    accounts = login_mode == ACCOUNTS_LOGIN
    people: People | None = None
    username, password = "", ""
    if login_mode not in LOGIN_MODES:
        pass  # which login to check is unknown: the mode's problem is the one to fix
    elif accounts:
        # A shared login left set (e.g. while moving to accounts) is unused but still secret.
        secret_values.append(environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        people = _people(collector)
        secret_values.append(people.admin_password)
        secret_values.extend(people.initial_passwords.values())
    else:
        username, password = _shared_login(collector, local, generate_password)
        secret_values.append(password)
    _kek_passphrase(collector, on_dyno, secret_values)

    # Tuning knobs
    # Local mode keeps one worker unless asked: its SQLite file takes one writer at a time.
    workers = collector.integer("WEB_CONCURRENCY", 1, 16, "1" if local else None)
    pool_size = collector.integer("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", 1, MAX_DB_POOL)
    # MLflow ignores 0 (falls back to SQLAlchemy's 10), so 0 is refused rather than misread.
    max_overflow = collector.integer("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", 1, MAX_DB_POOL)
    db_wait_seconds = collector.integer("MLFLOW_HEROKU_DB_WAIT_SECONDS", 0, 50)
    max_body_size = _body_size(
        collector,
        environ.get("MLFLOW_HEROKU_MAX_BODY_SIZE", DEFAULTS["MLFLOW_HEROKU_MAX_BODY_SIZE"]),
    )
    proxy_read_timeout = collector.integer("MLFLOW_HEROKU_PROXY_READ_TIMEOUT", 5, 600)
    auth_failures = collector.integer("MLFLOW_HEROKU_AUTH_FAILURES_PER_MINUTE", 1, 6000)
    listen_address = _listen_address(collector, environ, local)
    nginx_preload = _nginx_preload(collector, environ)
    auth_cache_ttl = collector.integer(
        "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS", 0, ACCOUNTS_CACHE_MAX_SECONDS
    )
    default_permission = _default_permission(collector, people)

    for name in ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"):
        value = environ.get(name)
        if value is not None and (
            not value.strip() or any(not part.strip() for part in value.split(","))
        ):
            collector.problem(f"{name} must be a comma-separated list without empty entries")
    for name in (
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "MLFLOW_ENABLE_AI_GATEWAY",
    ):
        value = environ.get(name)
        if value is None:
            continue
        cleaned[name] = value.strip()
        if cleaned[name].lower() not in ("true", "false", "1", "0"):
            collector.problem(f"{name} must be true or false")

    if collector.problems:
        raise ConfigError(collector.problems)

    mlflow_env = {
        name: cleaned.get(name, environ[name]) for name in MLFLOW_PASSTHROUGH if name in environ
    }
    mlflow_env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow_env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow_env.setdefault("DO_NOT_TRACK", "true")
    if on_dyno:
        # Heroku's router only forwards requests whose Host is one of the app's domains, and
        # the app's host name is not visible inside the dyno, so MLflow's DNS-rebinding check
        # (default: localhost and private IPs) would refuse every real request.
        mlflow_env.setdefault("MLFLOW_SERVER_ALLOWED_HOSTS", "*")
    mlflow_env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] = str(pool_size)
    mlflow_env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = str(max_overflow)
    mlflow_env["MLFLOW_HEROKU_LOGIN_MODE"] = login_mode
    if people is not None:
        secret_key = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or flask_secret_key(
            people.admin_password
        )
        secret_values.append(secret_key)
        mlflow_env.update(
            {
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
                # The migration step created the admin (accounts.py): workers only open the
                # auth store, as under `mlflow server --app-name basic-auth`.
                ADMIN_BOOTSTRAPPED_VARIABLE: "true",
                # A route of MLflow's that no permission check covers is refused, not served.
                "MLFLOW_BASIC_AUTH_FAIL_CLOSED": "true",
            }
        )

    return Settings(
        port=port,
        backend_store_uri=backend_store_uri,
        database_description=database_description,
        artifacts_destination=artifacts_destination,
        username=username,
        password=password,
        workers=workers,
        pool_size=pool_size,
        max_overflow=max_overflow,
        db_wait_seconds=db_wait_seconds,
        max_body_size=max_body_size,
        proxy_read_timeout=proxy_read_timeout,
        auth_failures_per_minute=auth_failures,
        listen_address=listen_address,
        nginx_preload=nginx_preload,
        mlflow_env=mlflow_env,
        local=local,
        behind_heroku_router=on_dyno,
        secrets=tuple(value for value in secret_values if value),
        login_mode=login_mode,
        auth_cache_ttl_seconds=auth_cache_ttl,
        default_permission=default_permission,
    )


def generate_local_password() -> str:
    return secrets.token_urlsafe(18)
