"""The resident supervisor: light imports, redaction, the MLflow launch line."""

from __future__ import annotations

import subprocess


def test_resident_supervisor_stays_light() -> None:
    """The supervisor lives as long as the dyno: no mlflow, SQLAlchemy, jinja2 or bcrypt."""
    import sys

    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mlflow_heroku_runtime.supervisor;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'mlflow', 'sqlalchemy', 'jinja2', 'bcrypt', 'pandas', 'numpy'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ENTRYPOINT.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_redactor_removes_every_secret_longest_first() -> None:
    from mlflow_heroku_runtime.supervisor import Redactor

    redact = Redactor(["p@ss:word", "p%40ss%3Aword", "p@ss", "abc"])
    line = "url postgresql://u:p%40ss%3Aword@h/d and p@ss:word and p@ss, abc stays"
    assert redact(line) == "url postgresql://u:***@h/d and *** and ***, abc stays"


def test_supervisor_binds_one_port_per_forked_worker_in_slot_order() -> None:
    """gunicorn gets every port of the plan as its own --bind, in slot order, and this
    module as --config (for pre_fork); one worker is uvicorn alone on the plan's one port."""
    from mlflow_heroku_runtime.plan import Plan
    from mlflow_heroku_runtime.supervisor import Supervisor

    def argv(ports: list[int]) -> list[str]:
        plan = Plan(
            runtime_dir="/tmp/x", nginx_config="/tmp/x/nginx.conf", port=5000,
            mlflow_ports=ports, backend_store_uri="sqlite:///x", database_description="x",
            artifacts_destination="/tmp/a", workers=len(ports), db_wait_seconds=40,
            local=False, username="u", password="p",
        )  # fmt: skip
        return Supervisor(plan).mlflow_argv()

    forked = argv([41000, 41001, 41002])
    assert [arg for arg in forked if arg.startswith("--bind")] == [
        "--bind=127.0.0.1:41000",
        "--bind=127.0.0.1:41001",
        "--bind=127.0.0.1:41002",
    ]
    assert forked[forked.index("--workers") + 1] == "3"
    assert forked[forked.index("--config") + 1] == "python:mlflow_heroku_runtime.forked_workers"
    alone = argv([41000])
    assert "uvicorn" in alone
    assert alone[alone.index("--port") + 1] == "41000"
