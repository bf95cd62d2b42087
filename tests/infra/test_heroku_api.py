"""HerokuClient against the local Heroku double: manifests, the formation PATCH, following a
release through its release phase, a failed release's output, errors, retries and deadlines."""

from __future__ import annotations

import base64
import socket
import struct
import time
from urllib.parse import urlsplit

import pytest

from infra import heroku_api
from infra.heroku_api import (
    HerokuApiError,
    HerokuClient,
    parse_repo_digest,
    printable_lines,
    scrub_secrets,
)

from .heroku_double import (
    API_ACCEPT,
    DOCKER_RELEASES,
    SCHEMA2,
    FakeHeroku,
    index_manifest,
    schema2_manifest,
)
from .heroku_double import DOUBLE_API_KEY as API_KEY
from .heroku_double import DOUBLE_APP as APP

IMAGE_ID = "sha256:" + "c" * 64
OTHER_IMAGE_ID = "sha256:" + "d" * 64
BOTH = {"web": IMAGE_ID, "release": IMAGE_ID}


def client_for(fake: FakeHeroku, retry_delay: float = 0.01) -> HerokuClient:
    return HerokuClient(
        API_KEY, fake.base_url, fake.base_url, retry_delay=retry_delay, max_retry_wait=5.0
    )


def release_error(fake: FakeHeroku, images: dict[str, str] = BOTH, timeout: float = 10) -> str:
    with pytest.raises(HerokuApiError) as raised:
        client_for(fake).release_images(APP, images, timeout=timeout, poll_interval=0.01)
    message = str(raised.value)
    assert API_KEY not in message
    return message


def pushed(fake: FakeHeroku, image_id: str = IMAGE_ID, process_type: str = "web") -> str:
    return parse_repo_digest(fake.push(APP, schema2_manifest(image_id), process_type=process_type))[
        1
    ]


# -- registry ------------------------------------------------------------------------------------


def test_the_image_id_is_the_config_digest_read_from_each_process_types_repository(
    heroku: FakeHeroku,
) -> None:
    web_digest = pushed(heroku)
    release_digest = pushed(heroku, process_type="release")
    api = client_for(heroku)
    assert api.image_id(f"{APP}/web", web_digest) == IMAGE_ID
    assert api.image_id(f"{APP}/release", release_digest) == IMAGE_ID
    web_get, release_get = heroku.calls("GET", r"/v2/.*")
    assert web_get.path == f"/v2/{APP}/web/manifests/{web_digest}"
    assert release_get.path == f"/v2/{APP}/release/manifests/{release_digest}"
    for call in (web_get, release_get):
        assert call.headers["Accept"] == SCHEMA2
        user_password = base64.b64decode(call.headers["Authorization"].split()[1]).decode()
        assert user_password == f"_:{API_KEY}"
    # A manifest is only where it was pushed: the release type's repository is its own.
    only_web = pushed(heroku, OTHER_IMAGE_ID)
    with pytest.raises(HerokuApiError, match="404 Not Found while reading the manifest"):
        api.image_id(f"{APP}/release", only_web)


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
def test_anything_but_a_schema2_manifest_is_refused(
    heroku: FakeHeroku, media_type: str, body: bytes, expected: str
) -> None:
    _, digest = parse_repo_digest(heroku.push(APP, body, media_type))
    with pytest.raises(HerokuApiError) as raised:
        client_for(heroku).image_id(f"{APP}/web", digest)
    message = str(raised.value)
    assert expected in message
    assert "Heroku releases only single-platform Docker v2 schema 2 images" in message
    assert "containerd-snapshotter" in message


def test_a_manifest_that_does_not_match_its_digest_is_refused(heroku: FakeHeroku) -> None:
    digest = pushed(heroku)
    heroku.manifests[(f"{APP}/web", digest)] = (SCHEMA2, schema2_manifest(OTHER_IMAGE_ID))
    with pytest.raises(HerokuApiError, match="refusing to release an image other than the one"):
        client_for(heroku).image_id(f"{APP}/web", digest)


