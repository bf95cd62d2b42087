"""A small client for what `heroku container:release` does: Heroku's registry and Platform API.

Read each process type's pushed manifest by digest, take its config digest (the image ID Heroku
releases), PATCH the app's formation with all of them at once, then follow the new release until
it succeeds or fails (heroku/cli `container/release.ts`). A failed release's error carries the end
of its release phase output, read from the release's `output_stream_url`. Errors say what was
being done, what Heroku answered (its own message) and what to do; the API key and anything that
looks like a secret never appear in them. Rate limits (429) and server errors (5xx) are retried a
bounded number of times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import urllib3

API_BASE_URL: Final = "https://api.heroku.com"
REGISTRY_BASE_URL: Final = "https://registry.heroku.com"

API_ACCEPT: Final = "application/vnd.heroku+json; version=3"
DOCKER_RELEASES_ACCEPT: Final = "application/vnd.heroku+json; version=3.docker-releases"

SCHEMA2_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA2_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
REFUSED_MANIFESTS: Final = {
    "application/vnd.docker.distribution.manifest.list.v2+json": (
        "a Docker manifest list (a multi-platform image)"
    ),
    "application/vnd.oci.image.index.v1+json": (
        "an OCI image index (a multi-platform image, or one carrying provenance/SBOM attestations)"
    ),
    "application/vnd.oci.image.manifest.v1+json": "an OCI image manifest",
    "application/vnd.docker.distribution.manifest.v1+json": "a Docker schema 1 manifest",
    "application/vnd.docker.distribution.manifest.v1+prettyjws": "a Docker schema 1 manifest",
}
MANIFEST_FIX: Final = (
    "Heroku releases only single-platform Docker v2 schema 2 images. Build for linux/amd64 with "
    "Docker Engine's classic image store (daemon.json: "
    '{"features": {"containerd-snapshotter": false}}), without provenance or SBOM attestations '
    "(buildx: --provenance=false --sbom=false), then push again"
)

# Heroku runs the image released as this process type in a one-off dyno (DYNO=release.<n>) before
# a release's other dynos boot; a non-zero exit fails the release (Dev Center: "Release Phase").
RELEASE_PHASE_PROCESS_TYPE: Final = "release"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RETRIED_STATUSES = (500, 502, 503, 504)
_MESSAGE_LIMIT = 500
_MIN_REQUEST_SECONDS = 1.0  # a request near the deadline still gets this long

# Reading a failed release's output: bounded in time and size, only its end is kept and shown.
OUTPUT_SECONDS: Final = 20.0
OUTPUT_MAX_BYTES: Final = 4 * 1024 * 1024
OUTPUT_KEEP_BYTES: Final = 64 * 1024
OUTPUT_LINES: Final = 30
OUTPUT_LINE_CHARS: Final = 300
# The stream answers 404 until the release command has started; the CLI retries that.
_OUTPUT_ATTEMPTS = 3
_REDACTED = "<redacted>"
# Values that look like secrets, whatever printed them: credentials in URLs, NAME=value or
# "Name: value" where the name says password/secret/token/key, bearer/basic tokens, AWS key IDs.
_SECRET_PATTERNS: Final = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + _REDACTED),
    (re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + _REDACTED + "@"),
    (
        re.compile(
            r"(?i)\b([A-Z0-9_.-]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API[_-]?KEY|ACCESS[_-]?KEY"
            r"|PRIVATE[_-]?KEY|CREDENTIALS?|AUTHORIZATION)[A-Z0-9_.-]*)([\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
        ),
        r"\1\2" + _REDACTED,
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), _REDACTED),
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class HerokuApiError(Exception):
    """A Heroku API or registry call failed; the message is safe to print."""


@dataclass(frozen=True)
class Release:
    id: str
    version: int
    status: str
    description: str
    # Where the release command's output streams (text/plain or text/event-stream); None when
    # the app has no release phase. A capability URL: never printed.
    output_stream_url: str | None = None


@dataclass(frozen=True)
class ReleaseOutput:
    """The end of a release phase's output, scrubbed; `problem` says why there is none."""

    lines: list[str] = field(default_factory=list)
    problem: str | None = None
    cut_short: bool = False


