"""The app's wait for the migration flag."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _waiting_uvicorn(flag: Path, supervisor_pid: int) -> subprocess.Popen[str]:
    """A process doing what MLflow's uvicorn does at import: wait for the migration flag."""
    import sys

    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from mlflow_heroku_runtime.migrate import wait_for_migration;"
        "wait_for_migration(); print('migrated', flush=True)"
    )
    env = {
        **os.environ,
        "_MLFLOW_HEROKU_MIGRATED_FLAG": str(flag),
        "_MLFLOW_HEROKU_SUPERVISOR_PID": str(supervisor_pid),
    }
    return subprocess.Popen(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_app_waits_for_the_migration_flag(tmp_path: Path) -> None:
    """uvicorn holds the app back while the migration runs (for as long as it takes: there is
    no time limit to test, the wait has none) and goes on once the supervisor's flag exists."""
    flag = tmp_path / "migrated"
    waiting = _waiting_uvicorn(flag, os.getpid())
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(1.5)
        flag.touch()
        out, err = waiting.communicate(timeout=10)
        assert (waiting.returncode, out) == (0, "migrated\n"), err
    finally:
        waiting.kill()


@pytest.mark.parametrize("reaped", [True, False], ids=["exited", "zombie"])
def test_the_app_stops_waiting_when_the_supervisor_is_gone(tmp_path: Path, reaped: bool) -> None:
    """Also when the killed supervisor is a zombie its parent has not reaped yet."""
    import time

    gone = subprocess.Popen(["true"])
    if reaped:
        gone.wait()
    else:
        while Path(f"/proc/{gone.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
    waiting = _waiting_uvicorn(tmp_path / "never", gone.pid)
    try:
        out, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
    gone.wait()
    assert waiting.returncode == 1
    assert out == ""
    assert "the supervisor exited before the database was migrated" in err