def test_wrong_api_key_gets_a_clear_401(heroku: FakeHeroku) -> None:
    digest = pushed(heroku)
    api = HerokuClient("revoked-key-987654321", heroku.base_url, heroku.base_url)
    with pytest.raises(HerokuApiError) as raised:
        api.image_id(f"{APP}/web", digest)
    message = str(raised.value)
    assert "Heroku answered 401 Unauthorized while reading the manifest" in message
    assert '"authentication required"' in message
    assert "heroku authorizations:create" in message
    assert "pulumi config set --secret heroku:apiKey" in message
    assert "revoked-key-987654321" not in message


def test_bad_image_references_are_refused() -> None:
    with pytest.raises(
        HerokuApiError, match=r"is not of the form registry\.heroku\.com/<app>/<process>@sha256"
    ):
        parse_repo_digest("docker.io/library/nginx:latest")
    with pytest.raises(HerokuApiError, match="no Heroku API key"):
        HerokuClient("")


# -- the formation PATCH and the release it creates ----------------------------------------------


def test_web_and_release_are_released_in_one_patch_then_followed_to_success(
    heroku: FakeHeroku,
) -> None:
    heroku.pending_reads = 5  # a release phase that takes several polls
    release = client_for(heroku).release_images(APP, BOTH, timeout=10, poll_interval=0.01)

    assert (release.version, release.status) == (3, "succeeded")
    (patch,) = heroku.calls("PATCH", rf"/apps/{APP}/formation")
    assert patch.headers["Accept"] == DOCKER_RELEASES
    assert patch.headers["Authorization"] == f"Bearer {API_KEY}"
    assert patch.headers["Content-Type"] == "application/json"
    assert patch.body == {
        "updates": [
            {"type": "web", "docker_image": IMAGE_ID},
            {"type": "release", "docker_image": IMAGE_ID},
        ]
    }
    assert heroku.formation_image[(APP, "web")] == IMAGE_ID
    assert heroku.formation_image[(APP, "release")] == IMAGE_ID
    for listing in heroku.calls("GET", rf"/apps/{APP}/releases"):
        assert listing.headers["Range"] == "version ..; max=1, order=desc"
        assert listing.headers["Accept"] == API_ACCEPT
    # It followed the new release by id through every pending read of its release phase.
    new_release = heroku.releases[APP][-1]
    assert new_release.output_stream_url is not None
    assert len(heroku.calls("GET", rf"/apps/{APP}/releases/{new_release.id}")) >= 5
    # A release that succeeds needs no look at its output.
    assert not heroku.calls("GET", r"/streams/.*")


def test_only_the_web_process_without_a_release_phase(heroku: FakeHeroku) -> None:
    release = client_for(heroku).release_images(
        APP, {"web": IMAGE_ID}, timeout=10, poll_interval=0.01
    )
    assert release.status == "succeeded"
    assert release.output_stream_url is None
    (patch,) = heroku.calls("PATCH", rf"/apps/{APP}/formation")
    assert patch.body == {"updates": [{"type": "web", "docker_image": IMAGE_ID}]}
    assert (APP, "release") not in heroku.formation_image


SECRET_LINES = [
    f"connecting with key {API_KEY}",
    "DATABASE_URL=postgres://u8s7x:p4ssw0rd-xyz@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d9a",
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "aws_access_key_id: AKIAIOSFODNN7EXAMPLE",
    "Authorization: Bearer abcdef0123456789abcdef",
    "MLFLOW_TRACKING_PASSWORD: 'hunter2 long password'",
    "alembic.util.exc.CommandError: Can't locate revision identified by 'ffffffffffff'",
]
SECRET_VALUES = [
    API_KEY,
    "p4ssw0rd-xyz",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAIOSFODNN7EXAMPLE",
    "abcdef0123456789abcdef",
    "hunter2",
]


