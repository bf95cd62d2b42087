"""People as code (accounts.py) against real PostgreSQL and MLflow's own auth store: the admin,
the listed people, their roles, removals, and what the sync never touches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mlflow_heroku_runtime import accounts, internals
from mlflow_heroku_runtime.accounts import (
    EDITOR_GRANTS,
    EDITOR_ROLE,
    MANAGED_TABLE,
    READER_GRANTS,
    READER_ROLE,
)
from mlflow_heroku_runtime.database_url import to_sqlalchemy_url
from mlflow_heroku_runtime.errors import ConfigError
from mlflow_heroku_runtime.settings import Person

from tests.support.services import ENTRYPOINT, PostgresCluster, own_database, sql

pytestmark = pytest.mark.integration

ADMIN = "team-admin"
ADMIN_PASSWORD = "admin password 1234"


def password_of(username: str) -> str:
    return f"initial password of {username}"


def environment(people: dict[str, str], admin_password: str = ADMIN_PASSWORD) -> dict[str, str]:
    """The accounts-mode variables for ``people`` (username -> role)."""
    return {
        "MLFLOW_HEROKU_LOGIN_MODE": "accounts",
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_HEROKU_PEOPLE": json.dumps(
            [{"username": name, "role": role} for name, role in people.items()]
        ),
        "MLFLOW_HEROKU_PEOPLE_PASSWORDS": json.dumps({name: password_of(name) for name in people}),
    }


@pytest.fixture
def database(postgres: PostgresCluster) -> Iterator[str]:
    """A new, empty database of its own; its name."""
    with own_database(postgres, "accounts") as (name, _url):
        yield name


@pytest.fixture
def url(postgres: PostgresCluster, database: str) -> str:
    """The database's SQLAlchemy URL, as the runtime makes it from DATABASE_URL."""
    heroku_url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    return to_sqlalchemy_url(heroku_url).render_as_string(hide_password=False)


@pytest.fixture
def store(url: str) -> Iterator[Any]:
    """MLflow's auth store on the test database, as its workers open it (after a sync)."""
    internals.upgrade_accounts_schema(url)
    opened = internals.accounts_store(url)
    yield opened
    internals.close_accounts_store(opened)


def sync(url: str, people: dict[str, str], **changes: str) -> accounts.SyncReport:
    report = accounts.migrate_and_sync(url, environment(people, **changes))
    assert report is not None
    return report


def role_names(store: Any, username: str) -> set[str]:
    return {role.name for role in store.list_user_roles(store.get_user(username).id)}


def grants_of(store: Any, role_name: str) -> dict[tuple[str, str], str]:
    role = store.get_role_by_name(accounts.WORKSPACE, role_name)
    return {
        (grant.resource_type, grant.resource_pattern): grant.permission
        for grant in store.list_role_permissions(role.id)
    }


@pytest.fixture
def managed(postgres: PostgresCluster, database: str) -> Callable[[], dict[str, str]]:
    """Our record of the managed accounts, read from the table: username -> role."""
    return lambda: dict(sql(postgres, f"SELECT username, role FROM {MANAGED_TABLE}", database))  # noqa: S608


def test_the_first_sync_creates_the_admin_and_the_people_with_their_roles(
    url: str, store: Any, managed: Callable[[], dict[str, str]]
) -> None:
    report = sync(url, {"ana": "editor", "bo": "reader", "cy": "admin"})
    assert report.admin == "created"
    assert sorted(report.created) == ["ana", "bo", "cy"]
    assert (report.removed, report.role_changed) == ([], [])
    assert store.get_user(ADMIN).is_admin
    assert store.authenticate_user(ADMIN, ADMIN_PASSWORD)
    for name in ("ana", "bo", "cy"):
        assert store.authenticate_user(name, password_of(name)), name
    assert (store.get_user("ana").is_admin, role_names(store, "ana")) == (False, {EDITOR_ROLE})
    assert (store.get_user("bo").is_admin, role_names(store, "bo")) == (False, {READER_ROLE})
    assert (store.get_user("cy").is_admin, role_names(store, "cy")) == (True, set())
    assert grants_of(store, EDITOR_ROLE) == EDITOR_GRANTS
    assert grants_of(store, READER_ROLE) == READER_GRANTS
    assert managed() == {"ana": "editor", "bo": "reader", "cy": "admin"}