def scrub_secrets(text: str, known_secrets: Iterable[str] = ()) -> str:
    """`text` with each known secret, and every value that looks like a secret, replaced."""
    for secret in sorted((s for s in known_secrets if s), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def printable_lines(text: str) -> list[str]:
    """Lines as a terminal would show them: colour codes dropped, a carriage return starts the
    line over (progress bars), other control characters removed, blank lines skipped."""
    lines = []
    for raw in text.split("\n"):
        shown = _ANSI_ESCAPE.sub("", raw.rstrip("\r")).rsplit("\r", 1)[-1]
        line = _CONTROL.sub("", shown).rstrip()
        if line.strip():
            lines.append(line)
    return lines


def parse_repo_digest(repo_digest: str) -> tuple[str, str]:
    """`registry.heroku.com/<app>/<process>@sha256:...` -> ("<app>/<process>", digest)."""
    name, sep, digest = repo_digest.partition("@")
    registry, _, repository = name.partition("/")
    if not sep or not _DIGEST.fullmatch(digest) or registry != "registry.heroku.com":
        raise HerokuApiError(
            f"image reference {repo_digest!r} is not of the form "
            "registry.heroku.com/<app>/<process>@sha256:<64 hex digits>"
        )
    return repository, digest


class HerokuClient:
    def __init__(
        self,
        api_key: str,
        api_base_url: str = API_BASE_URL,
        registry_base_url: str = REGISTRY_BASE_URL,
        *,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        max_retry_wait: float = 60.0,
        request_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        if not api_key:
            raise HerokuApiError(
                "no Heroku API key: set it with `pulumi config set --secret heroku:apiKey`"
            )
        self._api_key = api_key
        self._api = api_base_url.rstrip("/")
        self._registry = registry_base_url.rstrip("/")
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_wait = max_retry_wait
        self._timeout = request_timeout
        self._sleep = sleep
        self._clock = clock
        self._session = session or requests.Session()

    # -- HTTP plumbing -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text.replace(self._api_key, "<api key>"))[:_MESSAGE_LIMIT]

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        body: Any = None,
        deadline: float | None = None,
    ) -> requests.Response:
        """One API call with retries. With a deadline (a ``clock`` time) no wait between
        attempts goes past it, and the connect and read timeouts shrink to the time left
        (requests applies them per socket operation, so a trickling answer can overrun it)."""
        delay = self._retry_delay
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, max(deadline - self._clock(), _MIN_REQUEST_SECONDS))
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=None if body is None else json.dumps(body),
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as error:
                if last:
                    raise HerokuApiError(
                        f"could not reach {url} while {what} after {attempt} attempts: "
                        f"{type(error).__name__}"
                    ) from None
                self._wait(delay, deadline, what)
                delay = min(delay * 2, self._max_retry_wait)
                continue
            if response.status_code == 429 and not last:
                wait = _retry_after(response, delay)
                if wait > self._max_retry_wait:
                    raise HerokuApiError(self._describe(response, what, retry_after=wait))
                self._wait(wait, deadline, what)
                delay = min(delay * 2, self._max_retry_wait)
                continue
            if response.status_code in _RETRIED_STATUSES and not last:
                self._wait(delay, deadline, what)
                delay = min(delay * 2, self._max_retry_wait)
                continue
            if response.status_code >= 300:
                raise HerokuApiError(self._describe(response, what, attempts=attempt))
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, seconds: float, deadline: float | None, what: str) -> None:
        """Sleep before a retry, unless that would end past the deadline."""
        if deadline is not None and self._clock() + seconds > deadline:
            raise HerokuApiError(
                f"ran out of time while {what}: Heroku's API kept failing or throttling until "
                "the release timeout (releaseTimeoutSeconds)"
            )
        self._sleep(seconds)

    def _describe(
        self,
        response: requests.Response,
        what: str,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> str:
        status = response.status_code
        message = self._scrub(_heroku_message(response))
        said = f"Heroku answered {status} {response.reason or ''}".rstrip()
        said += f" while {what}" + (f': "{message}"' if message else "")
        if status == 401:
            hint = (
                "the API key is missing, wrong or revoked; create one with "
                "`heroku authorizations:create` and store it with "
                "`pulumi config set --secret heroku:apiKey`"
            )
        elif status == 403:
            hint = "the API key's account lacks access to this app (it needs deploy rights)"
        elif status == 404:
            hint = "check the app name, and that the image was pushed to Heroku's registry"
        elif status == 422:
            hint = "Heroku refused the request as invalid (is the app on the container stack?)"
        elif status == 429:
            remaining = response.headers.get("RateLimit-Remaining", "unknown")
            waited = (
                f"it asked to wait {retry_after:.0f} s, more than {self._max_retry_wait:.0f} s"
                if retry_after is not None
                else f"still limited after {attempts} attempts"
            )
            hint = (
                f"the account hit Heroku's API rate limit ({waited}; RateLimit-Remaining: "
                f"{remaining}); wait a few minutes and run `pulumi up` again"
            )
        elif status >= 500:
            hint = f"Heroku had a server error for {attempts} attempts; try again later"
        else:
            hint = "unexpected answer"
        return f"{said}; {hint}"

    def _api_headers(self, accept: str = API_ACCEPT) -> dict[str, str]:
        return {
            "Accept": accept,
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "User-Agent": "mlflow-heroku-release",
        }

    # -- registry ------------------------------------------------------------------------------

    def image_id(self, repository: str, digest: str) -> str:
        """The config digest (image ID) of the schema 2 manifest `repository@digest`."""
        if not _DIGEST.fullmatch(digest):
            raise HerokuApiError(f"{digest!r} is not a sha256 digest")
        token = base64.b64encode(f"_:{self._api_key}".encode()).decode()
        url = f"{self._registry}/v2/{repository}/manifests/{digest}"
        response = self._request(
            "GET",
            url,
            f"reading the manifest {repository}@{digest} from Heroku's registry",
            {"Accept": SCHEMA2_MANIFEST, "Authorization": f"Basic {token}"},
        )
        where = f"registry.heroku.com/{repository}@{digest}"
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            manifest = json.loads(response.content)
        except ValueError:
            raise HerokuApiError(f"{where}: the registry's answer is not JSON") from None
        if not isinstance(manifest, dict):
            raise HerokuApiError(f"{where}: the registry's answer is not a manifest object")
        media_type = str(manifest.get("mediaType") or content_type)
        if media_type in REFUSED_MANIFESTS or manifest.get("schemaVersion") == 1:
            kind = REFUSED_MANIFESTS.get(media_type, "a Docker schema 1 manifest")
            raise HerokuApiError(f"{where} is {kind}. {MANIFEST_FIX}")
        if media_type != SCHEMA2_MANIFEST:
            raise HerokuApiError(f"{where} has media type {media_type!r}. {MANIFEST_FIX}")
        actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if actual != digest:
            raise HerokuApiError(
                f"{where}: the registry returned a manifest whose digest is {actual}; "
                "refusing to release an image other than the one pushed"
            )
        config = manifest.get("config")
        if not isinstance(config, dict) or not _DIGEST.fullmatch(str(config.get("digest"))):
            raise HerokuApiError(f"{where}: the manifest has no sha256 config digest")
        if config.get("mediaType") != SCHEMA2_CONFIG:
            raise HerokuApiError(
                f"{where}: its config has media type {config.get('mediaType')!r}, "
                f"not {SCHEMA2_CONFIG!r}. {MANIFEST_FIX}"
            )
        return str(config["digest"])

    # -- Platform API --------------------------------------------------------------------------

    def latest_release(self, app: str, deadline: float | None = None) -> Release | None:
        response = self._request(
            "GET",
            f"{self._api}/apps/{app}/releases",
            f"listing the releases of app {app!r}",
            {**self._api_headers(), "Range": "version ..; max=1, order=desc"},
            deadline=deadline,
        )
        releases = response.json()
        if not isinstance(releases, list):
            raise HerokuApiError(f"listing the releases of app {app!r}: not a JSON list")
        return _release(releases[0]) if releases else None

    def release_by_id(self, app: str, release_id: str, deadline: float | None = None) -> Release:
        response = self._request(
            "GET",
            f"{self._api}/apps/{app}/releases/{release_id}",
            f"reading release {release_id} of app {app!r}",
            self._api_headers(),
            deadline=deadline,
        )
        return _release(response.json())

    def release_images(
        self,
        app: str,
        images: Mapping[str, str],
        timeout: float,
        poll_interval: float = 3.0,
    ) -> Release:
        """PATCH the formation so each process type in `images` runs its image ID, in one
        request as `heroku container:release web release` does, then wait for the release it
        creates to finish (its release phase first, when `release` is among the types)."""
        if not images:
            raise ValueError("no process type to release")
        types = " and ".join(images)
        ids = set(images.values())
        target = (
            f"image {next(iter(ids))}"
            if len(ids) == 1
            else "images " + ", ".join(f"{kind}={image}" for kind, image in images.items())
        )
        before = self.latest_release(app)
        previous_version = before.version if before is not None else 0
        self._request(
            "PATCH",
            f"{self._api}/apps/{app}/formation",
            f"updating the {types} formation of app {app!r} to {target}",
            self._api_headers(DOCKER_RELEASES_ACCEPT),
            body={
                "updates": [{"type": kind, "docker_image": image} for kind, image in images.items()]
            },
        )
        # The status reads share the deadline, so a failing or throttling API cannot stretch
        # the wait past it by its own retries.
        deadline = self._clock() + timeout
        release: Release | None = None
        while True:
            if release is None:
                latest = self.latest_release(app, deadline)
                if latest is not None and latest.version > previous_version:
                    release = latest
            else:
                release = self.release_by_id(app, release.id, deadline)
            if release is not None and release.status == "succeeded":
                return release
            if release is not None and release.status == "failed":
                raise HerokuApiError(self._failure_message(app, release))
            if self._clock() >= deadline:
                raise HerokuApiError(
                    self._timeout_message(app, types, target, timeout, release, images)
                )
            self._sleep(poll_interval)

    def _failure_message(self, app: str, release: Release) -> str:
        version = release.version
        said = self._scrub(release.description)
        message = f"Heroku release v{version} of app {app!r} failed" + (
            f': "{said}"' if said else ""
        )
        if release.output_stream_url is None:
            return (
                f"{message}. Heroku did not switch to it: the previous release keeps serving. "
                f"See `heroku releases:output {version} --app {app}` and "
                f"`heroku logs --app {app}`, fix the cause, then run `pulumi up` again."
            )
        message += (
            f". Its release phase (the `{RELEASE_PHASE_PROCESS_TYPE}` process) exited non-zero "
            "or was stopped, so Heroku did not switch to it: the previous release keeps "
            "serving."
        )
        output = self.release_output(release.output_stream_url)
        if output.lines:
            heading = f"Last {len(output.lines)} lines of the release phase output"
            if output.cut_short:
                heading += " (read cut short: the output was too long or too slow)"
            shown = "\n".join(f"  | {line}" for line in output.lines)
            return (
                f"{message}\n{heading}:\n{shown}\n"
                f"Read the output (all of it: `heroku releases:output {version} --app {app}`), "
                "fix the cause, then run `pulumi up` again."
            )
        return (
            f"{message} Its output could not be read here ({output.problem}): read it with "
            f"`heroku releases:output {version} --app {app}` (an image without curl leaves "
            f"it in the app's log only: `heroku logs --app {app} --dyno "
            f"{RELEASE_PHASE_PROCESS_TYPE}`), fix the cause, then run `pulumi up` again."
        )

    def _timeout_message(
        self,
        app: str,
        types: str,
        target: str,
        timeout: float,
        release: Release | None,
        images: Mapping[str, str],
    ) -> str:
        prefix = (
            f"the release of {target} ({types}) to app {app!r} did not finish within {timeout:g} s"
        )
        if release is None:
            return (
                f"{prefix} (no new release appeared); see `heroku releases --app {app}`, then "
                "run `pulumi up` again"
            )
        state = f"v{release.version} is still {release.status}"
        if release.status == "pending" and (
            RELEASE_PHASE_PROCESS_TYPE in images or release.output_stream_url is not None
        ):
            return (
                f"{prefix} ({state}: its release phase may still be running). Until it "
                "succeeds the previous release keeps serving. Follow it with "
                f"`heroku releases:output {release.version} --app {app}`; once "
                f"`heroku releases --app {app}` shows it finished, run `pulumi up` again "
                "(a longer wait: releaseTimeoutSeconds)"
            )
        return f"{prefix} ({state}); see `heroku releases --app {app}`, then run `pulumi up` again"

    def release_output(self, url: str) -> ReleaseOutput:
        """The end of a release command's output, read from the release's `output_stream_url`
        for at most OUTPUT_SECONDS and OUTPUT_MAX_BYTES, secrets scrubbed. The URL is Heroku's
        own capability URL for the stream: no Authorization header goes there (the CLI sends
        none either), and the URL never appears in a message."""
        if urlsplit(url).scheme not in ("https", "http"):
            return ReleaseOutput(problem="Heroku gave an output URL that is not HTTP(S)")
        deadline = self._clock() + OUTPUT_SECONDS
        problem = "no answer"
        for attempt in range(1, _OUTPUT_ATTEMPTS + 1):
            if attempt > 1:
                if self._clock() + self._retry_delay >= deadline:
                    break
                self._sleep(self._retry_delay)
            left = max(deadline - self._clock(), _MIN_REQUEST_SECONDS)
            try:
                with self._session.get(
                    url,
                    headers={"Accept": "text/plain", "User-Agent": "mlflow-heroku-release"},
                    stream=True,
                    timeout=(min(10.0, left), min(10.0, left)),
                ) as response:
                    if response.status_code == 404:
                        problem = "the output stream does not exist (404)"
                        continue
                    if response.status_code in _RETRIED_STATUSES:
                        problem = f"the output stream answered {response.status_code}"
                        continue
                    if response.status_code >= 300:
                        return ReleaseOutput(
                            problem=f"the output stream answered {response.status_code}"
                        )
                    tail, trimmed, cut_short = self._read_tail(response, deadline)
            except requests.RequestException as error:
                problem = f"reading the output stream failed: {type(error).__name__}"
                continue
            return self._output_of(tail, trimmed, cut_short)
        return ReleaseOutput(problem=problem)

    def _read_tail(self, response: requests.Response, deadline: float) -> tuple[bytes, bool, bool]:
        """The last OUTPUT_KEEP_BYTES of the body, whether its start was dropped, and whether
        reading stopped at a bound (or a broken stream) before the end."""
        tail = bytearray()
        total = 0
        try:
            while True:
                # read1: whatever has arrived, so a trickling stream still meets the deadline
                # (iter_content would wait for each whole chunk).
                chunk = response.raw.read1(8192, decode_content=True)
                if not chunk:
                    return bytes(tail), total > len(tail), False
                total += len(chunk)
                tail += chunk
                if len(tail) > OUTPUT_KEEP_BYTES:
                    del tail[: len(tail) - OUTPUT_KEEP_BYTES]
                if total >= OUTPUT_MAX_BYTES or self._clock() >= deadline:
                    return bytes(tail), total > len(tail), True
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            if not tail:
                raise requests.ConnectionError("the output stream broke off") from None
            # A stream that stalls or drops: show what arrived.
            return bytes(tail), total > len(tail), True

    def _output_of(self, tail: bytes, trimmed: bool, cut_short: bool) -> ReleaseOutput:
        text = tail.decode("utf-8", errors="replace")
        if trimmed:
            text = text.partition("\n")[2]  # the first line kept may be the end of a longer one
        lines = printable_lines(scrub_secrets(text, [self._api_key]))
        lines = [line[:OUTPUT_LINE_CHARS] for line in lines[-OUTPUT_LINES:]]
        if not lines:
            return ReleaseOutput(problem="the output stream was empty", cut_short=cut_short)
        return ReleaseOutput(lines=lines, cut_short=cut_short)


def _release(data: Any) -> Release:
    try:
        stream = data.get("output_stream_url")
        return Release(
            id=str(data["id"]),
            version=int(data["version"]),
            status=str(data["status"]),
            description=str(data.get("description") or ""),
            output_stream_url=stream if isinstance(stream, str) and stream else None,
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        raise HerokuApiError("Heroku returned a release without id, version or status") from None


def _retry_after(response: requests.Response, fallback: float) -> float:
    value = response.headers.get("Retry-After")
    if value is None:
        return fallback
    try:
        return max(0.0, float(value))
    except ValueError:
        return fallback


def _heroku_message(response: requests.Response) -> str:
    """Heroku's own error text: Platform API `{"id", "message"}` or registry `{"errors": [...]}`."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(data, dict):
        if isinstance(data.get("message"), str):
            return str(data["message"])
        errors = data.get("errors")
        if isinstance(errors, list):
            return "; ".join(
                str(error.get("message") or error.get("code"))
                for error in errors
                if isinstance(error, dict)
            )
    return ""
