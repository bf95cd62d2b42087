"""A small client for what `heroku container:release` does: Heroku's registry and Platform API.

Read the pushed manifest by digest, take its config digest (the image ID Heroku releases), PATCH the
app's formation with it, then follow the new release until it succeeds or fails. Errors say what
was being done, what Heroku answered (its own message) and what to do; the API key never appears
in them. Rate limits (429) and server errors (5xx) are retried a bounded number of times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import requests

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

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RETRIED_STATUSES = (500, 502, 503, 504)
_MESSAGE_LIMIT = 500
_MIN_REQUEST_SECONDS = 1.0  # a request near the deadline still gets this long


class HerokuApiError(Exception):
    """A Heroku API or registry call failed; the message is safe to print."""


@dataclass(frozen=True)
class Release:
    id: str
    version: int
    status: str
    description: str


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
        return text.replace(self._api_key, "<api key>")[:_MESSAGE_LIMIT]

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

    def release_image(
        self,
        app: str,
        process_type: str,
        image_id: str,
        timeout: float,
        poll_interval: float = 3.0,
    ) -> Release:
        """PATCH the formation to `image_id`, then wait for the release it creates to finish."""
        before = self.latest_release(app)
        previous_version = before.version if before is not None else 0
        self._request(
            "PATCH",
            f"{self._api}/apps/{app}/formation",
            f"updating the {process_type} formation of app {app!r} to image {image_id}",
            self._api_headers(DOCKER_RELEASES_ACCEPT),
            body={"updates": [{"type": process_type, "docker_image": image_id}]},
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
                raise HerokuApiError(
                    f"Heroku release v{release.version} of app {app!r} failed: "
                    f'"{self._scrub(release.description)}"; see '
                    f"`heroku releases:output {release.version} --app {app}`"
                )
            if self._clock() >= deadline:
                state = (
                    f"v{release.version} is still {release.status}"
                    if release is not None
                    else "no new release appeared"
                )
                raise HerokuApiError(
                    f"the release of image {image_id} to app {app!r} did not finish within "
                    f"{timeout:g} s ({state}); see `heroku releases --app {app}`, then run "
                    "`pulumi up` again"
                )
            self._sleep(poll_interval)


def _release(data: Any) -> Release:
    try:
        return Release(
            id=str(data["id"]),
            version=int(data["version"]),
            status=str(data["status"]),
            description=str(data.get("description") or ""),
        )
    except (KeyError, TypeError, ValueError):
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