def test_a_second_sync_with_the_same_list_changes_nothing(url: str, store: Any) -> None:
    people = {"ana": "editor", "bo": "reader"}
    sync(url, people)
    again = sync(url, people)
    assert (again.created, again.removed, again.role_changed, again.admin) == ([], [], [], "")


def test_role_changes_follow_the_list(url: str, store: Any) -> None:
    sync(url, {"ana": "editor", "bo": "reader", "cy": "admin"})
    report = sync(url, {"ana": "reader", "bo": "admin", "cy": "editor"})
    assert sorted(report.role_changed) == ["ana", "bo", "cy"]
    assert (store.get_user("ana").is_admin, role_names(store, "ana")) == (False, {READER_ROLE})
    assert (store.get_user("bo").is_admin, role_names(store, "bo")) == (True, set())
    assert (store.get_user("cy").is_admin, role_names(store, "cy")) == (False, {EDITOR_ROLE})


def test_an_unlisted_person_is_removed_and_forgotten(
    url: str, store: Any, managed: Callable[[], dict[str, str]]
) -> None:
    sync(url, {"ana": "editor", "bo": "reader"})
    report = sync(url, {"ana": "editor"})
    assert report.removed == ["bo"]
    assert not store.has_user("bo")
    assert store.has_user("ana")
    assert managed() == {"ana": "editor"}
    # Listed again later: a new account with the initial password.
    assert sync(url, {"ana": "editor", "bo": "reader"}).created == ["bo"]
    assert store.authenticate_user("bo", password_of("bo"))


def test_accounts_made_by_hand_are_never_removed_until_listed(url: str, store: Any) -> None:
    """Users made in MLflow's admin UI or REST API are in no list of ours."""
    sync(url, {"ana": "editor"})
    store.create_user("hand-made", "a hand-made password", is_admin=False)
    assert sync(url, {}).removed == ["ana"]
    assert store.has_user("hand-made")
    assert role_names(store, "hand-made") == set()
    # Listing it hands it over to the sync: its role is applied, its password kept ...
    adopted = sync(url, {"hand-made": "editor"})
    assert (adopted.created, adopted.role_changed) == ([], ["hand-made"])
    assert role_names(store, "hand-made") == {EDITOR_ROLE}
    assert store.authenticate_user("hand-made", "a hand-made password")
    # ... and from then on the list decides.
    assert sync(url, {}).removed == ["hand-made"]


def test_a_persons_password_is_never_reset(url: str, store: Any) -> None:
    """They change it on the account page; the initial password only creates the account."""
    sync(url, {"ana": "editor"})
    store.update_user("ana", password="ana chose this one")
    sync(url, {"ana": "reader"})
    assert store.authenticate_user("ana", "ana chose this one")
    assert not store.authenticate_user("ana", password_of("ana"))


def test_the_admin_follows_its_variables(url: str, store: Any) -> None:
    """MLFLOW_AUTH_ADMIN_PASSWORD sets the admin's password at each release (rotation); an
    admin demoted by hand is an admin again."""
    sync(url, {})
    assert sync(url, {}, admin_password="a rotated admin password").admin == "updated"
    assert store.authenticate_user(ADMIN, "a rotated admin password")
    assert not store.authenticate_user(ADMIN, ADMIN_PASSWORD)
    store.update_user(ADMIN, is_admin=False)
    assert sync(url, {}, admin_password="a rotated admin password").admin == "updated"
    assert store.get_user(ADMIN).is_admin


def test_a_person_who_becomes_the_admin_is_no_longer_managed(
    url: str, store: Any, managed: Callable[[], dict[str, str]]
) -> None:
    sync(url, {"ana": "editor"})
    env = {**environment({}), "MLFLOW_AUTH_ADMIN_USERNAME": "ana"}
    report = accounts.migrate_and_sync(url, env)
    assert report is not None
    assert report.removed == []  # ana is the admin now, not an unlisted person
    assert store.get_user("ana").is_admin
    assert managed() == {}


