"""Releasing the pushed image on Heroku (a dynamic provider), then the web formation's dynos.

No pulumiverse-heroku resource releases a container image, so `ContainerReleaseProvider` does what
`heroku container:release web release` does (see infra/heroku_api.py): the same image becomes the
`web` process and the `release` process, whose one-off dyno Heroku runs (the release phase)
before the new release's web dynos boot; the image's entrypoint picks the job by `DYNO`. Pulumi
stores the provider class by reference to this module: renaming or moving `infra.release`, or
renaming its classes, breaks refresh and destroy of existing stacks.
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
    RELEASE_PHASE_PROCESS_TYPE,
    HerokuApiError,
    HerokuClient,
    Release,
    parse_repo_digest,
)

PROCESS_TYPE = "web"
# The release phase's process type, and so the prefix of its dyno's DYNO (`release.1234`): what
# the image's entrypoint dispatches on (tests/infra/test_heroku_app.py holds the two together).
RELEASE_PROCESS_TYPE = RELEASE_PHASE_PROCESS_TYPE
RELEASE_DYNO_PREFIX = f"{RELEASE_PROCESS_TYPE}."


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

    def _image_id(self, props: dict[str, Any], ref_key: str, process_type: str) -> str:
        """The image ID of the manifest `props[ref_key]`, pushed to `<app>/<process_type>`."""
        image_ref = str(props[ref_key])
        repository, digest = parse_repo_digest(image_ref)
        expected = f"{props['app_name']}/{process_type}"
        if repository != expected:
            raise ValueError(
                f"image {image_ref!r} was pushed to {repository!r}, not to {expected!r}"
            )
        return self._client(props).image_id(repository, digest)

    def _images(self, props: dict[str, Any]) -> dict[str, str]:
        """Process type -> image ID, as `heroku container:release` reads them: each type's
        manifest from its own repository. The release phase must run the web image itself."""
        web_type = str(props["process_type"])
        image_id = self._image_id(props, "image_ref", web_type)
        images = {web_type: image_id}
        # Absent in the state of a stack released before the release phase existed.
        if props.get("release_image_ref"):
            release_id = self._image_id(props, "release_image_ref", RELEASE_PROCESS_TYPE)
            if release_id != image_id:
                raise HerokuApiError(
                    f"the image pushed for the {RELEASE_PROCESS_TYPE} process "
                    f"({props['release_image_ref']}) is {release_id}, not the {web_type} image "
                    f"{image_id}: both must be the same image (its entrypoint picks the job by "
                    "DYNO). Run `pulumi up` again to push it anew"
                )
            images[RELEASE_PROCESS_TYPE] = release_id
        return images

    def _release(self, props: dict[str, Any]) -> dict[str, Any]:
        images = self._images(props)
        release: Release = self._client(props).release_images(
            str(props["app_name"]),
            images,
            timeout=float(props["timeout_seconds"]),
            poll_interval=getattr(self, "poll_interval", 3.0),
        )
        # Outputs: everything but the API key, which stays an (encrypted) input only.
        return {
            "app_name": props["app_name"],
            "process_type": props["process_type"],
            "image_ref": props["image_ref"],
            "release_image_ref": props.get("release_image_ref"),
            "timeout_seconds": props["timeout_seconds"],
            "image_id": images[str(props["process_type"])],
            "process_types": list(images),
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
        refs = ("image_ref", "release_image_ref")
        if any(news.get(key) == UNKNOWN for key in refs):
            # A preview with a rebuilt image (the engine passes UNKNOWN for values not known
            # yet): the new image ID is not known either -> an update.
            return pulumi.dynamic.DiffResult(changes=True, replaces=[])
        if all(news.get(key) == olds.get(key) for key in refs):
            changes = False
        elif bool(news.get("release_image_ref")) != bool(olds.get("release_image_ref")):
            # The release process comes (a state from before the release phase) or goes.
            changes = True
        else:
            # A different manifest may still carry the same image (e.g. pushed again): compare
            # the image IDs, the thing Heroku actually runs.
            changes = self._images(news)[str(news["process_type"])] != olds.get("image_id")
        return pulumi.dynamic.DiffResult(changes=changes, replaces=[])

    def update(
        self, _id: str, _olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(self._release(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class ContainerRelease(pulumi.dynamic.Resource, module="heroku", name="ContainerRelease"):
    """The image released on the app's web process type and, when `release_image_ref` is
    given, on its release process type too (the release phase), in one release."""

    image_id: pulumi.Output[str]
    process_types: pulumi.Output[list[str]]
    release_id: pulumi.Output[str]
    release_version: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        app_name: pulumi.Input[str],
        image_ref: pulumi.Input[str],
        api_key: pulumi.Input[str],
        timeout_seconds: int,
        release_image_ref: pulumi.Input[str] | None = None,
        provider: ContainerReleaseProvider | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "app_name": app_name,
            "process_type": PROCESS_TYPE,
            "image_ref": image_ref,
            "release_image_ref": release_image_ref,
            "api_key": pulumi.Output.secret(api_key),
            "timeout_seconds": timeout_seconds,
            # Outputs must be declared to exist on the resource.
            "image_id": None,
            "process_types": None,
            "release_id": None,
            "release_version": None,
        }
        super().__init__(provider or ContainerReleaseProvider(), name, props, opts)


class WebRelease(pulumi.ComponentResource):
    """Releases the image as the web and the release process once config vars and database
    exist, then sets the web dynos (the release process has none: Heroku runs it per release)."""

    image_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        app_id: pulumi.Input[str],
        app_name: pulumi.Input[str],
        image_ref: pulumi.Input[str],
        release_image_ref: pulumi.Input[str],
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
            release_image_ref=release_image_ref,
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
