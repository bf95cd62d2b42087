"""The resident supervisor: light imports, redaction, the held ports and the MLflow launch line,
its one stop."""

from __future__ import annotations

import dataclasses
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_heroku_runtime.plan import UVICORN_OPTIONS, Plan
from mlflow_heroku_runtime.settings import load_settings
from mlflow_heroku_runtime.supervisor import Supervisor

from tests.image.runtime_values import ACCOUNTS_ENV, ACCOUNTS_SECRETS, GOOD_ENV


def _supervisor(ports: list[int]) -> Supervisor:
    settings = dataclasses.replace(load_settings(GOOD_ENV), workers=len(ports))
    plan = Plan(
        settings=settings,
        runtime_dir="/tmp/x",
        nginx_config="/tmp/x/nginx.conf",
        mlflow_ports=ports,
    )
    return Supervisor(plan)


def test_resident_supervisor_stays_light() -> None:
    """The supervisor lives as long as the dyno: no mlflow, SQLAlchemy, jinja2 or bcrypt."""
    from tests.support.services import ENTRYPOINT

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mlflow_heroku_runtime.supervisor;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'mlflow', 'sqlalchemy', 'jinja2', 'bcrypt', 'pandas', 'numpy', 'uvicorn',"
        " 'gunicorn'}))"
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


def test_mlflow_gets_one_held_socket_per_forked_worker_in_slot_order() -> None:
    """gunicorn gets every held socket of the plan as its own --bind=fd://N, in slot order,
    and forked_workers as --config (its settings and pre_fork); one worker is uvicorn alone on
    the plan's one socket (--fd)."""
    forked = _supervisor([41000, 41001, 41002]).mlflow_argv([7, 8, 9])
    assert forked[1:3] == ["-m", "gunicorn"]
    assert [arg for arg in forked if arg.startswith("--bind")] == [
        "--bind=fd://7",
        "--bind=fd://8",
        "--bind=fd://9",
    ]
    assert forked[forked.index("--workers") + 1] == "3"
    assert forked[forked.index("--config") + 1] == "python:mlflow_heroku_runtime.forked_workers"
    alone = _supervisor([41000]).mlflow_argv([7])
    assert alone[1:3] == ["-m", "uvicorn"]
    assert alone[alone.index("--fd") + 1] == "7"
    assert "--port" not in alone
    assert "--host" not in alone


def test_held_ports_accept_connections_that_wait_for_mlflow() -> None:
    """Before MLflow runs, a held port completes connections at once and keeps what they
    send for whoever accepts later, HOLD_BACKLOG deep (or the kernel's cap)."""
    from mlflow_heroku_runtime.plan import HOLD_BACKLOG
    from mlflow_heroku_runtime.supervisor import hold_ports, kernel_backlog_limit

    [free] = _free_ports(1)
    [listener] = hold_ports([free])
    try:
        began = time.monotonic()
        clients = [socket.create_connection(("127.0.0.1", free), timeout=1) for _ in range(50)]
        assert time.monotonic() - began < 1
        clients[0].sendall(b"GET /health HTTP/1.1\r\n\r\n")
        assert listen_queue(listener) == (50, min(HOLD_BACKLOG, kernel_backlog_limit() or 4096))
        accepted, _address = listener.accept()  # what MLflow does once it serves
        with accepted:
            assert accepted.recv(64) == b"GET /health HTTP/1.1\r\n\r\n"
        for client in clients:
            client.close()
    finally:
        listener.close()


