"""The Dockerfile is hadolint-clean and uses nothing Heroku's container runtime rejects."""

from __future__ import annotations

import gzip
import os
import re
import shutil
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


def ui_compress_step() -> tuple[str, str]:
    """The final stage's RUN that compresses MLflow's UI files, as (the assignment that finds
    the UI's directory, the command that compresses what is in "$ui_dir")."""
    _builder, final = stages()
    steps = [args for name, args in final if name == "RUN" and "gzip" in args]
    assert len(steps) == 1, steps
    locate, compress = steps[0].split(" && ", 1)
    assert locate.startswith('ui_dir="$(python -c '), locate
    return locate, compress


def compress_ui_copy(ui_dir: Path) -> None:
    """Run the Dockerfile's compress command on ui_dir, as the build runs it (sh -c)."""
    _locate, compress = ui_compress_step()
    subprocess.run(
        ["sh", "-c", compress], env={**os.environ, "ui_dir": str(ui_dir)}, check=True, timeout=120
    )


def test_ui_files_are_compressed_once_at_build(tmp_path: Path) -> None:
    """The build writes a .gz beside each compressible UI file of the installed MLflow, for
    nginx's gzip_static; the step runs before the runtime's code is copied, so a code change
    keeps its layer. Checked on a copy of the installed files: the same directory nginx's
    config names, compressible files of 1 KiB and more get a .gz that decompresses to them,
    already compressed formats and small files get none, the originals stay as they were."""
    from mlflow_heroku_runtime.nginx_config import mlflow_ui_dir

    locate, _compress = ui_compress_step()
    _builder, final = stages()
    order = [args for _name, args in final]
    step = next(index for index, args in enumerate(order) if "gzip" in args)
    assert "pip install --require-hashes" in order[step - 1]
    assert step < order.index("mlflow_heroku_runtime/ /app/mlflow_heroku_runtime/")
    found = subprocess.run(
        ["sh", "-c", f'{locate} && printf %s "$ui_dir"'],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert Path(found).resolve() == mlflow_ui_dir()

    source = mlflow_ui_dir()
    names = ["index.html", "manifest.json", "favicon.ico", "asset-manifest.json"]
    for pattern in ("static/js/main.*.js", "static/css/main.*.css", "static/media/*"):
        names += [str(path.relative_to(source)) for path in sorted(source.glob(pattern))]
    copy = tmp_path / "build"
    for name in names:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, copy / name)
    compress_ui_copy(copy)

    compressible = {
        ".js",
        ".mjs",
        ".cjs",
        ".css",
        ".json",
        ".svg",
        ".html",
        ".txt",
        ".ttf",
        ".eot",
        ".ico",
    }
    outcome: dict[str, bool] = {}
    for name in names:
        original = copy / name
        assert original.read_bytes() == (source / name).read_bytes(), name
        packed = original.with_name(original.name + ".gz")
        expected = original.suffix in compressible and original.stat().st_size > 1024
        assert packed.exists() == expected, name
        if expected:
            assert gzip.decompress(packed.read_bytes()) == original.read_bytes(), name
        outcome[name] = expected
    # The copy held both kinds (else the loop above proves little).
    assert any(name.endswith(".js") and outcome[name] for name in names)
    assert any(name.endswith((".png", ".woff2")) and not outcome[name] for name in names)
    assert not outcome["index.html"]  # under 1 KiB


# Debian's copy of the PostgreSQL repository's signing key (postgresql-common, installed with
# the test cluster's server): the Dockerfile takes the key from the same package.
DEBIAN_PGDG_KEY = Path("/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc")
HEROKU_NEWEST_POSTGRES = 17  # devcenter.heroku.com/articles/upgrading-heroku-postgres-databases


def test_pg_dump_is_new_enough_for_heroku_and_its_repository_key_is_verified(
    tmp_path: Path,
) -> None:
    """backup.py (and the release phase's backup) need pg_dump >= the server's major version;
    its repository's key is pinned by hash; curl is there for Heroku's release-phase logs."""
    import hashlib

    _builder, final = stages()
    (step,) = [args for name, args in final if name == "RUN" and "pgdg" in args]
    installed = re.search(r"--no-install-recommends postgresql-client-(\d+)=(\d+)\.\* ", step)
    assert installed, step
    assert installed.group(1) == installed.group(2)
    major = int(installed.group(1))
    assert major >= HEROKU_NEWEST_POSTGRES
    assert re.search(r"\bcurl=7\.88\.\*", step)
    assert ("ENV", f"PATH=/usr/lib/postgresql/{major}/bin:$PATH") in final
    assert "[signed-by=/usr/share/keyrings/pgdg.asc] " in step
    assert ' bookworm-pgdg main" ' in step
    pinned = re.search(r'echo "([0-9a-f]{64})  /usr/share/keyrings/pgdg.asc"', step)
    assert pinned, step
    assert "sha256sum --check --strict" in step
    assert pinned.group(1) == hashlib.sha256(DEBIAN_PGDG_KEY.read_bytes()).hexdigest()
    # The repository's key as the PostgreSQL project publishes its fingerprint.
    shown = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--show-keys", "--with-colons", str(DEBIAN_PGDG_KEY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "fpr:::::::::B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8:" in shown
