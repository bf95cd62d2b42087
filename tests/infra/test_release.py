"""The release dynamic provider's create/diff/update/delete against the local Heroku double:
the same image released as the web and the release process, in one release. What the client
does with each request (errors, retries, a failed release's output) is test_heroku_api.py's."""

from __future__ import annotations

import base64
import json
from typing import Any

import dill  # type: ignore[import-untyped]  # no stubs
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc as pulumi_rpc

from infra.heroku_api import HerokuApiError, parse_repo_digest
from infra.release import RELEASE_PROCESS_TYPE, ContainerReleaseProvider

from .heroku_double import DOCKER_RELEASES, FakeHeroku, schema2_manifest
from .heroku_double import DOUBLE_API_KEY as API_KEY
from .heroku_double import DOUBLE_APP as APP

IMAGE_ID = "sha256:" + "c" * 64
OTHER_IMAGE_ID = "sha256:" + "d" * 64
UNKNOWN = pulumi_rpc.UNKNOWN


def provider_for(fake: FakeHeroku) -> ContainerReleaseProvider:
    return ContainerReleaseProvider(
        api_base_url=fake.base_url,
        registry_base_url=fake.base_url,
        poll_interval=0.01,
        retry_delay=0.01,
        max_retry_wait=5.0,
    )


def push_both(fake: FakeHeroku, image_id: str = IMAGE_ID, indent: int = 3) -> tuple[str, str]:
    """The same image pushed for web and for release, as HerokuImage does."""
    manifest = schema2_manifest(image_id).replace(b" " * 3, b" " * indent)
    return fake.push(APP, manifest), fake.push(APP, manifest, process_type="release")


def props(image_ref: str, release_image_ref: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "app_name": APP,
        "process_type": "web",
        "image_ref": image_ref,
        "release_image_ref": release_image_ref,
        "api_key": API_KEY,
        "timeout_seconds": 10,
        **extra,
    }


def created(fake: FakeHeroku, image_id: str = IMAGE_ID) -> dict[str, Any]:
    outs = provider_for(fake).create(props(*push_both(fake, image_id))).outs
    assert outs is not None
    return outs


def test_create_releases_web_and_release_with_the_same_image_in_one_patch(
    heroku: FakeHeroku,
) -> None:
    heroku.pending_reads = 4  # the release phase takes several polls
    web_ref, release_ref = push_both(heroku)
    result = provider_for(heroku).create(props(web_ref, release_ref))

    assert result.id == f"{APP}/web"  # as before the release phase: existing stacks keep it
    outs = result.outs
    assert outs is not None
    assert outs["image_id"] == IMAGE_ID  # the config digest, not a manifest digest
    assert outs["process_types"] == ["web", RELEASE_PROCESS_TYPE]
    assert outs["release_version"] == 3
    assert (outs["image_ref"], outs["release_image_ref"]) == (web_ref, release_ref)
    assert "api_key" not in outs  # never in the state's outputs
    assert API_KEY not in json.dumps(outs)
    # Each process type's manifest read from its own repository, as the CLI reads them.
    reads = [call.path for call in heroku.calls("GET", r"/v2/.*")]
    assert reads == [
        f"/v2/{APP}/web/manifests/{parse_repo_digest(web_ref)[1]}",
        f"/v2/{APP}/release/manifests/{parse_repo_digest(release_ref)[1]}",
    ]
    (patch,) = heroku.calls("PATCH", rf"/apps/{APP}/formation")
    assert patch.headers["Accept"] == DOCKER_RELEASES
    assert patch.body == {
        "updates": [
            {"type": "web", "docker_image": IMAGE_ID},
            {"type": "release", "docker_image": IMAGE_ID},
        ]
    }
    assert heroku.releases[APP][-1].status == "succeeded"
    assert len(heroku.calls("GET", rf"/apps/{APP}/releases/{outs['release_id']}")) >= 4


def test_a_release_image_that_is_not_the_web_image_is_refused_before_releasing(
    heroku: FakeHeroku,
) -> None:
    web_ref, _ = push_both(heroku)
    _, other_release_ref = push_both(heroku, OTHER_IMAGE_ID)
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(web_ref, other_release_ref))
    message = str(raised.value)
    assert f"is {OTHER_IMAGE_ID}, not the web image {IMAGE_ID}" in message
    assert "both must be the same image" in message
    assert not heroku.calls("PATCH", r".*")


def test_image_references_must_name_their_own_process_type(heroku: FakeHeroku) -> None:
    web_ref, release_ref = push_both(heroku)
    provider = provider_for(heroku)
    with pytest.raises(ValueError, match=f"was pushed to '{APP}/web', not to '{APP}/release'"):
        provider.create(props(web_ref, web_ref))
    with pytest.raises(ValueError, match="was pushed to 'other-app/web', not to 'acme-mlflow/web'"):
        provider.create(props("registry.heroku.com/other-app/web@sha256:" + "a" * 64, release_ref))
    with pytest.raises(HerokuApiError, match="no Heroku API key"):
        provider.create(props(web_ref, release_ref, api_key=""))
    assert not heroku.calls("PATCH", r".*")


def test_a_failed_release_phase_fails_the_create_with_its_output(heroku: FakeHeroku) -> None:
    heroku.next_status = "failed"
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(*push_both(heroku)))
    message = str(raised.value)
    assert "Heroku release v3 of app 'acme-mlflow' failed" in message
    assert "the previous release keeps serving" in message
    assert "  | Release phase failed: migrations did not run; the database is unchanged" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message
    assert API_KEY not in message


