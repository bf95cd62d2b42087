"""The Heroku app on the container stack, its Postgres add-on, config vars and custom domains."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import pulumi
import pulumi_random as random
from pulumiverse_heroku import addon, domain
from pulumiverse_heroku import app as heroku_app

from infra.settings import Person, Settings

# Length of the login password generated when the stack sets none (Pulumi.yaml says so too);
# the admin's and each person's initial passwords are as long.
GENERATED_PASSWORD_LENGTH = 32
# MLflow's gateway derives its key-encryption key from this passphrase (mlflow/utils/crypto.py).
GATEWAY_PASSPHRASE_LENGTH = 64

# The config vars of the login modes and the gateway, as the image reads them. The image's own
# names for them belong in image/mlflow_heroku_runtime (issue 15, image side); until they are
# there, this is the one place in infra that spells them.
LOGIN_MODE_VAR = "MLFLOW_HEROKU_LOGIN_MODE"
ADMIN_USERNAME_VAR = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_VAR = "MLFLOW_AUTH_ADMIN_PASSWORD"  # noqa: S105 (a variable's name)
AUTH_CACHE_TTL_VAR = "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS"
DEFAULT_PERMISSION_VAR = "MLFLOW_HEROKU_DEFAULT_PERMISSION"
PEOPLE_VAR = "MLFLOW_HEROKU_PEOPLE"
PEOPLE_PASSWORDS_VAR = "MLFLOW_HEROKU_PEOPLE_PASSWORDS"
GATEWAY_PASSPHRASE_VAR = "MLFLOW_CRYPTO_KEK_PASSPHRASE"  # noqa: S105 (a variable's name)
# The shared login (nginx's basic auth).
SHARED_USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
SHARED_PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"  # noqa: S105 (a variable's name)
# Which of them each mode sets, plain and sensitive (the gateway's passphrase: both modes).
LOGIN_VARS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "shared": (
        frozenset({LOGIN_MODE_VAR, SHARED_USERNAME_VAR}),
        frozenset({SHARED_PASSWORD_VAR, GATEWAY_PASSPHRASE_VAR}),
    ),
    "accounts": (
        frozenset(
            {
                LOGIN_MODE_VAR,
                ADMIN_USERNAME_VAR,
                AUTH_CACHE_TTL_VAR,
                DEFAULT_PERMISSION_VAR,
                PEOPLE_VAR,
            }
        ),
        frozenset({ADMIN_PASSWORD_VAR, PEOPLE_PASSWORDS_VAR, GATEWAY_PASSPHRASE_VAR}),
    ),
}


def people_json(people: Sequence[Person]) -> str:
    """MLFLOW_HEROKU_PEOPLE: the people and their roles, in the stack's order."""
    return json.dumps([{"username": p.username, "role": p.role} for p in people])


def people_passwords_json(usernames: Sequence[str], passwords: Sequence[str]) -> str:
    """MLFLOW_HEROKU_PEOPLE_PASSWORDS: each person's initial password (a sensitive var)."""
    return json.dumps(dict(zip(usernames, passwords, strict=True)))


def allowed_hosts(heroku_hostname: str, custom_domains: Sequence[str]) -> str:
    """MLFLOW_SERVER_ALLOWED_HOSTS: the Host headers that reach the app."""
    return ",".join([heroku_hostname, *custom_domains])


def cors_origins(heroku_hostname: str, custom_domains: Sequence[str]) -> str:
    """MLFLOW_SERVER_CORS_ALLOWED_ORIGINS: the UI's origins (TLS ends at Heroku's router)."""
    return ",".join(f"https://{host}" for host in [heroku_hostname, *custom_domains])


def host_of(web_url: str) -> str:
    """The app's real host name. Heroku gives new apps `<name>-<random>.herokuapp.com`; the
    provider's `heroku_hostname` output is only `<name>.herokuapp.com`, guessed, so it is unused."""
    host = urlsplit(web_url).hostname
    if not host:
        raise ValueError(f"Heroku returned a web URL without a host name: {web_url!r}")
    return host


def tracking_uri(web_url: str) -> str:
    """The app's web URL without the trailing slash, as MLflow clients want it."""
    return web_url.rstrip("/")


