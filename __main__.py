"""mlflow-heroku: a password-protected MLflow tracking server on Heroku, one stack per environment.

Wires the components in infra/ and exports what clients need. `pulumi up` runs this file as
`__main__`; tests load it under Pulumi's mocks and call `main()`.
"""

from __future__ import annotations

import shlex
from typing import Any

import pulumi

from infra import settings as stack_settings
from infra.artifact_store import ArtifactStore
from infra.heroku_app import HerokuApp
from infra.image import HerokuImage
from infra.release import ContainerReleaseProvider, WebRelease


def client_environment(tracking_uri: str, user: str, password: str) -> str:
    """Ready-to-paste shell lines for MLflow clients (Python, R and the CLI all read these)."""
    return (
        f"export MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)}\n"
        f"export MLFLOW_TRACKING_USERNAME={shlex.quote(user)}\n"
        f"export MLFLOW_TRACKING_PASSWORD={shlex.quote(password)}\n"
    )


def main(release_provider: ContainerReleaseProvider | None = None) -> dict[str, pulumi.Output[Any]]:
    settings = stack_settings.from_pulumi_config()

    artifacts = ArtifactStore("artifacts", settings)
    heroku = HerokuApp(
        "heroku",
        settings,
        s3_uri=artifacts.s3_uri,
        aws_access_key_id=artifacts.access_key_id,
        aws_secret_access_key=artifacts.secret_access_key,
    )
    image = HerokuImage("image", app_name=heroku.app.name, api_key=settings.heroku_api_key)
    web = WebRelease(
        "web",
        app_id=heroku.app.uuid,
        app_name=heroku.app.name,
        image_ref=image.repo_digest,
        release_image_ref=image.release_repo_digest,
        api_key=settings.heroku_api_key,
        timeout_seconds=settings.release_timeout_seconds,
        dyno_size=settings.dyno_size,
        dyno_count=settings.dyno_count,
        release_after=[heroku.config_vars, heroku.postgres, *heroku.domains],
        provider=release_provider,
    )

    if settings.custom_domains:
        tracking_uri = pulumi.Output.from_input(f"https://{settings.custom_domains[0]}")
    else:
        tracking_uri = heroku.tracking_uri
    user = heroku.login_user
    if settings.login_mode == "accounts":
        # Each person's own lines, by username (the admin's too): `pulumi stack output
        # --show-secrets --json clientEnvironment` and hand each person theirs.
        logins = {user: heroku.password, **heroku.person_passwords}
        names = list(logins)
        client_lines: pulumi.Output[Any] = pulumi.Output.all(tracking_uri, *logins.values()).apply(
            lambda values: {
                name: client_environment(values[0], name, password)
                for name, password in zip(names, values[1:], strict=True)
            }
        )
    else:
        client_lines = pulumi.Output.all(tracking_uri, heroku.password).apply(
            lambda values: client_environment(values[0], user, values[1])
        )
    outputs: dict[str, pulumi.Output[Any]] = {
        "appUrl": heroku.web_url,
        "mlflowTrackingUri": tracking_uri,
        "loginMode": pulumi.Output.from_input(settings.login_mode),
        # The program's own login: the shared login, or in accounts mode the admin account
        # (its initial password; the smoke check logs in with it).
        "loginUser": pulumi.Output.from_input(user),
        "loginPassword": pulumi.Output.secret(heroku.password),
        "bucketName": artifacts.bucket_name,
        "imageId": web.image_id,
        "clientEnvironment": pulumi.Output.secret(client_lines),
    }
    for name, value in outputs.items():
        pulumi.export(name, value)
    return outputs


if __name__ == "__main__":
    main()