def test_a_failed_release_shows_the_end_of_its_release_phase_output_without_secrets(
    heroku: FakeHeroku,
) -> None:
    heroku.next_status = "failed"
    heroku.next_output = [f"preparing step {n}" for n in range(100)] + SECRET_LINES
    message = release_error(heroku)

    assert "Heroku release v3 of app 'acme-mlflow' failed" in message
    assert f'"{heroku.failure_description}"' in message
    assert "release phase (the `release` process) exited non-zero" in message
    assert "the previous release keeps serving" in message
    assert "Read the output" in message
    assert "fix the cause, then run `pulumi up` again" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message
    # The end of the output, bounded, in order: the last line is the error.
    assert f"Last {heroku_api.OUTPUT_LINES} lines of the release phase output:" in message
    shown = [line.removeprefix("  | ") for line in message.splitlines() if line.startswith("  | ")]
    assert len(shown) == heroku_api.OUTPUT_LINES
    assert shown[-1] == SECRET_LINES[-1]
    assert "preparing step 99" in shown
    assert "preparing step 50" not in shown
    # Secret-looking values never appear; what is around them stays readable.
    for value in SECRET_VALUES:
        assert value not in message, value
    assert (
        "DATABASE_URL=postgres://u8s7x:<redacted>@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d9a"
        in (shown)
    )
    assert "AWS_SECRET_ACCESS_KEY=<redacted>" in shown
    assert "Authorization: <redacted> <redacted>" in shown
    assert "connecting with key <redacted>" in shown
    # The stream is read without the API key, and its capability URL is never printed.
    (stream_get,) = heroku.calls("GET", r"/streams/.*")
    assert "Authorization" not in stream_get.headers
    assert stream_get.headers["Accept"] == "text/plain"
    assert stream_get.path not in message
    assert heroku.formation_image[(APP, "web")] == IMAGE_ID  # the double records the attempt


@pytest.mark.parametrize(
    ("stream_mode", "problem"),
    [
        ("missing", "the output stream does not exist (404)"),
        ("error", "the output stream answered 500"),
    ],
)
def test_a_failed_release_whose_output_cannot_be_read_still_says_what_to_do(
    heroku: FakeHeroku, stream_mode: str, problem: str
) -> None:
    heroku.next_status = "failed"
    heroku.stream_mode = stream_mode
    message = release_error(heroku)
    assert "Heroku release v3 of app 'acme-mlflow' failed" in message
    assert "the previous release keeps serving" in message
    assert f"Its output could not be read here ({problem})" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message
    assert "heroku logs --app acme-mlflow --dyno release" in message
    assert "run `pulumi up` again" in message
    # Retried a bounded number of times, as the CLI retries a stream that is not there yet.
    assert len(heroku.calls("GET", r"/streams/.*")) == 3


def test_an_unreachable_or_empty_output_stream_is_reported_too(heroku: FakeHeroku) -> None:
    api = client_for(heroku)
    unreachable = api.release_output("http://127.0.0.1:9/streams/x")
    assert unreachable.lines == []
    assert unreachable.problem == "reading the output stream failed: ConnectionError"
    assert api.release_output("ftp://example.com/x").problem is not None
    heroku.next_output = []
    api.release_images(APP, BOTH, timeout=10, poll_interval=0.01)
    url = heroku.releases[APP][-1].output_stream_url
    assert url is not None
    assert api.release_output(url).problem == "the output stream was empty"


def test_a_failed_release_without_a_release_phase_says_what_to_do(heroku: FakeHeroku) -> None:
    heroku.next_status = "failed"
    message = release_error(heroku, {"web": IMAGE_ID})
    assert "Heroku release v3 of app 'acme-mlflow' failed" in message
    assert "the previous release keeps serving" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message
    assert not heroku.calls("GET", r"/streams/.*")


def test_reading_an_endless_output_stream_stops_at_the_time_bound(
    heroku: FakeHeroku, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heroku_api, "OUTPUT_SECONDS", 0.5)
    api = client_for(heroku)
    api.release_images(APP, BOTH, timeout=10, poll_interval=0.01)
    url = heroku.releases[APP][-1].output_stream_url
    assert url is not None
    heroku.stream_mode = "endless"
    started = time.monotonic()
    output = api.release_output(url)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert output.cut_short
    assert output.lines
    assert output.lines[-1].startswith("still running, line ")


def test_reading_a_huge_output_stops_at_the_size_bound_and_keeps_lines_short(
    heroku: FakeHeroku, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heroku_api, "OUTPUT_MAX_BYTES", 256 * 1024)
    heroku.next_output = [f"{n:07d} " + "x" * 1000 for n in range(2000)]  # ~2 MB
    api = client_for(heroku)
    api.release_images(APP, BOTH, timeout=10, poll_interval=0.01)
    url = heroku.releases[APP][-1].output_stream_url
    assert url is not None
    output = api.release_output(url)
    assert output.cut_short
    assert len(output.lines) == heroku_api.OUTPUT_LINES
    assert all(len(line) == heroku_api.OUTPUT_LINE_CHARS for line in output.lines)
    # Lines from about the first 256 KiB (what was read, in chunks of 8 KiB), none later.
    last = int(output.lines[-1].split()[0])
    assert 250 < last < 270, last