class HerokuApp(pulumi.ComponentResource):
    """A container-stack app with Heroku Postgres and every config var the image reads."""

    app: heroku_app.App
    postgres: addon.Addon
    config_vars: heroku_app.ConfigAssociation
    password: pulumi.Output[str]
    gateway_passphrase: pulumi.Output[str]
    web_url: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        s3_uri: pulumi.Input[str],
        aws_access_key_id: pulumi.Input[str],
        aws_secret_access_key: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-heroku:index:HerokuApp", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Deleting a Heroku app deletes its add-ons, so prod keeps the app as well as the database.
        keep = pulumi.ResourceOptions(
            parent=self, protect=settings.protect_data, retain_on_delete=settings.protect_data
        )

        self.app = heroku_app.App(
            "app",
            name=settings.app_name,
            region=settings.region,
            stack="container",
            acm=bool(settings.custom_domains),
            opts=keep,
        )
        app_id = self.app.uuid

        self.postgres = addon.Addon(
            "postgres",
            app_id=app_id,
            plan=f"heroku-postgresql:{settings.postgres_plan}",
            opts=keep,
        )

        self.domains = [
            domain.Domain(f"domain-{host}", app_id=app_id, hostname=host, opts=child)
            for host in settings.custom_domains
        ]

        def generated(name: str, length: int, **keepers: str) -> pulumi.Output[str]:
            # Letters and digits only: passwords end up in shell exports and URLs.
            password = random.RandomPassword(
                name,
                length=length,
                special=False,
                keepers=keepers or None,
                opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["result"]),
            )
            return pulumi.Output.secret(password.result)

        # Stable across updates: a new passphrase needs MLflow's rotation procedure
        # (`mlflow crypto rotate-kek`, docs/operations.md), never a silent replacement.
        self.gateway_passphrase = generated("gateway-kek-passphrase", GATEWAY_PASSPHRASE_LENGTH)

        self.login_mode = settings.login_mode
        # The program's own login: the shared one, or the admin account in accounts mode.
        self.login_user: str
        self.password: pulumi.Output[str]
        # Each person's initial password, by username (accounts mode; empty in shared mode).
        self.person_passwords: dict[str, pulumi.Output[str]] = {}
        plain: dict[str, pulumi.Input[str]] = {LOGIN_MODE_VAR: settings.login_mode}
        sensitive: dict[str, pulumi.Input[str]] = {GATEWAY_PASSPHRASE_VAR: self.gateway_passphrase}
        if settings.login_mode == "accounts":
            self.login_user = settings.admin_username
            self.password = settings.admin_password or generated(
                "admin-password", GENERATED_PASSWORD_LENGTH
            )
            # One generator per person, named after them: it stays as long as they stay listed
            # (a role change keeps it); removed and added again, they get a new one.
            self.person_passwords = {
                person.username: generated(
                    f"person-password-{person.username}",
                    GENERATED_PASSWORD_LENGTH,
                    username=person.username,
                )
                for person in settings.people
            }
            usernames = list(self.person_passwords)
            passwords_json: pulumi.Output[str] = pulumi.Output.secret(
                pulumi.Output.all(*self.person_passwords.values()).apply(
                    lambda passwords: people_passwords_json(usernames, passwords)
                )
            )
            plain |= {
                ADMIN_USERNAME_VAR: settings.admin_username,
                AUTH_CACHE_TTL_VAR: str(settings.auth_cache_ttl_seconds),
                DEFAULT_PERMISSION_VAR: settings.default_permission,
                PEOPLE_VAR: people_json(settings.people),
            }
            sensitive |= {
                ADMIN_PASSWORD_VAR: self.password,
                PEOPLE_PASSWORDS_VAR: passwords_json,
            }
        else:
            self.login_user = settings.login_user
            self.password = settings.login_password or generated(
                "login-password", GENERATED_PASSWORD_LENGTH
            )
            plain[SHARED_USERNAME_VAR] = settings.login_user
            sensitive[SHARED_PASSWORD_VAR] = self.password

        domains = settings.custom_domains
        hostname = self.app.web_url.apply(host_of)
        self.config_vars = heroku_app.ConfigAssociation(
            "config-vars",
            app_id=app_id,
            vars={
                "S3_URI": s3_uri,
                "AWS_DEFAULT_REGION": settings.aws_region,
                "MLFLOW_SERVER_ALLOWED_HOSTS": hostname.apply(
                    lambda host: allowed_hosts(host, domains)
                ),
                "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": hostname.apply(
                    lambda host: cors_origins(host, domains)
                ),
                "WEB_CONCURRENCY": str(settings.mlflow_workers),
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(settings.db_pool_size),
                "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(settings.db_max_overflow),
                "MLFLOW_HEROKU_MAX_BODY_SIZE": settings.max_body_size,
                **plain,
                # Read by the maintenance command only (a one-off dyno), not by the web dyno.
                "MLFLOW_HEROKU_BACKUP_RETENTION_DAYS": str(settings.backup_retention_days),
                "MLFLOW_HEROKU_GC_AFTER_DAYS": str(settings.gc_after_days),
            },
            sensitive_vars={
                "AWS_ACCESS_KEY_ID": aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY": aws_secret_access_key,
                **sensitive,
            },
            opts=child,
        )

        self.web_url = self.app.web_url
        self.tracking_uri = self.app.web_url.apply(tracking_uri)
        self.register_outputs(
            {
                "app_name": self.app.name,
                "web_url": self.web_url,
                "tracking_uri": self.tracking_uri,
                "postgres_addon": self.postgres.name,
            }
        )
