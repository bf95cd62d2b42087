"""MLflow's UI files ("/" and /static-files/) come from nginx, straight from the installed
package: behind the login, byte for byte, with cache headers, never through an MLflow worker."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow_heroku_runtime import nginx_config

from tests.image.test_image_dockerfile import compress_ui_copy
from tests.support.nginx_alone import USERNAME, nginx_alone
from tests.support.services import Stack

pytestmark = pytest.mark.integration

IMMUTABLE = "public, max-age=31536000, immutable"
_addresses = itertools.count()


def client_address() -> str:
    """A fresh TEST-NET-2 address for one unauthenticated probe's X-Forwarded-For (failed
    logins are rate-limited per client)."""
    number = next(_addresses)
    assert number < 150, "out of addresses"
    return f"198.51.100.{101 + number}"  # above those other stack tests send with a login


def main_script(index_html: str) -> str:
    """The UI's main script, as index.html names it (relative to /static-files/)."""
    found = re.search(r'src="static-files/(static/js/main\.[0-9a-f]+\.js)"', index_html)
    assert found is not None, index_html[:500]
    return found.group(1)


def upstreams(stack: Stack, marker: str, count: int) -> list[str]:
    """The upstream field of the access-log lines whose request carries marker (nginx writes
    its log once a second), once count of them arrived."""
    pattern = rf'"GET [^"]*{re.escape(marker)}[^"]*" .* upstream=(\S+)'
    stack.wait_for_output(re.compile(rf"(?s)({pattern}.*){{{count}}}"))
    return re.findall(pattern, stack.output())


def test_ui_files_need_the_login(stack: Stack) -> None:
    ui_dir = nginx_config.mlflow_ui_dir()
    script = main_script((ui_dir / "index.html").read_text())
    for path in ("/", f"/static-files/{script}", "/static-files/index.html"):
        for auth in (None, requests.auth.HTTPBasicAuth(stack.username, "wrong-password")):
            answer = requests.get(
                stack.url + path,
                auth=auth,
                headers={"X-Forwarded-For": client_address()},
                timeout=10,
            )
            assert answer.status_code == 401, (path, auth)
            assert "Cache-Control" not in answer.headers, path
            assert ui_dir.name not in answer.text


def test_ui_files_are_the_installed_ones_and_no_worker_serves_them(stack: Stack) -> None:
    """Index and main script byte for byte as installed, with their types and cache headers:
    the hashed script may be kept for a year, the index is revalidated (and answers 304 to its
    ETag). nginx's access log shows no upstream for any of them: no MLflow worker saw them."""
    ui_dir = nginx_config.mlflow_ui_dir()
    marker = f"ui-{uuid.uuid4().hex[:8]}"
    session = requests.Session()
    session.auth = stack.auth

    index = session.get(f"{stack.url}/?{marker}", timeout=10)
    assert index.status_code == 200
    assert index.content == (ui_dir / "index.html").read_bytes()
    assert index.headers["Content-Type"].startswith("text/html")
    assert index.headers["Cache-Control"] == "no-cache"
    assert index.headers["X-Content-Type-Options"] == "nosniff"  # the server's headers stay
    again = session.get(
        f"{stack.url}/?{marker}", headers={"If-None-Match": index.headers["ETag"]}, timeout=10
    )
    assert again.status_code == 304

    script = main_script(index.text)
    served = session.get(
        f"{stack.url}/static-files/{script}?{marker}",
        headers={"Accept-Encoding": "identity"},
        timeout=30,
    )
    assert served.status_code == 200
    assert served.content == (ui_dir / script).read_bytes()
    assert served.headers["Content-Type"] == "application/javascript"
    assert served.headers["Cache-Control"] == IMMUTABLE

    # Without a .gz beside it (this venv), nginx compresses on the fly.
    compressed = session.get(
        f"{stack.url}/static-files/{script}?{marker}",
        headers={"Accept-Encoding": "gzip"},
        timeout=30,
        stream=True,
    )
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(compressed.raw.read(decode_content=False)) == served.content

    assert upstreams(stack, marker, 4) == ["-"] * 4