def test_a_release_phase_still_pending_at_the_deadline_names_the_release(
    heroku: FakeHeroku,
) -> None:
    heroku.pending_reads = 10**6
    message = release_error(heroku, timeout=0.3)
    assert "did not finish within 0.3 s (v3 is still pending: its release phase may still be" in (
        message
    )
    assert "the previous release keeps serving" in message
    assert "heroku releases:output 3 --app acme-mlflow" in message
    assert "heroku releases --app acme-mlflow" in message
    assert "releaseTimeoutSeconds" in message


def test_no_new_release_by_the_deadline_says_so(heroku: FakeHeroku) -> None:
    # A listing that keeps showing the release from before the PATCH.
    for _ in range(200):
        heroku.answer_next(
            "GET",
            rf"/apps/{APP}/releases",
            206,
            [{"id": heroku.releases[APP][-1].id, "version": 2, "status": "succeeded"}],
        )
    message = release_error(heroku, timeout=0.3)
    assert "did not finish within 0.3 s (no new release appeared)" in message


def test_a_failing_api_cannot_stretch_the_release_wait(heroku: FakeHeroku) -> None:
    """The status reads share the release deadline: 5xx answers with growing retry waits
    (0.4, 0.8, 1.6 ... s) would take seconds; the wait ends at its 0.5 s instead."""
    heroku.pending_reads = 10**6
    # The listings succeed (the new release is found, pending); every read of it gets a 503.
    for _ in range(20):
        heroku.answer_next("GET", rf"/apps/{APP}/releases/[0-9a-f-]+", 503, {"id": "unavailable"})
    started = time.monotonic()
    with pytest.raises(HerokuApiError) as raised:
        client_for(heroku, retry_delay=0.4).release_images(
            APP, BOTH, timeout=0.5, poll_interval=0.01
        )
    elapsed = time.monotonic() - started
    assert "ran out of time while" in str(raised.value)
    assert "releaseTimeoutSeconds" in str(raised.value)
    assert elapsed < 2.0, elapsed
    assert heroku.calls("GET", rf"/apps/{APP}/releases/[0-9a-f-]+")  # it did retry reads


# -- errors and retries --------------------------------------------------------------------------


def test_platform_api_401_403_404_422_carry_herokus_message(heroku: FakeHeroku) -> None:
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
        message = release_error(heroku)
        assert f"Heroku answered {status}" in message
        assert (
            f"while updating the web and release formation of app 'acme-mlflow' to image "
            f"{IMAGE_ID}" in message
        )
        assert f'"{body["message"]}"' in message
        assert hint in message


def test_a_real_422_from_an_app_not_on_the_container_stack(heroku: FakeHeroku) -> None:
    heroku.add_app("buildpack-app", stack="heroku-24")
    with pytest.raises(HerokuApiError, match="only be released to apps on the container stack"):
        client_for(heroku).release_images("buildpack-app", BOTH, timeout=10)


def test_unknown_app_is_a_clear_404(heroku: FakeHeroku) -> None:
    with pytest.raises(HerokuApiError) as raised:
        client_for(heroku).release_images("missing-app", BOTH, timeout=10)
    assert "Heroku answered 404 Not Found while listing the releases of app 'missing-app'" in str(
        raised.value
    )
    assert "Couldn't find that app." in str(raised.value)


def test_rate_limit_is_retried_after_retry_after(heroku: FakeHeroku) -> None:
    limited = {"id": "rate_limit", "message": "Your account reached the API rate limit"}
    heroku.answer_next(
        "PATCH",
        rf"/apps/{APP}/formation",
        429,
        limited,
        {"Retry-After": "0", "RateLimit-Remaining": "0"},
    )
    heroku.answer_next("GET", r"/v2/.*", 503, {"errors": [{"code": "UNAVAILABLE", "message": "x"}]})
    api = client_for(heroku)
    assert api.image_id(f"{APP}/web", pushed(heroku)) == IMAGE_ID
    assert api.release_images(APP, BOTH, timeout=10, poll_interval=0.01).status == "succeeded"
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 2
    assert len(heroku.calls("GET", r"/v2/.*")) == 2


