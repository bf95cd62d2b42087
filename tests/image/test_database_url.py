"""DATABASE_URL: the scheme rewrite and its named errors."""

from __future__ import annotations

import pytest
from mlflow_heroku_runtime import database_url

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
