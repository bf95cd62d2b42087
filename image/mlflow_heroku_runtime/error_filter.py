"""An ASGI filter that keeps the server's internals out of error responses, and MLflow's own
message in them.

MLflow answers some database failures with SQLAlchemy's text inside its message, e.g.
``Experiment(name=x) already exists. Error: (psycopg.errors.UniqueViolation) duplicate key
...\\nDETAIL: ...\\n[SQL: INSERT ...]\\n[parameters: {...}]\\n(Background on this error at: ...)``.
The filter removes only what could leak (docs/image.md, "error_filter.py"):

- SQLAlchemy's wrapping of a driver error: the driver's class, the lines after its first
  (DETAIL, HINT, LINE, CONTEXT: they quote the statement and the row's values), the SQL
  statement, its parameters, SQLAlchemy's notes and its link. The driver's first line (e.g.
  "integer out of range") stays: it says why;
- connection strings, the database's host and user, and libpq's connection diagnostics;
- file-system paths of this server;
- the values of the secrets this process knows (database password, AWS secret key).

Status code, headers, ``error_code`` and every other field are kept; a body with nothing to
remove passes unchanged. Only error responses are buffered (they are small). Each removal is
logged with the driver error's class, never the text.

One refusal is answered differently: a write the database refused because it is read-only
(SQLSTATE 25006, ``ReadOnlySqlTransaction``) happens while a release phase upgrades the schema
(release_phase.py) and passes by itself, so it gets ``503`` with ``Retry-After`` and a message
saying so, instead of MLflow's 400: MLflow's client retries a 503 (mlflow/utils/request_utils.py).
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .internals import BACKEND_STORE_VARIABLE, REGISTRY_STORE_VARIABLE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REDACTED = "***"
# Shorter values would match ordinary text (the supervisor's Redactor uses the same floor).
MIN_SECRET_LENGTH = 4
# The store URIs the supervisor hands MLflow (supervisor.py, child_env): they carry the
# database's user, password and host.
DATABASE_URI_VARIABLES = (BACKEND_STORE_VARIABLE, REGISTRY_STORE_VARIABLE)
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",  # not in MLflow's environment today; removed if it ever is
    "DATABASE_URL",
)

# "(psycopg.errors.UniqueViolation) ": how SQLAlchemy names the driver's exception. A dotted
# class name in parentheses counts only for a database driver, or when SQLAlchemy's own
# markers follow it (a wrapped Python error: "(builtins.OverflowError) ...").
DRIVER_ERROR = re.compile(r"\(((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)\) ")
DRIVER_PACKAGES = ("psycopg", "psycopg2", "sqlite3", "pg8000", "asyncpg", "sqlalchemy")
SQL_BLOCK = re.compile(r"\[SQL: |\[SQL parameters hidden|\[parameters: ")
# SQLAlchemy ends its text with this link; what follows it is MLflow's again.
BACKGROUND_LINK = re.compile(
    r"\s*\(Background on this (?:error|warning) at: https://sqlalche\.me/[^)]*\)"
)
# The one note SQLAlchemy 2.x puts before the driver's error (orm/session.py, add_detail).
SQLALCHEMY_NOTE = re.compile(r"\(raised as a result of [^\n]*\)\n$")

# The rest of a word, without the punctuation that ends the sentence around it.
WORD_TAIL = r"[^\s'\"<>]*?(?=[.,;:!?)\]]*(?:[\s'\"<>]|$))"
URL_WITH_CREDENTIALS = re.compile(rf"\b[A-Za-z][\w+.-]*://[^\s/?#@'\"]*@{WORD_TAIL}")
DATABASE_URL = re.compile(
    rf"\b(?:postgres(?:ql)?|sqlite|mysql|mssql|oracle|cockroachdb)(?:\+\w+)?://{WORD_TAIL}"
)
# libpq's connection diagnostics and keyword connection strings.
CONNINFO_KEY = r"(?:host|hostaddr|port|user|password|dbname|sslmode|sslrootcert|options)"
CONNECTION_DETAILS = (
    (
        re.compile(r'connection to server at "[^"]*"(?: \([^)]*\))?, port \d+'),
        "connection to server at " + REDACTED,
    ),
    (
        re.compile(r'connection to server on socket "[^"]*"'),
        "connection to server on socket " + REDACTED,
    ),
    (re.compile(r'\b(for user|on host|host|role|database) "[^"]*"'), r"\1 " + REDACTED),
    # "host=... port=... user=...": two or more keywords in a row, so that an echoed filter
    # such as "params.port=3" stays; a password is removed wherever it appears.
    (
        re.compile(rf"\b{CONNINFO_KEY}={WORD_TAIL}(?:\s+{CONNINFO_KEY}={WORD_TAIL})+"),
        REDACTED,
    ),
    (re.compile(rf"\bpassword=(?:'[^']*'|{WORD_TAIL})"), "password=" + REDACTED),
)
PATH_CHARACTERS = r"[^\s'\"<>,;()\[\]{}]*"
# PostgreSQL's read_only_sql_transaction (25006), as psycopg names it.
READ_ONLY_ERROR = "ReadOnlySqlTransaction"
# MLflow's client honours Retry-After between its 7 retries (urllib3's Retry), so this sets how
# long it keeps trying: 7 x 30 s, about the backoff it would use without the header.
READ_ONLY_RETRY_AFTER_SECONDS = 30
READ_ONLY_MESSAGE = (
    "The tracking server's database is read-only while a release upgrades its schema: writes "
    "resume when the upgrade is done (usually seconds). Retry shortly; reads work meanwhile."
)


@dataclass
class Scrubbed:
    """What ``scrub_text`` kept, and what it removed (kinds and driver error classes only)."""

    text: str
    removed: set[str] = field(default_factory=set)
    driver_errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.removed)


def known_values_from_environment(environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(secrets, database identities): the values an error body must never show. Secrets
    are passwords and keys; identities are the database's host and user."""
    secrets: list[str] = []
    identities: list[str] = []
    for name in DATABASE_URI_VARIABLES:
        raw = environ.get(name, "")
        if "://" not in raw:
            continue
        try:
            parts = urllib.parse.urlsplit(raw)
            password, user, host = parts.password, parts.username, parts.hostname
        except ValueError:  # an unparsable URI: nothing to learn from it
            continue
        if password:
            secrets += [urllib.parse.unquote(password), password]
        if user:
            identities.append(urllib.parse.unquote(user))
        if host:
            identities.append(host)
    secrets += [environ[name] for name in SECRET_VARIABLES if environ.get(name)]
    return secrets, identities


