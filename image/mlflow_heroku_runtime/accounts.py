"""People as code (MLFLOW_HEROKU_LOGIN_MODE=accounts): the migration step's accounts part.

``migrate_and_sync(url, environ)`` runs in the migration step, under its advisory lock, so one
process does it per release (migrate.py). In accounts mode it

1. migrates the schema of MLflow's basic-auth app (its own Alembic table
   ``alembic_version_auth``) in the tracking database;
2. makes the admin account what MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD say (created, an
   admin, with that password: the config var is how the admin password is set and rotated);
3. keeps the accounts of MLFLOW_HEROKU_PEOPLE as listed: creates missing people with their
   initial password (MLFLOW_HEROKU_PEOPLE_PASSWORDS), gives everyone listed their role, and
   deletes the accounts it created earlier that are no longer listed. It never resets a listed
   person's password (they change it on the account page), and never touches an account it
   does not manage: the ones made in MLflow's admin UI or REST API are in no list of ours.

Which accounts it manages is recorded in its own table, ``mlflow_heroku_managed_accounts``,
in the same database. A name is recorded before its account is created and forgotten after
the account is deleted, so a step cut short is finished by the next one.

Roles, on MLflow's auth model (docs/image.md, "Accounts", says what each can do):

* admin: MLflow's admin flag (every resource, users and roles).
* editor: the role ``mlflow-heroku-editor`` (EDITOR_GRANTS: EDIT on every experiment,
  registered model, prompt and scorer; USE of the AI gateway's endpoints).
* reader: the role ``mlflow-heroku-reader`` (READER_GRANTS: READ on the same), which keeps
  readers reading when MLFLOW_HEROKU_DEFAULT_PERMISSION is NO_PERMISSIONS.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .plan import ACCOUNTS_LOGIN
from .settings import People, Person, load_people

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

MANAGED_TABLE = "mlflow_heroku_managed_accounts"
# Without MLflow's workspaces every resource and every role lives in this one.
WORKSPACE = "default"
EDITOR_ROLE = "mlflow-heroku-editor"
READER_ROLE = "mlflow-heroku-reader"
# (resource type, pattern) -> permission, as MLflow's role permissions.
EDITOR_GRANTS = {
    ("experiment", "*"): "EDIT",
    ("registered_model", "*"): "EDIT",
    ("prompt", "*"): "EDIT",
    ("scorer", "*"): "EDIT",
    ("gateway_endpoint", "*"): "USE",
}
READER_GRANTS = {
    ("experiment", "*"): "READ",
    ("registered_model", "*"): "READ",
    ("prompt", "*"): "READ",
    ("scorer", "*"): "READ",
}
ROLE_GRANTS = {EDITOR_ROLE: EDITOR_GRANTS, READER_ROLE: READER_GRANTS}
ROLE_DESCRIPTIONS = {
    EDITOR_ROLE: "People listed as editor in MLFLOW_HEROKU_PEOPLE: edit every experiment, "
    "registered model, prompt and scorer. Kept as listed at each release.",
    READER_ROLE: "People listed as reader in MLFLOW_HEROKU_PEOPLE: read every experiment, "
    "registered model, prompt and scorer. Kept as listed at each release.",
}
# Each person's role -> the one role of ours they hold (admins hold none: the flag says all).
ROLE_OF = {"admin": None, "editor": EDITOR_ROLE, "reader": READER_ROLE}


def log(message: str) -> None:
    print(f"accounts: {message}", file=sys.stderr, flush=True)


@dataclass
class SyncReport:
    """What one sync changed (names only; for the log and the tests)."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    role_changed: list[str] = field(default_factory=list)
    admin: str = ""  # "created", "updated" or "" (already as configured)


def migrate_and_sync(url: str, environ: Mapping[str, str]) -> SyncReport | None:
    """The accounts part of the migration step (None in shared mode, which has no accounts).
    The caller holds the migration lock."""
    if environ.get("MLFLOW_HEROKU_LOGIN_MODE", "").strip().lower() != ACCOUNTS_LOGIN:
        return None
    from . import internals

    people = load_people(environ)  # validated by prepare already; here for the release phase
    # The auth app's package imports MLflow's server, which mounts Flask through Starlette's
    # deprecated WSGI module; the warning is addressed to MLflow (as in asgi.py).
    warnings.filterwarnings("ignore", message=internals.STARLETTE_WSGI_DEPRECATION)
    internals.upgrade_accounts_schema(url)
    store = internals.accounts_store(url)
    try:
        report = sync(store, url, people)
    finally:
        internals.close_accounts_store(store)
    log(
        f"{len(people.people)} people as listed (created {len(report.created)}, removed "
        f"{len(report.removed)}, role changed {len(report.role_changed)}); admin "
        f"{people.admin_username} {report.admin or 'as configured'}"
    )
    return report