def test_rate_limit_that_persists_fails_with_a_bounded_number_of_attempts(
    heroku: FakeHeroku,
) -> None:
    limited = {"id": "rate_limit", "message": "Your account reached the API rate limit"}
    for _ in range(10):
        heroku.answer_next(
            "PATCH",
            rf"/apps/{APP}/formation",
            429,
            limited,
            {"Retry-After": "0", "RateLimit-Remaining": "0"},
        )
    message = release_error(heroku)
    assert "Heroku answered 429" in message
    assert "still limited after 5 attempts; RateLimit-Remaining: 0" in message
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 5


def test_a_retry_after_beyond_the_limit_fails_at_once(heroku: FakeHeroku) -> None:
    heroku.answer_next(
        "PATCH",
        rf"/apps/{APP}/formation",
        429,
        {"id": "rate_limit", "message": "Your account reached the API rate limit"},
        {"Retry-After": "3600", "RateLimit-Remaining": "0"},
    )
    message = release_error(heroku)
    assert "it asked to wait 3600 s, more than 5 s" in message
    assert len(heroku.calls("PATCH", rf"/apps/{APP}/formation")) == 1


def test_server_errors_are_retried_then_reported(heroku: FakeHeroku) -> None:
    for _ in range(5):
        heroku.answer_next(
            "GET", rf"/apps/{APP}/releases", 503, {"id": "unavailable", "message": "Heroku is down"}
        )
    message = release_error(heroku)
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


def test_herokus_messages_are_scrubbed_too(heroku: FakeHeroku) -> None:
    heroku.answer_next(
        "PATCH",
        rf"/apps/{APP}/formation",
        422,
        {"id": "invalid_params", "message": f"bad token={API_KEY} password: hunter2-x"},
    )
    message = release_error(heroku)
    assert "hunter2-x" not in message
    assert "token=<redacted>" in message


# -- the scrubber and the output's lines ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://user:s3cr3t@host:5432/db", "postgres://user:<redacted>@host:5432/db"),
        ("redis://:s3cr3t@host:6379", "redis://:<redacted>@host:6379"),
        ("PGPASSWORD=s3cr3t psql", "PGPASSWORD=<redacted> psql"),
        ('{"password": "s3 cr3t"}', '{"password": <redacted>}'),
        ("export HEROKU_API_KEY=abc123", "export HEROKU_API_KEY=<redacted>"),
        ("X-Auth: Basic dXNlcjpzM2NyM3Q=", "X-Auth: Basic <redacted>"),
        ("key AKIAIOSFODNN7EXAMPLE used", "key <redacted> used"),
        ("client_secret: 'a b'", "client_secret: <redacted>"),
        # Ordinary output stays as it is.
        ("migrated to 3a1b2c4d5e6f", "migrated to 3a1b2c4d5e6f"),
        ("image sha256:" + "c" * 64, "image sha256:" + "c" * 64),
        ("https://example.com/path?x=1", "https://example.com/path?x=1"),
        ("the password is wrong", "the password is wrong"),
    ],
)
def test_secret_looking_values_are_replaced(text: str, expected: str) -> None:
    assert scrub_secrets(text) == expected


def test_known_secrets_are_replaced_wherever_they_appear() -> None:
    assert scrub_secrets("a-known-value and xa-known-valuex", ["a-known-value", ""]) == (
        "<redacted> and x<redacted>x"
    )


def test_output_lines_are_shown_as_a_terminal_would() -> None:
    text = "\x1b[32mok\x1b[0m\nprogress 10%\rprogress 100%\r\n\n  \nbell\x07 here\ttab\n"
    assert printable_lines(text) == ["ok", "progress 100%", "bell here\ttab"]


def test_the_double_stays_quiet_when_a_client_drops_its_connection(
    heroku: FakeHeroku, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client that resets its connection mid-request (as one that gave up does) is not a
    fault of the double: no traceback on stderr, and the double keeps serving."""
    address = urlsplit(heroku.base_url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=5) as client:
        client.sendall(b"GET /apps HTTP/1.1\r\nHost: api\r\n")  # headers never finished
        # SO_LINGER 0: close() sends a reset, so the double's read fails with ECONNRESET.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)  # the double's handler thread meets the reset
    assert client_for(heroku).latest_release(APP) is not None  # still serving
    assert "Exception occurred" not in capfd.readouterr().err
