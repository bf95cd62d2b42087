"""The Heroku app on the container stack, its Postgres add-on, config vars and custom domains."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import pulumi
import pulumi_random as random
from pulumiverse_heroku import addon, domain
from pulumiverse_heroku import app as heroku_app

from infra.settings import Settings

# Length of the login password generated when the stack sets none (Pulumi.yaml says so too).
GENERATED_PASSWORD_LENGTH = 32


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

        if settings.login_password is not None:
            self.password = settings.login_password
        else:
            generated = random.RandomPassword(
                "login-password",
                length=GENERATED_PASSWORD_LENGTH,
                # Letters and digits only: the password ends up in shell exports and URLs.
                special=False,
                opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["result"]),
            )
            self.password = pulumi.Output.secret(generated.result)

        domains = settings.custom_domains
        hostname = self.app.web_url.apply(host_of)
        self.config_vars = heroku_app.ConfigAssociation(
            "config-vars",
            app_id=app_id,
            vars={
                "S3_URI": s3_uri,
                "AWS_DEFAULT_REGION": settings.aws_region,
                "MLFLOW_TRACKING_USERNAME": settings.login_user,
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
                # Read by the maintenance command only (a one-off dyno), not by the web dyno.
                "MLFLOW_HEROKU_BACKUP_RETENTION_DAYS": str(settings.backup_retention_days),
                "MLFLOW_HEROKU_GC_AFTER_DAYS": str(settings.gc_after_days),
            },
            sensitive_vars={
                "AWS_ACCESS_KEY_ID": aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY": aws_secret_access_key,
                "MLFLOW_TRACKING_PASSWORD": self.password,
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