def test_a_release_phase_still_running_at_the_timeout_says_so(heroku: FakeHeroku) -> None:
    heroku.pending_reads = 10**6
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(*push_both(heroku), timeout_seconds=0.3))
    message = str(raised.value)
    assert "(v3 is still pending: its release phase may still be running)" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message


# -- diff / update / delete ----------------------------------------------------------------------


def test_diff_same_references_is_no_change_without_calling_heroku(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    before = len(heroku.requests)
    diff = provider_for(heroku).diff(
        f"{APP}/web", olds, props(olds["image_ref"], olds["release_image_ref"])
    )
    assert diff.changes is False
    assert diff.replaces == []
    assert len(heroku.requests) == before  # no network call for unchanged references


def test_diff_new_manifests_of_the_same_image_is_no_change(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    # The same image pushed again with differently formatted manifests: same config digest.
    web_ref, release_ref = push_both(heroku, indent=2)
    assert (web_ref, release_ref) != (olds["image_ref"], olds["release_image_ref"])
    diff = provider_for(heroku).diff(f"{APP}/web", olds, props(web_ref, release_ref))
    assert diff.changes is False


def test_diff_new_image_is_an_update_not_a_replacement(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    diff = provider_for(heroku).diff(f"{APP}/web", olds, props(*push_both(heroku, OTHER_IMAGE_ID)))
    assert diff.changes is True
    assert diff.replaces == []
    # In a preview of a rebuilt image the references are unknown: still an update.
    for news in (
        props(UNKNOWN, UNKNOWN),
        props(olds["image_ref"], UNKNOWN),
        props(UNKNOWN, olds["release_image_ref"]),
    ):
        preview = provider_for(heroku).diff(f"{APP}/web", olds, news)
        assert preview.changes is True
        assert preview.replaces == []


def test_diff_another_app_is_a_replacement(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    diff = provider_for(heroku).diff(
        f"{APP}/web",
        olds,
        {**props(olds["image_ref"], olds["release_image_ref"]), "app_name": "renamed"},
    )
    assert diff.changes is True
    assert diff.replaces == ["app_name"]


def web_only_state(fake: FakeHeroku) -> dict[str, Any]:
    """The state a stack released before the release phase existed holds: no release props."""
    outs = provider_for(fake).create(props(fake.push(APP, schema2_manifest(IMAGE_ID)), None)).outs
    assert outs is not None
    return {
        key: value
        for key, value in outs.items()
        if key not in ("release_image_ref", "process_types")
    }


def test_a_state_from_before_the_release_phase_gets_an_update_that_adds_it(
    heroku: FakeHeroku,
) -> None:
    olds = web_only_state(heroku)
    assert heroku.calls("PATCH", r".*")[-1].body == {
        "updates": [{"type": "web", "docker_image": IMAGE_ID}]
    }
    # The same image, now pushed for release too: the web reference did not change.
    release_ref = heroku.push(APP, schema2_manifest(IMAGE_ID), process_type="release")
    news = props(olds["image_ref"], release_ref)
    diff = provider_for(heroku).diff(f"{APP}/web", olds, news)
    assert diff.changes is True
    assert diff.replaces == []  # same resource ID, no delete-and-create
    result = provider_for(heroku).update(f"{APP}/web", olds, news)
    assert result.outs is not None
    assert result.outs["process_types"] == ["web", RELEASE_PROCESS_TYPE]
    assert heroku.calls("PATCH", r".*")[-1].body == {
        "updates": [
            {"type": "web", "docker_image": IMAGE_ID},
            {"type": "release", "docker_image": IMAGE_ID},
        ]
    }
    # And from then on an unchanged stack is no change.
    again = provider_for(heroku).diff(f"{APP}/web", result.outs, news)
    assert again.changes is False


def test_update_releases_the_new_image_for_both_process_types(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    news = props(*push_both(heroku, OTHER_IMAGE_ID))
    result = provider_for(heroku).update(f"{APP}/web", olds, news)
    assert result.outs is not None
    assert result.outs["image_id"] == OTHER_IMAGE_ID
    assert result.outs["release_version"] == olds["release_version"] + 1
    assert heroku.formation_image[(APP, "web")] == OTHER_IMAGE_ID
    assert heroku.formation_image[(APP, "release")] == OTHER_IMAGE_ID
    assert "api_key" not in result.outs


def test_delete_changes_nothing_on_heroku(heroku: FakeHeroku) -> None:
    olds = created(heroku)
    before = len(heroku.requests)
    provider_for(heroku).delete(f"{APP}/web", olds)
    assert len(heroku.requests) == before
    assert heroku.formation_image[(APP, "web")] == IMAGE_ID


# -- the provider in the state -------------------------------------------------------------------


def test_release_provider_is_stored_by_reference_without_secrets() -> None:
    provider = ContainerReleaseProvider(api_base_url="https://api.example.test")
    serialized = base64.b64decode(serialize_provider(provider))
    assert b"infra.release" in serialized
    assert b"ContainerReleaseProvider" in serialized
    assert b"def _release" not in serialized
    restored = dill.loads(serialized)  # noqa: S301 - bytes this test made itself
    assert type(restored) is ContainerReleaseProvider
    assert restored.api_base_url == "https://api.example.test"


def test_a_provider_restored_from_an_older_state_still_releases(heroku: FakeHeroku) -> None:
    """An older stack's serialized provider may lack attributes added since: defaults apply."""
    old = ContainerReleaseProvider.__new__(ContainerReleaseProvider)
    old.__dict__.update(api_base_url=heroku.base_url, registry_base_url=heroku.base_url)
    heroku.pending_reads = 0  # done at the first read: the default poll interval is 3 s
    outs = old.create(props(*push_both(heroku))).outs
    assert outs is not None
    assert outs["process_types"] == ["web", RELEASE_PROCESS_TYPE]