def test_our_roles_get_their_grants_back(url: str, store: Any) -> None:
    """A grant removed, changed or added by hand in the admin UI is put back at the release."""
    sync(url, {"ana": "editor"})
    role = store.get_role_by_name(accounts.WORKSPACE, EDITOR_ROLE)
    (experiments,) = [
        grant
        for grant in store.list_role_permissions(role.id)
        if grant.resource_type == "experiment"
    ]
    store.remove_role_permission(experiments.id)
    store.add_role_permission(role.id, "experiment", "*", "MANAGE")
    store.add_role_permission(role.id, "gateway_secret", "*", "READ")
    sync(url, {"ana": "editor"})
    assert grants_of(store, EDITOR_ROLE) == EDITOR_GRANTS


def test_roles_given_by_hand_stay(url: str, store: Any) -> None:
    sync(url, {"ana": "reader"})
    extra = store.create_role("data-team", accounts.WORKSPACE, "made in the admin UI")
    store.assign_role_to_user(store.get_user("ana").id, extra.id)
    sync(url, {"ana": "editor"})
    assert role_names(store, "ana") == {EDITOR_ROLE, "data-team"}


def test_a_sync_cut_short_is_finished_by_the_next(
    url: str, store: Any, managed: Callable[[], dict[str, str]]
) -> None:
    """A name recorded whose account was never made (the step died in between) is created
    when listed, and forgotten when not."""
    sync(url, {})
    ledger = accounts.ManagedAccounts(url)
    try:
        ledger.record(Person("ana", "editor"))
        ledger.record(Person("bo", "reader"))
    finally:
        ledger.close()
    report = sync(url, {"ana": "editor"})
    assert (report.created, report.removed) == (["ana"], [])
    assert managed() == {"ana": "editor"}


def test_shared_mode_has_no_accounts(postgres: PostgresCluster, database: str, url: str) -> None:
    assert accounts.migrate_and_sync(url, {"MLFLOW_HEROKU_LOGIN_MODE": "shared"}) is None
    assert accounts.migrate_and_sync(url, {}) is None
    tables = sql(postgres, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database)
    assert tables == [(0,)]


def test_bad_people_stop_the_sync_before_it_changes_anything(url: str, store: Any) -> None:
    sync(url, {"ana": "editor"})
    env = {**environment({"ana": "editor"}), "MLFLOW_HEROKU_PEOPLE_PASSWORDS": "{}"}
    with pytest.raises(ConfigError, match="has no initial password for ana"):
        accounts.migrate_and_sync(url, env)
    assert store.has_user("ana")


def test_the_migration_step_migrates_and_syncs_under_its_lock(
    postgres: PostgresCluster, database: str, url: str
) -> None:
    """`python -m mlflow_heroku_runtime.migrate` in accounts mode: MLflow's tracking schema,
    the auth app's (alembic_version_auth) and the people, in one run; the log names people,
    never a password."""
    people = {"ana": "editor", "bo": "reader"}
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ENTRYPOINT.parent),
        "_MLFLOW_SERVER_FILE_STORE": url,
        "_MLFLOW_HEROKU_DB_DESCRIPTION": "the test database",
        "MLFLOW_HEROKU_DB_WAIT_SECONDS": "5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **environment(people),
    }
    child = subprocess.run(
        [sys.executable, "-m", "mlflow_heroku_runtime.migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "accounts: created the admin account team-admin" in child.stderr
    assert "accounts: created the account ana (editor)" in child.stderr
    assert "accounts: 2 people as listed (created 2, removed 0" in child.stderr
    assert "migrate: schema of the test database is up to date" in child.stderr
    assert "Deprecat" not in child.stderr
    for secret in (ADMIN_PASSWORD, password_of("ana"), password_of("bo")):
        assert secret not in child.stderr + child.stdout
    opened = internals.accounts_store(url)
    try:
        assert opened.authenticate_user("bo", password_of("bo"))
    finally:
        internals.close_accounts_store(opened)
    for table in ("alembic_version", "alembic_version_auth"):
        assert sql(postgres, f"SELECT version_num FROM {table}", database), table  # noqa: S608
