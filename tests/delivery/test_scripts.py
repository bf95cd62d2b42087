"""The repository's own scripts, where they can run here without the network: scripts/lock
and scripts/setup (against the local package mirror), scripts/upgrade-mlflow (with stand-ins for
uv and the stages it runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


# scripts/upgrade-mlflow, run on a copy with stand-ins for uv, the other scripts and the
# checks: each records its command line, and the one named in FAIL_AT exits 1.
UPGRADE_PIN_FILE = "image/requirements.in"
UPGRADE_STAND_INS = {
    ".venv/bin/uv": "uv",
    ".venv/bin/ruff": "ruff",
    ".venv/bin/mypy": "mypy",
    ".venv/bin/pytest": "pytest",
    "scripts/lock": "lock",
    "scripts/setup": "setup",
    "scripts/test": "test",
}


def _upgrade_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "upgrade-mlflow", tmp_path / "scripts" / "upgrade-mlflow")
    for relative, name in UPGRADE_STAND_INS.items():
        stand_in = tmp_path / relative
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        # The uv stand-in answers the registry question as uv does for an unknown version:
        # it serves every distribution at 3.99.0 except mlflow-tracing.
        asked = (
            'asked=$(cat); echo "$asked" >> "$CALLS"\n'
            'case "$asked" in mlflow-tracing==3.99.0) echo "  cause: Because there is no'
            " version of $asked and you require $asked, we can conclude that your"
            ' requirements are unsatisfiable." >&2; exit 1;; esac\n'
            if name == "uv"
            else ""
        )
        # The lock stand-in rewrites the locks, as a real relock does.
        relock = (
            "".join(f"echo relocked > {lock}\n" for lock in LOCKS.values())
            if name == "lock"
            else ""
        )
        stand_in.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> "$CALLS"\n'
            f"{asked}{relock}"
            f'[ "$FAIL_AT" = "{name} $*" ] && exit 1\n'
            "exit 0\n"
        )
        stand_in.chmod(0o755)
    (tmp_path / "image").mkdir()
    (tmp_path / UPGRADE_PIN_FILE).write_text(
        "# What runs inside the container.\nmlflow==3.17.2\nboto3>=1.35,<2\n"
    )
    for lock in LOCKS.values():
        (tmp_path / lock).write_text("locked\n")
    (tmp_path / "tests" / "image").mkdir(parents=True)
    (tmp_path / "tests" / "image" / "test_internals.py").write_text("")
    return tmp_path


def _upgrade(
    root: Path, *args: str, fail_at: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = root / "calls.txt"
    path = os.pathsep.join(d for d in ("/usr/bin", "/bin") if not (Path(d) / "uv").exists())
    result = subprocess.run(
        ["bash", str(root / "scripts" / "upgrade-mlflow"), *args],
        env={"PATH": path, "CALLS": str(calls), "FAIL_AT": fail_at},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


UPGRADE_CHECKS = [
    "ruff check .",
    "ruff format --check .",
    "mypy ",
    "pytest -p no:cacheprovider -q tests/image/test_internals.py",
    "pytest -p no:cacheprovider -q tests/image/test_image_flask_shortcut.py",
]


def test_upgrade_pins_relocks_syncs_then_runs_the_checks_in_order(tmp_path: Path) -> None:
    root = _upgrade_copy(tmp_path)
    result, calls = _upgrade(root, "3.18.0")
    assert result.returncode == 0, result.stderr
    registry = [call for call in calls if not call.startswith("uv ")][:3]
    assert registry == ["mlflow==3.18.0", "mlflow-skinny==3.18.0", "mlflow-tracing==3.18.0"]
    steps = [call for call in calls if not call.startswith(("uv ", "mlflow"))]
    assert steps == [
        "lock ",
        "setup test",
        *UPGRADE_CHECKS,
        "test --ignore=tests/image/test_internals.py"
        " --ignore=tests/image/test_image_flask_shortcut.py",
    ]
    # Only the pin moved, comments and other lines stay.
    assert (root / UPGRADE_PIN_FILE).read_text() == (
        "# What runs inside the container.\nmlflow==3.18.0\nboto3>=1.35,<2\n"
    )
    assert "git add image/requirements.in requirements.txt" in result.stdout


def test_upgrade_skip_suite_stops_after_the_upgrade_checks(tmp_path: Path) -> None:
    result, calls = _upgrade(_upgrade_copy(tmp_path), "--skip-suite", "3.18.0")
    assert result.returncode == 0, result.stderr
    assert calls[-1] == UPGRADE_CHECKS[-1]
    assert "the suite was not run (--skip-suite)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no VERSION given"),
        (("latest",), "'latest' is not an MLflow release number such as 3.18.0"),
        (("3.18.0; rm -rf /",), "is not an MLflow release number"),
        (("3.18.0", "3.17.2"), "one VERSION only, got '3.18.0' and '3.17.2'"),
        (("--skip-tests", "3.18.0"), "unknown option '--skip-tests'"),
    ],
)
def test_upgrade_refuses_bad_arguments_before_asking_anyone(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    root = _upgrade_copy(tmp_path)
    result, calls = _upgrade(root, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "usage: scripts/upgrade-mlflow [--skip-suite] VERSION" in result.stderr
    assert calls == []
    assert "mlflow==3.17.2" in (root / UPGRADE_PIN_FILE).read_text()


def test_upgrade_refuses_a_release_the_registry_does_not_serve_in_full(tmp_path: Path) -> None:
    root = _upgrade_copy(tmp_path)
    before = {name: (root / name).read_text() for name in (UPGRADE_PIN_FILE, *LOCKS.values())}
    result, calls = _upgrade(root, "3.99.0")
    assert result.returncode == 1
    assert "the package registry does not serve mlflow-tracing==3.99.0" in result.stderr
    assert "Nothing was changed" in result.stderr
    # It asked about each distribution, then stopped before touching anything.
    assert [call for call in calls if not call.startswith("uv ")] == [
        "mlflow==3.99.0",
        "mlflow-skinny==3.99.0",
        "mlflow-tracing==3.99.0",
    ]
    assert {name: (root / name).read_text() for name in before} == before


def test_upgrade_puts_the_pin_and_locks_back_when_the_lock_fails(tmp_path: Path) -> None:
    root = _upgrade_copy(tmp_path)
    before = {name: (root / name).read_text() for name in (UPGRADE_PIN_FILE, *LOCKS.values())}
    result, calls = _upgrade(root, "3.18.0", fail_at="lock ")
    assert result.returncode == 1
    assert "stage 'lock' failed (MLflow 3.17.2 -> 3.18.0)" in result.stderr
    assert "the locks are back as they were" in result.stderr
    assert calls[-1] == "lock "
    assert {name: (root / name).read_text() for name in before} == before


@pytest.mark.parametrize(
    ("fail_at", "stage", "hint"),
    [
        ("setup test", "setup", "rerun scripts/setup test"),
        ("mypy ", "mypy", "changed signature or moved"),
        (UPGRADE_CHECKS[3], "internals", "image/mlflow_heroku_runtime/internals.py"),
        (UPGRADE_CHECKS[4], "route-shadowing", "flask_shortcut.py"),
    ],
)
def test_upgrade_stops_at_the_first_failing_stage_and_says_what_to_read(
    tmp_path: Path, fail_at: str, stage: str, hint: str
) -> None:
    root = _upgrade_copy(tmp_path)
    result, calls = _upgrade(root, "3.18.0", fail_at=fail_at)
    assert result.returncode == 1
    assert f"stage '{stage}' failed (MLflow 3.17.2 -> 3.18.0)" in result.stderr
    assert hint in result.stderr
    assert calls[-1] == fail_at
    # The bump stays for the fix to go on top of it.
    assert "mlflow==3.18.0" in (root / UPGRADE_PIN_FILE).read_text()


def test_upgrade_fails_when_the_internals_check_is_missing(tmp_path: Path) -> None:
    root = _upgrade_copy(tmp_path)
    (root / "tests" / "image" / "test_internals.py").unlink()
    result, calls = _upgrade(root, "3.18.0")
    assert result.returncode == 1
    assert "tests/image/test_internals.py is missing" in result.stderr
    assert calls[-1] == "mypy "
