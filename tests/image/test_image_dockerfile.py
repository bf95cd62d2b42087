"""The Dockerfile is hadolint-clean and uses nothing Heroku's container runtime rejects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import NGINX_PRELOAD_CFLAGS, REPO_ROOT

IMAGE_DIR = Path(__file__).resolve().parents[2] / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("forbidden", ["VOLUME", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "SHELL"])
def test_no_instruction_heroku_rejects(forbidden: str) -> None:
    assert forbidden not in {name for name, _args in instructions()}


def stages() -> list[list[tuple[str, str]]]:
    """The instructions split per build stage (each starts with its FROM)."""
    found: list[list[tuple[str, str]]] = []
    for name, args in instructions():
        if name == "FROM":
            found.append([])
        found[-1].append((name, args))
    return found


def test_image_shape() -> None:
    builder, final = stages()  # the nginx preload library's builder, then the image
    assert builder[0] == ("FROM", "python:3.12-slim-bookworm AS nginx-preload")
    assert final[0] == ("FROM", "python:3.12-slim-bookworm")
    builder_runs = " ".join(args for name, args in builder if name == "RUN")
    # The tests and scripts/run-local build the library with these flags too.
    flags = " ".join(NGINX_PRELOAD_CFLAGS)
    assert f"gcc {flags} -o /src/nginx_graceful_term.so" in builder_runs
    run_local = (REPO_ROOT / "scripts" / "run-local").read_text()
    assert f'gcc {flags} -o "$preload" image/nginx_graceful_term.c -ldl' in run_local
    names = [name for name, _args in final]
    runs = " ".join(args for name, args in final if name == "RUN")
    assert re.search(r"apt-get install .*\bnginx=1\.22\.", runs)
    assert "pip install --require-hashes" in runs
    for tool in ("gcc", "g++", "make", "build-essential", "postgresql"):
        assert not re.search(rf"(^|\s){re.escape(tool)}(=|\s|$)", runs), tool
    # Only the compiled library comes over from the builder, at the supervisor's default path.
    from_builder = [args for name, args in final if name == "COPY" and "--from" in args]
    assert from_builder == [
        "--from=nginx-preload /src/nginx_graceful_term.so "
        "/usr/local/lib/mlflow-heroku/nginx_graceful_term.so"
    ]
    user = [args for name, args in final if name == "USER"]
    assert user
    assert user[-1] not in ("root", "0")
    assert names.index("USER") > max(index for index, name in enumerate(names) if name == "RUN")
    assert final[-1] == ("CMD", '["python", "/app/entrypoint.py"]')


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    lines = [
        line
        for line in (IMAGE_DIR / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {
        "!Dockerfile",
        "!requirements.txt",
        "!entrypoint.py",
        "!mlflow_heroku_runtime/",
        "!nginx_graceful_term.c",
    } <= set(lines)
    copied = [args.split()[0] for name, args in instructions() if name == "COPY"]
    assert set(copied) == {
        "requirements.txt",
        "entrypoint.py",
        "mlflow_heroku_runtime/",
        "nginx_graceful_term.c",
        "--from=nginx-preload",
    }