def listen_queue(listener: socket.socket) -> tuple[int, int]:
    """(connections waiting, queue length) of a listening socket: Linux reports them in
    TCP_INFO as tcpi_unacked and tcpi_sacked (include/uapi/linux/tcp.h; ss(8) shows them as
    Recv-Q and Send-Q of a listener)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    waiting, length = struct.unpack_from("II", info, 24)
    return waiting, length


def test_a_taken_port_is_named_and_nothing_stays_bound() -> None:
    from mlflow_heroku_runtime.supervisor import PortTakenError, hold_ports

    first, taken = _free_ports(2)
    with socket.socket() as other:
        other.bind(("127.0.0.1", taken))
        other.listen()
        with pytest.raises(PortTakenError) as raised:
            hold_ports([first, taken])
    assert raised.value.message == (
        f"MLflow could not listen on 127.0.0.1:{taken}: another program took that port after "
        "it was chosen; start again (the ports are chosen anew)"
    )
    with socket.socket() as probe:  # the first port was released again
        probe.bind(("127.0.0.1", first))


def test_a_worker_port_taken_after_prepare_stops_the_start_before_nginx(tmp_path: Path) -> None:
    """The supervisor itself, on a plan whose second MLflow port another program took after
    prepare chose it: one line naming the port, exit 1, nginx never started."""
    from tests.support.services import ENTRYPOINT

    ports = _free_ports(2)
    settings = dataclasses.replace(load_settings(GOOD_ENV), workers=2)
    plan = Plan(
        settings=settings,
        runtime_dir=str(tmp_path),
        nginx_config=str(tmp_path / "nginx.conf"),  # never read: the start ends before nginx
        mlflow_ports=ports,
    )
    run = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from mlflow_heroku_runtime.plan import Plan;"
        "from mlflow_heroku_runtime.supervisor import Supervisor;"
        "sys.exit(Supervisor(Plan.from_json(sys.stdin.read())).run())"
    )
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[1]))
        other.listen()
        result = subprocess.run(
            [sys.executable, "-c", run, str(ENTRYPOINT.parent)],
            input=plan.to_json(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1, lines
    assert lines[0] == (
        f"entrypoint: MLflow could not listen on 127.0.0.1:{ports[1]}: another program took "
        "that port after it was chosen; start again (the ports are chosen anew)"
    )
    assert not any("nginx" in line for line in lines), lines
    assert lines[-1] == "entrypoint: stopped (exit 1)"
    with socket.socket() as probe:  # nothing of ours stays bound
        probe.bind(("127.0.0.1", ports[0]))


def _free_ports(count: int) -> list[int]:
    from mlflow_heroku_runtime.prepare import free_loopback_ports

    return free_loopback_ports(count, avoid=0)


def test_both_launches_run_on_one_definition_of_uvicorns_settings() -> None:
    """uvicorn's own command-line parser reads the one worker's options back as exactly
    plan.UVICORN_OPTIONS, plus MLflow's logging config; the forked workers' uvicorn Config is
    built from the same keywords and the same file."""
    from mlflow_heroku_runtime.forked_workers import MlflowWorker
    from mlflow_heroku_runtime.internals import mlflow_uvicorn_log_config
    from uvicorn import main as uvicorn_command

    argv = _supervisor([41000]).mlflow_argv([7])
    context = uvicorn_command.make_context("uvicorn", argv[3:])
    expected = {**UVICORN_OPTIONS, "log_config": mlflow_uvicorn_log_config()}
    assert {name: context.params[name] for name in expected} == expected
    assert context.params["app"] == "mlflow_heroku_runtime.asgi:app"
    assert expected == MlflowWorker.CONFIG_KWARGS


def test_the_first_stop_reason_is_the_one_kept() -> None:
    supervisor = _supervisor([41000])
    supervisor.stop("received SIGTERM; stopping gracefully", 0)
    supervisor.stop("nginx exited unexpectedly (exit 0); stopping the rest", 1)
    assert supervisor.stopping is not None
    assert (supervisor.stopping.reason, supervisor.stopping.code) == (
        "received SIGTERM; stopping gracefully",
        0,
    )


def test_only_the_migration_step_gets_the_accounts_admin_and_people(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow_heroku_runtime.plan import MIGRATION_ONLY_VARIABLES
    from mlflow_heroku_runtime.supervisor import migration_only_environment

    for name, value in ACCOUNTS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(ACCOUNTS_ENV)
    plan = Plan(settings=settings, runtime_dir="/tmp/x", nginx_config="/x", mlflow_ports=[1])
    mlflow_env = Supervisor(plan).child_env()
    assert set(MIGRATION_ONLY_VARIABLES) & set(mlflow_env) == set()
    for secret in ACCOUNTS_SECRETS[3:]:
        assert secret not in " ".join(mlflow_env.values())
    assert migration_only_environment() == {
        name: ACCOUNTS_ENV[name] for name in MIGRATION_ONLY_VARIABLES
    }
    assert mlflow_env["MLFLOW_HEROKU_LOGIN_MODE"] == "accounts"
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
