"""Releasing the pushed image on Heroku (a dynamic provider), then the web formation's dynos.

No pulumiverse-heroku resource releases a container image, so `ContainerReleaseProvider` does what
`heroku container:release` does (see infra/heroku_api.py). Pulumi stores the provider class by
reference to this module: renaming or moving `infra.release` breaks refresh and destroy of existing
stacks.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi.dynamic
from pulumi.runtime.rpc import UNKNOWN
from pulumiverse_heroku import formation

from infra.heroku_api import (
    API_BASE_URL,
    REGISTRY_BASE_URL,
    HerokuClient,
    Release,
    parse_repo_digest,
)

PROCESS_TYPE = "web"


class ContainerReleaseProvider(pulumi.dynamic.ResourceProvider):
    """Create/update: release the image. Diff: on the image ID. Delete: nothing to undo (a
    Heroku release cannot be deleted; destroying the app removes its releases)."""

    def __init__(
        self,
        api_base_url: str = API_BASE_URL,
        registry_base_url: str = REGISTRY_BASE_URL,
        poll_interval: float = 3.0,
        retry_delay: float = 1.0,
        max_retry_wait: float = 60.0,
    ) -> None:
        super().__init__()
        self.api_base_url = api_base_url
        self.registry_base_url = registry_base_url
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.max_retry_wait = max_retry_wait

    def _client(self, props: dict[str, Any]) -> HerokuClient:
        # getattr: a provider serialized into an older stack's state may lack newer attributes.
        return HerokuClient(
            str(props.get("api_key") or ""),
            getattr(self, "api_base_url", API_BASE_URL),
            getattr(self, "registry_base_url", REGISTRY_BASE_URL),
            retry_delay=getattr(self, "retry_delay", 1.0),
            max_retry_wait=getattr(self, "max_retry_wait", 60.0),
        )

    def _image_id(self, props: dict[str, Any]) -> str:
        repository, digest = parse_repo_digest(str(props["image_ref"]))
        expected = f"{props['app_name']}/{props['process_type']}"
        if repository != expected:
            raise ValueError(
                f"image {props['image_ref']!r} was pushed to {repository!r}, not to {expected!r}"
            )
        return self._client(props).image_id(repository, digest)

    def _release(self, props: dict[str, Any]) -> dict[str, Any]:
        image_id = self._image_id(props)
        release: Release = self._client(props).release_image(
            str(props["app_name"]),
            str(props["process_type"]),
            image_id,
            timeout=float(props["timeout_seconds"]),
            poll_interval=getattr(self, "poll_interval", 3.0),
        )
        # Outputs: everything but the API key, which stays an (encrypted) input only.
        return {
            "app_name": props["app_name"],
            "process_type": props["process_type"],
            "image_ref": props["image_ref"],
            "timeout_seconds": props["timeout_seconds"],
            "image_id": image_id,
            "release_id": release.id,
            "release_version": release.version,
        }

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        outs = self._release(props)
        return pulumi.dynamic.CreateResult(f"{outs['app_name']}/{outs['process_type']}", outs)

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        replaces = [
            key
            for key in ("app_name", "process_type")
            if news.get(key) == UNKNOWN or news.get(key) != olds.get(key)
        ]
        if replaces:
            return pulumi.dynamic.DiffResult(
                changes=True, replaces=replaces, delete_before_replace=False
            )
        new_ref = news.get("image_ref")
        if new_ref == UNKNOWN:
            # A preview with a rebuilt image (the engine passes UNKNOWN for values not known
            # yet): the new image ID is not known either -> an update.
            return pulumi.dynamic.DiffResult(changes=True, replaces=[])
        if new_ref == olds.get("image_ref"):
            changes = False
        else:
            # A different manifest may still carry the same image (e.g. pushed again): compare
            # the image IDs, the thing Heroku actually runs.
            changes = self._image_id(news) != olds.get("image_id")
        return pulumi.dynamic.DiffResult(changes=changes, replaces=[])

    def update(
        self, _id: str, _olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(self._release(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class ContainerRelease(pulumi.dynamic.Resource, module="heroku", name="ContainerRelease"):
    """The image released on the app's web process type."""

    image_id: pulumi.Output[str]
    release_id: pulumi.Output[str]
    release_version: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        app_name: pulumi.Input[str],
        image_ref: pulumi.Input[str],
        api_key: pulumi.Input[str],
        timeout_seconds: int,
        provider: ContainerReleaseProvider | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "app_name": app_name,
            "process_type": PROCESS_TYPE,
            "image_ref": image_ref,
            "api_key": pulumi.Output.secret(api_key),
            "timeout_seconds": timeout_seconds,
            # Outputs must be declared to exist on the resource.
            "image_id": None,
            "release_id": None,
            "release_version": None,
        }
        super().__init__(provider or ContainerReleaseProvider(), name, props, opts)


class WebRelease(pulumi.ComponentResource):
    """Releases the image once config vars and database exist, then sets the web dynos."""

    image_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        app_id: pulumi.Input[str],
        app_name: pulumi.Input[str],
        image_ref: pulumi.Input[str],
        api_key: pulumi.Input[str],
        timeout_seconds: int,
        dyno_size: str,
        dyno_count: int,
        release_after: list[pulumi.Resource],
        provider: ContainerReleaseProvider | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-heroku:index:WebRelease", name, None, opts)
        self.release = ContainerRelease(
            "release",
            app_name=app_name,
            image_ref=image_ref,
            api_key=api_key,
            timeout_seconds=timeout_seconds,
            provider=provider,
            # The first release must not boot without DATABASE_URL and the config vars.
            opts=pulumi.ResourceOptions(parent=self, depends_on=release_after),
        )
        # The web process type exists only after the first release.
        self.formation = formation.Formation(
            "web",
            app_id=app_id,
            type=PROCESS_TYPE,
            size=dyno_size,
            quantity=dyno_count,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release]),
        )
        self.image_id = self.release.image_id
        self.register_outputs(
            {"image_id": self.image_id, "release_version": self.release.release_version}
        )
