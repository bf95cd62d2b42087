"""A local test double of Heroku's container registry and Platform API, on 127.0.0.1.

It follows their documented behaviour for what `heroku container:release` uses:
- registry: `GET /v2/<app>/<process>/manifests/<digest>` with Basic auth (any user, the API key as
  password); answers with the manifest pushed for that process type and its media type as
  Content-Type; errors in the registry's `{"errors": [{"code", "message"}]}` form.
- Platform API: `Authorization: Bearer <key>`, `Accept: application/vnd.heroku+json; version=3`
  (the formation PATCH needs the `3.docker-releases` variant); errors as `{"id", "message"}`;
  `GET /apps/<app>/releases` honours `Range: version ..; max=N, order=desc`; a PATCH of the
  formation with `{"updates": [{"type", "docker_image"}, ...]}` (several process types at once)
  creates one release, and one web dyno. The release stays `pending` for a few reads (while the
  release command runs, when the formation has a `release` process type; then it carries an
  `output_stream_url`) and then becomes `succeeded` (or `failed`, as scripted); `PATCH
  /apps/<app>/formation/<type>` with `{"quantity": N}` scales a process type that exists.
- release output: `GET <output_stream_url>` answers the release command's output as text/plain,
  without authentication (a capability URL, as the CLI reads it); it can be scripted to answer
  404 (not started), an error, a very long output, or a stream that trickles and never ends.
Tests can queue canned answers (429 with Retry-After, 5xx, ...) and read every request made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The API key the double accepts and the app the `heroku` fixture (conftest.py) creates.
DOUBLE_API_KEY = "hrku-0123456789abcdef0123456789abcdef"
DOUBLE_APP = "acme-mlflow"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
API_ACCEPT = "application/vnd.heroku+json; version=3"
DOCKER_RELEASES = "application/vnd.heroku+json; version=3.docker-releases"
RELEASE_TYPE = "release"
RELEASE_OUTPUT = [
    "Running the release phase on release.4213",
    "Database backup written to s3://acme-bucket/backups/20260102T150405Z.dump",
    "Migrations: database already at head",
]
FAILED_RELEASE_OUTPUT = [
    "Running the release phase on release.4213",
    "Database backup written to s3://acme-bucket/backups/20260102T150405Z.dump",
    "alembic.util.exc.CommandError: Can't locate revision identified by 'ffffffffffff'",
    "Release phase failed: migrations did not run; the database is unchanged",
]


def schema2_manifest(config_digest: str, media_type: str = SCHEMA2) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7023,
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 32654,
                    "digest": "sha256:" + "e" * 64,
                }
            ],
        },
        indent=3,
    ).encode()


def index_manifest(media_type: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + "1" * 64,
                    "size": 1000,
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + "2" * 64,
                    "size": 500,
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                    "platform": {"architecture": "unknown", "os": "unknown"},
                },
            ],
        }
    ).encode()


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRelease:
    id: str
    version: int
    status: str
    description: str
    reads_until_done: int
    final_status: str
    output_stream_url: str | None = None
    output: str = ""


@dataclass
class FakeHeroku:
    api_key: str
    apps: dict[str, str] = field(default_factory=dict)  # app name -> stack
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    releases: dict[str, list[FakeRelease]] = field(default_factory=dict)
    # (app, process type) -> the image ID it runs
    formation_image: dict[tuple[str, str], str] = field(default_factory=dict)
    formation_quantity: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    canned: list[tuple[str, str, int, dict[str, str], Any]] = field(default_factory=list)
    pending_reads: int = 2
    next_status: str = "succeeded"
    failure_description: str = "Deploy 1a2b3c4d"
    # What the next release's release command prints (None: the scripted default for its
    # outcome), and how its stream answers: "ok", "missing" (404), "error" (500), "endless".
    next_output: list[str] | None = None
    stream_mode: str = "ok"
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_app(self, name: str, stack: str = "container") -> None:
        self.apps[name] = stack
        # Every app starts with Heroku's two initial releases.
        self.releases[name] = [
            FakeRelease(str(uuid.uuid4()), 1, "succeeded", "Initial release", 0, "succeeded"),
            FakeRelease(str(uuid.uuid4()), 2, "succeeded", "Enable Logplex", 0, "succeeded"),
        ]

    def push(
        self, app: str, body: bytes, media_type: str = SCHEMA2, process_type: str = "web"
    ) -> str:
        """Stores a manifest as `docker push registry.heroku.com/<app>/<process_type>` would."""
        digest = digest_of(body)
        self.manifests[(f"{app}/{process_type}", digest)] = (media_type, body)
        return f"registry.heroku.com/{app}/{process_type}@{digest}"

    def answer_next(
        self,
        method: str,
        path_pattern: str,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next matching request with this instead of the normal behaviour."""
        self.canned.append((method, path_pattern, status, headers or {}, body))

    def calls(self, method: str, path_pattern: str) -> list[Recorded]:
        return [
            r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)
        ]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # keep test output quiet

    def do_GET(self) -> None:
        if self.path.startswith("/streams/"):
            self._stream()
            return
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with fake.lock:
            fake.requests.append(Recorded(method, self.path, dict(self.headers.items()), body))
            for index, (m, pattern, status, headers, canned) in enumerate(fake.canned):
                if m == method and re.fullmatch(pattern, self.path):
                    del fake.canned[index]
                    self._send(status, canned, headers)
                    return
            if self.path.startswith("/v2/"):
                self._registry(method)
            else:
                self._api(method, body)

    # -- release output ----------------------------------------------------------------------

    def _stream(self) -> None:
        """A release's output stream: text/plain, no authentication (a capability URL)."""
        fake = self.server.fake
        release_id = self.path.removeprefix("/streams/")
        with fake.lock:
            fake.requests.append(Recorded("GET", self.path, dict(self.headers.items()), None))
            found = [r for rs in fake.releases.values() for r in rs if r.id == release_id]
            mode = fake.stream_mode
        if not found or mode == "missing":
            self._send(404, b"Not Found", {"Content-Type": "text/plain"})
            return
        if mode == "error":
            self._send(500, b"Internal Server Error", {"Content-Type": "text/plain"})
            return
        if mode == "endless":
            # A stream that trickles and never ends; HTTP/1.0 ends a body only at the close.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for count in range(10**6):
                try:
                    self.wfile.write(f"still running, line {count}\n".encode())
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.02)
            return
        self._send(200, found[0].output.encode(), {"Content-Type": "text/plain; charset=utf-8"})

    # -- registry -----------------------------------------------------------------------------

    def _registry(self, method: str) -> None:
        fake = self.server.fake
        auth = self.headers.get("Authorization", "")
        password = ""
        if auth.startswith("Basic "):
            decoded = base64.b64decode(auth.removeprefix("Basic ")).decode()
            password = decoded.partition(":")[2]
        if password != fake.api_key:
            self._send(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": 'Basic realm="registry.heroku.com"'},
            )
            return
        match = re.fullmatch(r"/v2/([a-z0-9-]+/[a-z]+)/manifests/(sha256:[0-9a-f]{64})", self.path)
        if method != "GET" or match is None:
            self._send(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "unknown path"}]})
            return
        stored = fake.manifests.get((match.group(1), match.group(2)))
        if stored is None:
            self._send(
                404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
            )
            return
        media_type, manifest = stored
        # Like Docker's registry: a schema 2 manifest is served as stored; a client that does not
        # accept an index/OCI type still gets it (the client must check the media type).
        self._send(
            200,
            manifest,
            {"Content-Type": media_type, "Docker-Content-Digest": match.group(2)},
        )

    # -- Platform API -------------------------------------------------------------------------

    def _api(self, method: str, body: Any) -> None:
        fake = self.server.fake
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._send(401, {"id": "unauthorized", "message": "Invalid credentials provided."})
            return
        accept = self.headers.get("Accept", "")
        if not accept.startswith(API_ACCEPT):
            self._send(
                400, {"id": "bad_request", "message": "Please specify a version along with Accept."}
            )
            return
        match = re.fullmatch(
            r"/apps/([a-z0-9-]+)/(formation|releases)(?:/([a-z0-9_-]+))?", self.path
        )
        if match is None or match.group(1) not in fake.apps:
            self._send(404, {"id": "not_found", "message": "Couldn't find that app."})
            return
        app, collection, item = match.groups()
        if collection == "formation" and method == "PATCH" and item is None:
            self._patch_formation(app, accept, body)
        elif collection == "formation" and method == "PATCH":
            self._scale_formation(app, item, body)
        elif collection == "releases" and method == "GET" and item is None:
            self._list_releases(app)
        elif collection == "releases" and method == "GET":
            self._read_release(app, item)
        else:
            self._send(405, {"id": "method_not_allowed", "message": "Method not allowed."})

    def _patch_formation(self, app: str, accept: str, body: Any) -> None:
        fake = self.server.fake
        if accept != DOCKER_RELEASES:
            # Without the docker-releases variant the API does not know docker_image.
            self._send(422, {"id": "invalid_params", "message": "Invalid formation update."})
            return
        if self.headers.get("Content-Type") != "application/json":
            self._send(400, {"id": "bad_request", "message": "Content-Type must be JSON."})
            return
        updates = body.get("updates") if isinstance(body, dict) else None
        if (
            not isinstance(updates, list)
            or not updates
            or any(
                not isinstance(update, dict)
                or set(update) != {"type", "docker_image"}
                or not re.fullmatch(r"[a-z][a-z0-9_-]*", str(update["type"]))
                or not re.fullmatch(r"sha256:[0-9a-f]{64}", str(update["docker_image"]))
                for update in updates
            )
            or len({update["type"] for update in updates}) != len(updates)
        ):
            self._send(422, {"id": "invalid_params", "message": "Invalid formation update."})
            return
        if fake.apps[app] != "container":
            self._send(
                422,
                {
                    "id": "invalid_params",
                    "message": "Docker images can only be released to apps on the container stack.",
                },
            )
            return
        for update in updates:
            fake.formation_image[(app, update["type"])] = update["docker_image"]
        fake.formation_quantity.setdefault((app, "web"), 1)
        version = fake.releases[app][-1].version + 1
        failing = fake.next_status == "failed"
        description = (
            fake.failure_description
            if failing
            else "Deployed "
            + ", ".join(f"{u['type']} ({u['docker_image'][7:19]})" for u in updates)
        )
        release_id = str(uuid.uuid4())
        # The release phase runs for every release of an app with a release process type.
        release_phase = (app, RELEASE_TYPE) in fake.formation_image
        output = fake.next_output
        if output is None:
            output = FAILED_RELEASE_OUTPUT if failing else RELEASE_OUTPUT
        fake.releases[app].append(
            FakeRelease(
                release_id,
                version,
                "pending",
                description,
                fake.pending_reads,
                fake.next_status,
                output_stream_url=(
                    f"{fake.base_url}/streams/{release_id}" if release_phase else None
                ),
                output="".join(f"{line}\n" for line in output) if release_phase else "",
            )
        )
        self._send(
            200,
            [
                {"type": u["type"], "quantity": 1 if u["type"] == "web" else 0, "size": "Basic"}
                for u in updates
            ],
        )

    def _scale_formation(self, app: str, process_type: str, body: Any) -> None:
        fake = self.server.fake
        if self.headers.get("Content-Type") != "application/json":
            self._send(400, {"id": "bad_request", "message": "Content-Type must be JSON."})
            return
        quantity = body.get("quantity") if isinstance(body, dict) else None
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            self._send(422, {"id": "invalid_params", "message": "Invalid formation update."})
            return
        if (app, process_type) not in fake.formation_quantity:
            self._send(404, {"id": "not_found", "message": "Couldn't find that formation."})
            return
        fake.formation_quantity[(app, process_type)] = quantity
        answer = {"type": process_type, "quantity": quantity, "size": "Basic", "command": None}
        self._send(200, answer)

    def _release_json(self, release: FakeRelease) -> dict[str, Any]:
        if release.status == "pending":
            if release.reads_until_done <= 0:
                release.status = release.final_status
            release.reads_until_done -= 1
        return {
            "id": release.id,
            "version": release.version,
            "status": release.status,
            "description": release.description,
            "current": release.status == "succeeded",
            "output_stream_url": release.output_stream_url,
        }

    def _list_releases(self, app: str) -> None:
        fake = self.server.fake
        range_header = self.headers.get("Range", "")
        match = re.fullmatch(r"version \.\.; max=(\d+)(?:, order=(asc|desc))?;?", range_header)
        releases = list(fake.releases[app])
        if match is None:
            self._send(200, [self._release_json(r) for r in releases[:200]])
            return
        if (match.group(2) or "asc") == "desc":
            releases.reverse()
        page = releases[: int(match.group(1))]
        self._send(206, [self._release_json(r) for r in page])

    def _read_release(self, app: str, release_id: str) -> None:
        for release in self.server.fake.releases[app]:
            if release.id == release_id:
                self._send(200, self._release_json(release))
                return
        self._send(404, {"id": "not_found", "message": "Couldn't find that release."})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeHeroku) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the deadline tests) may close its socket while the double is
        # still answering: that is the client's doing, not a fault worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def running_fake_heroku(api_key: str) -> Iterator[FakeHeroku]:
    fake = FakeHeroku(api_key=api_key)
    server = _Server(fake)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-heroku", daemon=True
    )
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