def server_top_directories(root: str = "/") -> list[str]:
    """The top-level directories of this server: an absolute path starting with one of them
    is the server's (``/tmp/...``, ``/app/...``); ``/api/2.0/...`` is not."""
    try:
        return sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and re.fullmatch(r"[\w.-]+", entry.name)
        )
    except OSError:
        return []


class Scrubber:
    """Removes what could leak from an error body's text (see the module's docstring)."""

    def __init__(
        self, secrets: Iterable[str], identities: Iterable[str], top_directories: Iterable[str]
    ) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                # As MLflow or a template might have written it: raw, URL-, HTML-, JSON-escaped.
                forms |= {
                    secret,
                    urllib.parse.quote(secret, safe=""),
                    html.escape(secret),
                    json.dumps(secret)[1:-1],
                }
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted(forms, key=len, reverse=True)
        self.identities = sorted(
            {value for value in identities if len(value) >= MIN_SECRET_LENGTH},
            key=len,
            reverse=True,
        )
        names = "|".join(re.escape(name) for name in top_directories)
        self.server_path = (
            re.compile(rf"(?<![\w.:/~-])(?:file://)?/(?:{names})(?![\w.-]){PATH_CHARACTERS}")
            if names
            else None
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Scrubber:
        secrets, identities = known_values_from_environment(
            os.environ if environ is None else environ
        )
        return cls(secrets, identities, server_top_directories())

    def scrub_text(self, text: str) -> Scrubbed:
        result = Scrubbed(text)
        result.text = self._remove_database_text(result.text, result)
        for secret in self.secrets:
            if secret in result.text:
                result.text = result.text.replace(secret, REDACTED)
                result.removed.add("secret")
        for pattern in (URL_WITH_CREDENTIALS, DATABASE_URL):
            result.text, count = pattern.subn(REDACTED, result.text)
            if count:
                result.removed.add("connection string")
        for pattern, replacement in CONNECTION_DETAILS:
            result.text, count = pattern.subn(replacement, result.text)
            if count:
                result.removed.add("connection details")
        for identity in self.identities:
            if identity in result.text:
                result.text = result.text.replace(identity, REDACTED)
                result.removed.add("database host or user")
        if self.server_path is not None:
            result.text, count = self.server_path.subn(REDACTED, result.text)
            if count:
                result.removed.add("server path")
        return result

    def _remove_database_text(self, text: str, result: Scrubbed) -> str:
        """Each SQLAlchemy-formatted error in ``text`` reduced to the driver's first line."""
        kept: list[str] = []
        position = 0
        while True:
            start, end, first_line = self._next_database_text(text, position, result)
            if start < 0:
                kept.append(text[position:])
                return "".join(kept)
            kept.append(text[position:start])
            kept.append(first_line)
            position = end

    def _next_database_text(
        self, text: str, position: int, result: Scrubbed
    ) -> tuple[int, int, str]:
        """(start, end, driver's first line) of the next SQLAlchemy text, or (-1, -1, "")."""
        for header in DRIVER_ERROR.finditer(text, position):
            name = header.group(1)
            rest_start = header.end()
            block_end = self._block_end(text, rest_start)
            is_driver = name.split(".", 1)[0] in DRIVER_PACKAGES
            if not is_driver and not SQL_BLOCK.search(text, rest_start, block_end):
                continue
            start = header.start()
            note = SQLALCHEMY_NOTE.search(text, position, start)
            if note is not None:
                start = note.start()
            link = BACKGROUND_LINK.search(text, rest_start, block_end)
            content_end = block_end if link is None else link.start()
            line_end = text.find("\n", rest_start, content_end)
            first_line = text[rest_start : content_end if line_end < 0 else line_end]
            sql = SQL_BLOCK.search(first_line)
            if sql is not None:  # "[SQL: ...]" on the driver's first line itself
                first_line = first_line[: sql.start()]
            result.driver_errors.append(name)
            result.removed.add("database error details")
            return start, block_end, first_line.rstrip()
        # SQL without a driver's header (some other wrapping): from the statement on.
        sql = SQL_BLOCK.search(text, position)
        if sql is not None:
            result.removed.add("database error details")
            return sql.start(), self._block_end(text, sql.start()), ""
        return -1, -1, ""

    @staticmethod
    def _block_end(text: str, start: int) -> int:
        """SQLAlchemy's text ends with its link, or with the message when it has none."""
        link = BACKGROUND_LINK.search(text, start)
        return len(text) if link is None else link.end()


def scrub_body(scrubber: Scrubber, body: bytes) -> tuple[bytes, Scrubbed] | None:
    """(new body, what was removed) when ``body`` needs scrubbing, else None. A JSON body has
    each of its strings scrubbed and stays JSON; any other body is scrubbed as text."""
    text = body.decode("utf-8", errors="surrogateescape")
    if text.lstrip()[:1] in ("{", "["):
        try:
            payload = json.loads(text)
        except ValueError:
            pass
        else:
            found = Scrubbed("")
            scrubbed = _scrub_json(scrubber, payload, found)
            if not found.changed:
                return None
            return json.dumps(scrubbed).encode(), found
    result = scrubber.scrub_text(text)
    if not result.changed:
        return None
    return result.text.encode("utf-8", errors="surrogateescape"), result


def _scrub_json(scrubber: Scrubber, value: Any, found: Scrubbed) -> Any:
    if isinstance(value, str):
        result = scrubber.scrub_text(value)
        if not result.changed:
            return value
        found.removed |= result.removed
        found.driver_errors += result.driver_errors
        if result.text.strip():
            return result.text
        # Nothing of the message was MLflow's: still say what kind of failure it was.
        kinds = ", ".join(name.rsplit(".", 1)[-1] for name in result.driver_errors)
        return f"The database refused the request ({kinds or 'database error'})."
    if isinstance(value, list):
        return [_scrub_json(scrubber, item, found) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_json(scrubber, item, found) for key, item in value.items()}
    return value


class ScrubDatabaseErrors:
    """Buffers each error response (status >= 400) and sends it scrubbed (``scrub_body``)."""

    def __init__(self, app: ASGIApp, scrubber: Scrubber | None = None) -> None:
        self.app = app
        self.scrubber = Scrubber.from_environment() if scrubber is None else scrubber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: Message | None = None
        chunks: list[bytes] = []

        async def filtered_send(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held_start = message
                return
            if message["type"] != "http.response.body" or held_start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if not _is_encoded(held_start):
                scrubbed = scrub_body(self.scrubber, body)
                if scrubbed is not None:
                    body, found = scrubbed
                    extra: list[tuple[bytes, bytes]] = []
                    if refused_as_read_only(found):
                        held_start, body, extra = read_only_answer(held_start)
                        _log_read_only(scope)
                    else:
                        _log_removal(scope, found)
                    replaced = {b"content-length", *(name for name, _value in extra)}
                    headers = [
                        (name, value)
                        for name, value in held_start.get("headers", [])
                        if name.lower() not in replaced
                    ]
                    headers += [*extra, (b"content-length", str(len(body)).encode())]
                    held_start = {**held_start, "headers": headers}
            await send(held_start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, filtered_send)


def refused_as_read_only(found: Scrubbed) -> bool:
    """The database refused a write because it is read-only (a driver error of that class)."""
    return any(name.rsplit(".", 1)[-1] == READ_ONLY_ERROR for name in found.driver_errors)


def read_only_answer(start: Message) -> tuple[Message, bytes, list[tuple[bytes, bytes]]]:
    """(start, body, headers to add) of the 503 that replaces a read-only refusal."""
    body = json.dumps(
        {"error_code": "TEMPORARILY_UNAVAILABLE", "message": READ_ONLY_MESSAGE}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", str(READ_ONLY_RETRY_AFTER_SECONDS).encode()),
    ]
    return {**start, "status": 503}, body, headers


def _is_encoded(start: Message) -> bool:
    """A compressed body cannot be read; MLflow does not compress its responses."""
    for name, value in start.get("headers", []):
        if name.lower() == b"content-encoding" and value.strip().lower() != b"identity":
            return True
    return False


def _log_read_only(scope: Scope) -> None:
    print(
        f"mlflow: the read-only database refused {scope.get('method', '?')} "
        f"{scope.get('path', '?')} (a release phase is upgrading the schema): answered 503",
        file=sys.stderr,
        flush=True,
    )


def _log_removal(scope: Scope, found: Scrubbed) -> None:
    # Names only: the removed text may hold the very values being kept out of view.
    classes = ", ".join(dict.fromkeys(found.driver_errors)) or "no driver error"
    print(
        f"mlflow: removed {', '.join(sorted(found.removed))} from an error response to "
        f"{scope.get('method', '?')} {scope.get('path', '?')} ({classes})",
        file=sys.stderr,
        flush=True,
    )
