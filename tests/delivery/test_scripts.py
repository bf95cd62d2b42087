"""The repository's own scripts, where they can run here without the network: scripts/lock
and scripts/setup (against the local package mirror)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCKS = {
    "requirements.in": "requirements.txt",
    "image/requirements.in": "image/requirements.txt",
    "requirements-dev.in": "requirements-dev.txt",
}


def test_lock_resolves_every_lock_file_with_the_pinned_uv(tmp_path: Path) -> None:
    """scripts/lock uses the uv that scripts/setup pins into .venv (no uv on PATH, no pip in
    Debian's python3), for each *.in, with hashes and the image's lowest Python."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "lock", tmp_path / "scripts" / "lock")
    uv = tmp_path / ".venv" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    # A stand-in uv: records its arguments, writes the output file it was asked for.
    uv.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo locked > "$2"; shift; done\n'
    )
    uv.chmod(0o755)
    (tmp_path / "image").mkdir()
    path = os.pathsep.join(d for d in ("/usr/bin", "/bin") if not (Path(d) / "uv").exists())
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "lock")],
        env={"PATH": path},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    recorded = calls.read_text().splitlines()
    assert len(recorded) == len(LOCKS)
    for line, (source, lock) in zip(recorded, LOCKS.items(), strict=True):
        assert line.startswith("pip compile ")
        for flag in ("--universal", "--python-version 3.11", "--generate-hashes"):
            assert flag in line
        assert line.endswith(f"{source} -o {lock}")
        assert (tmp_path / lock).read_text() == "locked\n"


def _lock_entries(lock: Path, names: tuple[str, ...]) -> str:
    """The entries for ``names`` cut out of a hashed lock file (name line plus its indented
    hash and comment lines)."""
    kept: list[str] = []
    keep = False
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace():
            keep = line.split("==", 1)[0] in names
        if keep:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _installed(venv: Path) -> set[str]:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {line.split("==")[0].lower() for line in result.stdout.splitlines()}


def _setup_copy(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """Run a copy of scripts/setup in tmp_path (its .venv and lock files are tmp_path's)."""
    script = tmp_path / "scripts" / "setup"
    if not script.exists():
        script.parent.mkdir(exist_ok=True)
        shutil.copy(REPO_ROOT / "scripts" / "setup", script)
    return subprocess.run(
        ["bash", str(script), mode], capture_output=True, text=True, check=False, timeout=300
    )


def test_setup_test_syncs_the_environment_to_the_lock(tmp_path: Path) -> None:
    """`scripts/setup test` leaves exactly the test lock's packages (plus the venv's own pip):
    a package installed by hand is removed, and the uv it bootstraps from the lock stays."""
    # A small lock: the uv setup bootstraps, and one package.
    (tmp_path / "requirements-dev.txt").write_text(
        _lock_entries(REPO_ROOT / "requirements-dev.txt", ("uv", "idna"))
    )

    def setup() -> None:
        result = _setup_copy(tmp_path, "test")
        assert result.returncode == 0, result.stdout + result.stderr

    venv = tmp_path / ".venv"
    setup()
    assert {"uv", "idna"} <= _installed(venv)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "six"],
        check=True,
        timeout=120,
    )
    assert "six" in _installed(venv)
    setup()
    after = _installed(venv)
    assert "six" not in after
    assert {"uv", "idna"} <= after
    assert after - {"uv", "idna", "pip", "setuptools"} == set(), after


def test_setup_refuses_an_unknown_mode_before_installing_anything(tmp_path: Path) -> None:
    result = _setup_copy(tmp_path, "tests")
    assert result.returncode == 2
    assert "usage: scripts/setup local|test" in result.stderr
    assert not (tmp_path / ".venv").exists()
