"""The repository's own scripts, where they can run here without the network: scripts/lock."""

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
