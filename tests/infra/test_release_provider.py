"""The release dynamic provider's create/diff/update/delete against a local Heroku double."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pulumi.runtime import rpc as pulumi_rpc

from infra.heroku_api import HerokuApiError, HerokuClient, parse_repo_digest
from infra.release import ContainerReleaseProvider

from .heroku_double import (
    API_ACCEPT,
    DOCKER_RELEASES,
    SCHEMA2,
    FakeHeroku,
    index_manifest,
    running_fake_heroku,
    schema2_manifest,
)

API_KEY = "hrku-0123456789abcdef0123456789abcdef"
APP = "acme-mlflow"
IMAGE_ID = "sha256:" + "c" * 64
OTHER_IMAGE_ID = "sha256:" + "d" * 64


@pytest.fixture
def heroku() -> Iterator[FakeHeroku]:
    with running_fake_heroku(API_KEY) as fake:
        fake.add_app(APP)
        yield fake


def provider_for(fake: FakeHeroku) -> ContainerReleaseProvider:
    return ContainerReleaseProvider(
        api_base_url=fake.base_url,
        registry_base_url=fake.base_url,
        poll_interval=0.01,
        retry_delay=0.01,
        max_retry_wait=5.0,
    )


def props(image_ref: str, api_key: str = API_KEY, **extra: Any) -> dict[str, Any]:
    return {
        "app_name": APP,
        "process_type": "web",
        "image_ref": image_ref,
        "api_key": api_key,
        "timeout_seconds": 10,
        **extra,
    }


def release_error(fake: FakeHeroku, image_ref: str, api_key: str = API_KEY) -> str:
    with pytest.raises(HerokuApiError) as raised:
        provider_for(fake).create(props(image_ref, api_key))
    message = str(raised.value)
    assert API_KEY not in message
    return message


def test_create_releases_the_image_id_not_the_manifest_digest(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    result = provider_for(heroku).create(props(image_ref))

    assert result.id == f"{APP}/web"
    assert result.outs is not None
    assert result.outs["image_id"] == IMAGE_ID
    assert result.outs["release_version"] == 3
    assert result.outs["image_ref"] == image_ref
    assert "api_key" not in result.outs  # never in the state's outputs
    assert API_KEY not in json.dumps(result.outs)
    assert heroku.formation_image[APP] == IMAGE_ID
    assert heroku.releases[APP][-1].status == "succeeded"

    (manifest_get,) = heroku.calls("GET", r"/v2/.*")
    _, digest = parse_repo_digest(image_ref)
    assert manifest_get.path == f"/v2/{APP}/web/manifests/{digest}"
    assert manifest_get.headers["Accept"] == SCHEMA2
    user_password = base64.b64decode(manifest_get.headers["Authorization"].split()[1]).decode()
    assert user_password == f"_:{API_KEY}"

    (patch,) = heroku.calls("PATCH", rf"/apps/{APP}/formation")
    assert patch.headers["Accept"] == DOCKER_RELEASES
    assert patch.headers["Authorization"] == f"Bearer {API_KEY}"
    assert patch.body == {"updates": [{"type": "web", "docker_image": IMAGE_ID}]}
    listings = heroku.calls("GET", rf"/apps/{APP}/releases")
    assert listings
    for listing in listings:
        assert listing.headers["Range"] == "version ..; max=1, order=desc"
        assert listing.headers["Accept"] == API_ACCEPT
    # The provider followed the new release by id until it was no longer pending.
    new_release = heroku.releases[APP][-1]
    assert heroku.calls("GET", rf"/apps/{APP}/releases/{new_release.id}")


def test_failed_release_fails_with_herokus_own_message(heroku: FakeHeroku) -> None:
    heroku.next_status = "failed"
    message = release_error(heroku, heroku.push(APP, schema2_manifest(IMAGE_ID)))
    assert "Heroku release v3 of app 'acme-mlflow' failed" in message
    assert heroku.failure_description in message
    assert "heroku releases:output 3 --app acme-mlflow" in message


def test_release_that_stays_pending_times_out(heroku: FakeHeroku) -> None:
    heroku.pending_reads = 10**6
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(image_ref, timeout_seconds=0.3))
    assert "did not finish within 0.3 s (v3 is still pending)" in str(raised.value)
    assert "heroku releases --app acme-mlflow" in str(raised.value)


def test_a_failing_api_cannot_stretch_the_release_wait(heroku: FakeHeroku) -> None:
    """The status reads share the release deadline: 5xx answers with growing retry waits
    (0.4, 0.8, 1.6 ... s) would take seconds; the wait ends at its 0.5 s instead."""
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    provider = ContainerReleaseProvider(
        api_base_url=heroku.base_url,
        registry_base_url=heroku.base_url,
        poll_interval=0.01,
        retry_delay=0.4,
        max_retry_wait=5.0,
    )
    heroku.pending_reads = 10**6
    # The listings succeed (the new release is found, pending); every read of it gets a 503.
    for _ in range(20):
        heroku.answer_next("GET", rf"/apps/{APP}/releases/[0-9a-f-]+", 503, {"id": "unavailable"})
    started = time.monotonic()
    with pytest.raises(HerokuApiError) as raised:
        provider.create(props(image_ref, timeout_seconds=0.5))
    elapsed = time.monotonic() - started
    assert "ran out of time while" in str(raised.value)
    assert "releaseTimeoutSeconds" in str(raised.value)
    assert elapsed < 2.0, elapsed
    assert heroku.calls("GET", rf"/apps/{APP}/releases/[0-9a-f-]+")  # it did retry reads


@pytest.mark.parametrize(
    ("media_type", "body", "expected"),
    [
        (
            "application/vnd.oci.image.index.v1+json",
            index_manifest("application/vnd.oci.image.index.v1+json"),
            "is an OCI image index (a multi-platform image, or one carrying provenance/SBOM",
        ),
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            index_manifest("application/vnd.docker.distribution.manifest.list.v2+json"),
            "is a Docker manifest list (a multi-platform image)",
        ),
        (
            "application/vnd.oci.image.manifest.v1+json",
            schema2_manifest(IMAGE_ID, "application/vnd.oci.image.manifest.v1+json"),
            "is an OCI image manifest",
        ),
    ],
)
def test_anything_but_a_schema2_manifest_is_refused_before_releasing(
    heroku: FakeHeroku, media_type: str, body: bytes, expected: str
) -> None:
    message = release_error(heroku, heroku.push(APP, body, media_type))
    assert expected in message
    assert "Heroku releases only single-platform Docker v2 schema 2 images" in message
    assert "containerd-snapshotter" in message
    assert not heroku.calls("PATCH", r".*")


def test_a_manifest_that_does_not_match_its_digest_is_refused(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    _, digest = parse_repo_digest(image_ref)
    heroku.manifests[(f"{APP}/web", digest)] = (SCHEMA2, schema2_manifest(OTHER_IMAGE_ID))
    message = release_error(heroku, image_ref)
    assert "refusing to release an image other than the one pushed" in message
    assert not heroku.calls("PATCH", r".*")


def test_wrong_api_key_gets_a_clear_401(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(image_ref, api_key="revoked-key-987654321"))
    message = str(raised.value)
    assert "Heroku answered 401 Unauthorized while reading the manifest" in message
    assert '"authentication required"' in message
    assert "heroku authorizations:create" in message
    assert "pulumi config set --secret heroku:apiKey" in message
    assert "revoked-key-987654321" not in message


def test_platform_api_401_403_404_422_carry_herokus_message(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    cases = [
        (401, {"id": "unauthorized", "message": "Invalid credentials provided."}, "revoked"),
        (403, {"id": "forbidden", "message": "You do not have access to the app."}, "deploy"),
        (404, {"id": "not_found", "message": "Couldn't find that app."}, "check the app name"),
        (
            422,
            {
                "id": "invalid_params",
                "message": "Docker images can only be released to apps on the container stack.",
            },
            "container stack",
        ),
    ]
    for status, body, hint in cases:
        heroku.answer_next("PATCH", rf"/apps/{APP}/formation", status, body)
        message = release_error(heroku, image_ref)
        assert f"Heroku answered {status}" in message
        assert "while updating the web formation of app 'acme-mlflow'" in message
        assert f'"{body["message"]}"' in message
        assert hint in message


def test_a_real_422_from_an_app_not_on_the_container_stack(heroku: FakeHeroku) -> None:
    heroku.add_app("buildpack-app", stack="heroku-24")
    image_ref = heroku.push("buildpack-app", schema2_manifest(IMAGE_ID))
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(image_ref, app_name="buildpack-app"))
    assert "only be released to apps on the container stack" in str(raised.value)


def test_unknown_app_is_a_clear_404(heroku: FakeHeroku) -> None:
    image_ref = heroku.push("missing-app", schema2_manifest(IMAGE_ID))
    with pytest.raises(HerokuApiError) as raised:
        provider_for(heroku).create(props(image_ref, app_name="missing-app"))
    assert "Heroku answered 404 Not Found while listing the releases of app 'missing-app'" in str(
        raised.value
    )
    assert "Couldn't find that app." in str(raised.value)


def test_rate_limit_is_retried_after_retry_after(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    limited = {"id": "rate_limit", "message": "Your account reached the API rate limit"}
    heroku.answer_next(
        "PATCH",
        rf"/apps/{APP}/formation",
        429,
        limited,
        {"Retry-After": "0", "RateLimit-Remaining": "0"},
    )
    heroku.answer_next("GET", r"/v2/.*", 503, {"errors": [{"code": "UNAVAILABLE", "message": "x"}]})
    result = provider_for(heroku).create(props(image_ref))
    assert result.outs is not None
    assert result.outs["image_id"] == IMAGE_ID
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 2
    assert len(heroku.calls("GET", r"/v2/.*")) == 2


def test_rate_limit_that_persists_fails_with_a_bounded_number_of_attempts(
    heroku: FakeHeroku,
) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    limited = {"id": "rate_limit", "message": "Your account reached the API rate limit"}
    for _ in range(10):
        heroku.answer_next(
            "PATCH",
            rf"/apps/{APP}/formation",
            429,
            limited,
            {"Retry-After": "0", "RateLimit-Remaining": "0"},
        )
    message = release_error(heroku, image_ref)
    assert "Heroku answered 429" in message
    assert "still limited after 5 attempts; RateLimit-Remaining: 0" in message
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 5


def test_a_retry_after_beyond_the_limit_fails_at_once(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    heroku.answer_next(
        "PATCH",
        rf"/apps/{APP}/formation",
        429,
        {"id": "rate_limit", "message": "Your account reached the API rate limit"},
        {"Retry-After": "3600", "RateLimit-Remaining": "0"},
    )
    message = release_error(heroku, image_ref)
    assert "it asked to wait 3600 s, more than 5 s" in message
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 1


def test_server_errors_are_retried_then_reported(heroku: FakeHeroku) -> None:
    image_ref = heroku.push(APP, schema2_manifest(IMAGE_ID))
    for _ in range(5):
        heroku.answer_next(
            "GET", rf"/apps/{APP}/releases", 503, {"id": "unavailable", "message": "Heroku is down"}
        )
    message = release_error(heroku, image_ref)
    assert "Heroku answered 503" in message
    assert "server error for 5 attempts" in message


def test_unreachable_heroku_is_reported_without_a_traceback_from_requests() -> None:
    client = HerokuClient(
        API_KEY, "http://127.0.0.1:9", "http://127.0.0.1:9", retry_delay=0.01, max_attempts=2
    )
    with pytest.raises(
        HerokuApiError, match=r"could not reach http://127.0.0.1:9/v2/.* after 2 attempts"
    ):
        client.image_id(f"{APP}/web", "sha256:" + "a" * 64)


def test_bad_image_references_are_refused(heroku: FakeHeroku) -> None:
    provider = provider_for(heroku)
    with pytest.raises(
        HerokuApiError, match=r"is not of the form registry\.heroku\.com/<app>/<process>@sha256"
    ):
        provider.create(props("docker.io/library/nginx:latest"))
    with pytest.raises(ValueError, match="was pushed to 'other-app/web', not to 'acme-mlflow/web'"):
        provider.create(props("registry.heroku.com/other-app/web@sha256:" + "a" * 64))
    with pytest.raises(HerokuApiError, match="no Heroku API key"):
        provider.create(props(heroku.push(APP, schema2_manifest(IMAGE_ID)), api_key=""))


# -- diff / update / delete ----------------------------------------------------------------------


def released(fake: FakeHeroku, image_id: str = IMAGE_ID) -> dict[str, Any]:
    image_ref = fake.push(APP, schema2_manifest(image_id))
    outs = provider_for(fake).create(props(image_ref)).outs
    assert outs is not None
    return outs


UNKNOWN = pulumi_rpc.UNKNOWN


def test_diff_same_image_is_no_change(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    before = len(heroku.requests)
    diff = provider_for(heroku).diff(f"{APP}/web", olds, props(olds["image_ref"]))
    assert diff.changes is False
    assert diff.replaces == []
    assert len(heroku.requests) == before  # no network call for an unchanged reference


def test_diff_new_manifest_with_the_same_image_id_is_no_change(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    # The same image pushed again with a differently formatted manifest: same config digest.
    same_image = heroku.push(APP, schema2_manifest(IMAGE_ID).replace(b"   ", b"  "))
    assert same_image != olds["image_ref"]
    diff = provider_for(heroku).diff(f"{APP}/web", olds, props(same_image))
    assert diff.changes is False


def test_diff_new_image_is_an_update_not_a_replacement(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    new_ref = heroku.push(APP, schema2_manifest(OTHER_IMAGE_ID))
    diff = provider_for(heroku).diff(f"{APP}/web", olds, props(new_ref))
    assert diff.changes is True
    assert diff.replaces == []
    # In a preview of a rebuilt image the reference is unknown: still an update.
    preview = provider_for(heroku).diff(f"{APP}/web", olds, props(UNKNOWN))
    assert preview.changes is True
    assert preview.replaces == []


def test_diff_another_app_is_a_replacement(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    diff = provider_for(heroku).diff(
        f"{APP}/web", olds, {**props(olds["image_ref"]), "app_name": "renamed"}
    )
    assert diff.changes is True
    assert diff.replaces == ["app_name"]


def test_update_releases_the_new_image(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    new_ref = heroku.push(APP, schema2_manifest(OTHER_IMAGE_ID))
    result = provider_for(heroku).update(f"{APP}/web", olds, props(new_ref))
    assert result.outs is not None
    assert result.outs["image_id"] == OTHER_IMAGE_ID
    assert result.outs["release_version"] == olds["release_version"] + 1
    assert heroku.formation_image[APP] == OTHER_IMAGE_ID
    assert "api_key" not in result.outs


def test_delete_changes_nothing_on_heroku(heroku: FakeHeroku) -> None:
    olds = released(heroku)
    before = len(heroku.requests)
    provider_for(heroku).delete(f"{APP}/web", olds)
    assert len(heroku.requests) == before
    assert heroku.formation_image[APP] == IMAGE_ID


def test_the_double_stays_quiet_when_a_client_drops_its_connection(
    heroku: FakeHeroku, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client that resets its connection mid-request (as one that gave up does) is not a
    fault of the double: no traceback on stderr, and the double keeps serving."""
    import socket
    import struct
    from urllib.parse import urlsplit

    address = urlsplit(heroku.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as client:
        client.sendall(b"GET /apps HTTP/1.1\r\nHost: api\r\n")  # headers never finished
        # SO_LINGER 0: close() sends a reset, so the double's read fails with ECONNRESET.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)  # the double's handler thread meets the reset
    api = HerokuClient(API_KEY, heroku.base_url, heroku.base_url, retry_delay=0.01)
    assert api.latest_release(APP) is not None  # still serving
    assert "Exception occurred" not in capfd.readouterr().err