def sync(store: Any, url: str, people: People) -> SyncReport:
    """Make the admin and the listed people's accounts as configured (see the module's doc)."""
    report = SyncReport(admin=sync_admin(store, people.admin_username, people.admin_password))
    roles = {name: ensure_role(store, name, grants) for name, grants in ROLE_GRANTS.items()}
    ledger = ManagedAccounts(url)
    try:
        ledger.forget(people.admin_username)  # the admin comes from its own variables
        listed = {person.username for person in people.people}
        for person in people.people:
            ledger.record(person)
            if not store.has_user(person.username, use_primary=True):
                store.create_user(
                    person.username,
                    people.initial_passwords[person.username],
                    is_admin=person.role == "admin",
                )
                report.created.append(person.username)
                log(f"created the account {person.username} ({person.role})")
            if apply_role(store, person, roles) and person.username not in report.created:
                report.role_changed.append(person.username)
                log(f"{person.username} is now {person.role}")
        for username in sorted(ledger.usernames() - listed):
            if store.has_user(username, use_primary=True):
                store.delete_user(username)
                report.removed.append(username)
                log(f"removed the account {username} (no longer in MLFLOW_HEROKU_PEOPLE)")
            ledger.forget(username)
    finally:
        ledger.close()
    return report


def sync_admin(store: Any, username: str, password: str) -> str:
    """Create the admin account, or make it an admin with the configured password again."""
    if not store.has_user(username, use_primary=True):
        store.create_user(username, password, is_admin=True)
        log(f"created the admin account {username}")
        return "created"
    changes: dict[str, Any] = {}
    if not store.get_user(username).is_admin:
        changes["is_admin"] = True
    if not store.authenticate_user(username, password, use_primary=True):
        changes["password"] = password
    if not changes:
        return ""
    store.update_user(username, **changes)
    what = " and ".join(
        ("made an admin again" if name == "is_admin" else "given MLFLOW_AUTH_ADMIN_PASSWORD")
        for name in changes
    )
    log(f"the admin account {username} was {what}")
    return "updated"


def ensure_role(store: Any, name: str, grants: Mapping[tuple[str, str], str]) -> Any:
    """Our role ``name`` with exactly ``grants`` (created, or its permissions put back)."""
    from mlflow.exceptions import MlflowException

    try:
        role = store.get_role_by_name(WORKSPACE, name)
    except MlflowException:
        role = store.create_role(name, WORKSPACE, ROLE_DESCRIPTIONS[name])
    present = {}
    for grant in store.list_role_permissions(role.id):
        key = (grant.resource_type, grant.resource_pattern)
        if grants.get(key) == grant.permission and key not in present:
            present[key] = grant
        else:
            store.remove_role_permission(grant.id)
    for (resource_type, pattern), permission in grants.items():
        if (resource_type, pattern) not in present:
            store.add_role_permission(role.id, resource_type, pattern, permission)
    return role


def apply_role(store: Any, person: Person, roles: Mapping[str, Any]) -> bool:
    """Give ``person`` their role: the admin flag, and exactly the one role of ours it maps to
    (roles given by hand in the admin UI stay). True when something changed."""
    user = store.get_user(person.username)
    changed = False
    if user.is_admin != (person.role == "admin"):
        store.update_user(person.username, is_admin=person.role == "admin")
        changed = True
    wanted = ROLE_OF[person.role]
    held = {role.name for role in store.list_user_roles(user.id)}
    for name, role in roles.items():
        if name == wanted and name not in held:
            store.assign_role_to_user(user.id, role.id)
            changed = True
        elif name != wanted and name in held:
            store.unassign_role_from_user(user.id, role.id)
            changed = True
    return changed


class ManagedAccounts:
    """Our record of the accounts the sync manages (the table MANAGED_TABLE)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        self.engine: Engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        metadata = sqlalchemy.MetaData()
        self.table = sqlalchemy.Table(
            MANAGED_TABLE,
            metadata,
            sqlalchemy.Column("username", sqlalchemy.String(255), primary_key=True),
            sqlalchemy.Column("role", sqlalchemy.String(20), nullable=False),
        )
        metadata.create_all(self.engine, checkfirst=True)

    def usernames(self) -> set[str]:
        with self.engine.connect() as connection:
            return {row.username for row in connection.execute(self.table.select())}

    def record(self, person: Person) -> None:
        import sqlalchemy

        with self.engine.begin() as connection:
            updated = connection.execute(
                sqlalchemy.update(self.table)
                .where(self.table.c.username == person.username)
                .values(role=person.role)
            )
            if not updated.rowcount:
                connection.execute(
                    sqlalchemy.insert(self.table).values(username=person.username, role=person.role)
                )

    def forget(self, username: str) -> None:
        import sqlalchemy

        with self.engine.begin() as connection:
            connection.execute(
                sqlalchemy.delete(self.table).where(self.table.c.username == username)
            )

    def close(self) -> None:
        self.engine.dispose()
