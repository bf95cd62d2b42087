"""DATABASE_URL (Heroku's ``postgres://`` form) -> the SQLAlchemy URL MLflow gets.

Parsed with SQLAlchemy's own URL parser, so user names, hosts and database names that
contain "postgres", and passwords with URL-encoded characters, survive unchanged; only
the scheme is rewritten to name the installed driver (psycopg 3).
"""

from __future__ import annotations

import ipaddress

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DRIVER_SCHEME = "postgresql+psycopg"
ACCEPTED_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")
LOCAL_HOSTS = ("localhost",)


def is_local_host(host: str) -> bool:
    """Loopback and unix-socket hosts need no TLS; everything else (Heroku) does."""
    if host in LOCAL_HOSTS or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_sqlalchemy_url(raw: str, variable: str = "DATABASE_URL") -> URL:
    """Parse and normalise; raises ValueError naming ``variable`` (never echoing the URL)."""
    hint = f"set {variable} to postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    if not raw.strip():
        raise ValueError(f"{variable} is empty: {hint}")
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError(f"{variable} is not a database URL (check the port): {hint}") from None
    if url.drivername not in ACCEPTED_SCHEMES:
        # The scheme holds no secret, so it is safe to name.
        raise ValueError(
            f"{variable} has scheme {url.drivername!r}; only PostgreSQL is supported: {hint}"
        )
    host = url.host
    if not host:
        raise ValueError(f"{variable} has no host: {hint}")
    if "@" in host:
        # An unencoded '@' in the password moves the rest of it into the host name.
        raise ValueError(f"{variable} has an unencoded '@': URL-encode the password (@ is %40)")
    if not url.database:
        raise ValueError(f"{variable} has no database name: {hint}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"{variable} has an invalid port: {hint}")
    url = url.set(drivername=DRIVER_SCHEME)
    if "sslmode" not in url.query and not is_local_host(host):
        # Heroku Postgres refuses unencrypted connections; the add-on's URL does not say so.
        url = url.update_query_dict({"sslmode": "require"})
    return url


def describe(url: URL) -> str:
    """A loggable description: host, port and database, never the user or password."""
    return f"{url.host}:{url.port or 5432}/{url.database}"