@pytest.mark.parametrize(
    ("path", "cache_control", "content_type"),
    [
        ("manifest.json", "no-cache", "application/json"),
        ("favicon.ico", "no-cache", "image/x-icon"),
        ("lib/notebook-trace-renderer/index.html", "no-cache", "text/html"),
        ("static/css/main.*.css", IMMUTABLE, "text/css"),
        ("TelemetryLogger.telemetry-worker.*.worker.js", IMMUTABLE, "application/javascript"),
        # Flask's types for what Debian's mime.types lacks (a module worker needs JavaScript).
        ("static/media/pdf.worker.min.*.mjs", IMMUTABLE, "text/javascript"),
        ("static/media/*.ttf", IMMUTABLE, "font/ttf"),
        ("static/media/*.woff2", IMMUTABLE, "font/woff2"),
    ],
)
def test_each_kind_of_ui_file_has_its_type_and_cache_header(
    stack: Stack, path: str, cache_control: str, content_type: str
) -> None:
    ui_dir = nginx_config.mlflow_ui_dir()
    matches = sorted(ui_dir.glob(path))
    assert matches, path
    name = str(matches[0].relative_to(ui_dir))
    served = requests.get(f"{stack.url}/static-files/{name}", auth=stack.auth, timeout=30)
    assert served.status_code == 200
    assert served.content == matches[0].read_bytes()
    assert served.headers["Cache-Control"] == cache_control
    assert served.headers["Content-Type"].split(";")[0] == content_type


def test_a_missing_ui_file_is_a_plain_404_that_is_not_kept(stack: Stack) -> None:
    for path in ("static/js/main.0123abcd.js", "no-such-file.txt", "../../__init__.py"):
        answer = requests.get(f"{stack.url}/static-files/{path}", auth=stack.auth, timeout=10)
        assert answer.status_code in (400, 404), path
        assert "Cache-Control" not in answer.headers, path


@contextlib.contextmanager
def nginx_on(ui_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """nginx_alone with its UI directory set to ui_dir; yields its base URL and the login's
    Authorization header."""
    monkeypatch.setattr(nginx_config, "mlflow_ui_dir", lambda: ui_dir)
    with nginx_alone(auth_failures_per_minute=100) as base_url:
        yield base_url, nginx_config.expected_authorization(USERNAME, "s3cret-pw")


def test_the_images_precompressed_files_are_sent_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in the image: a copy of the UI compressed by the Dockerfile's own command. A client
    asking for gzip gets the .gz file itself (not a fresh compression), with the file's cache
    header and Vary; one that does not gets the plain file; the login still applies."""
    source = nginx_config.mlflow_ui_dir()
    copy_root = Path(tempfile.mkdtemp(prefix="ui-copy-"))  # reachable by nginx's workers
    try:
        copy_root.chmod(0o755)
        copy = copy_root / "build"
        script = main_script((source / "index.html").read_text())
        for name in ("index.html", script):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, copy / name)
        compress_ui_copy(copy)
        packed = (copy / f"{script}.gz").read_bytes()
        with nginx_on(copy, monkeypatch) as (url, authorization):
            login = {"Authorization": authorization}
            compressed = requests.get(
                f"{url}/static-files/{script}",
                headers={**login, "Accept-Encoding": "gzip"},
                timeout=30,
                stream=True,
            )
            assert compressed.status_code == 200
            assert compressed.headers["Content-Encoding"] == "gzip"
            assert compressed.headers["Vary"] == "Accept-Encoding"
            assert compressed.headers["Cache-Control"] == IMMUTABLE
            assert compressed.raw.read(decode_content=False) == packed
            plain = requests.get(
                f"{url}/static-files/{script}",
                headers={**login, "Accept-Encoding": "identity"},
                timeout=30,
            )
            assert "Content-Encoding" not in plain.headers
            assert plain.content == (source / script).read_bytes()
            index = requests.get(f"{url}/", headers=login, timeout=10)
            assert index.content == (source / "index.html").read_bytes()
            assert index.headers["Cache-Control"] == "no-cache"
            refused = requests.get(
                f"{url}/static-files/{script}", headers={"Accept-Encoding": "gzip"}, timeout=10
            )
            assert refused.status_code == 401
    finally:
        shutil.rmtree(copy_root, ignore_errors=True)
