"""The plan prepare hands the supervisor, and the listen check both make."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest
from mlflow_heroku_runtime.plan import Settings

from tests.image.runtime_values import GOOD_ENV


def _settings(**changes: Any) -> Settings:
    from mlflow_heroku_runtime.settings import load_settings

    return dataclasses.replace(load_settings(GOOD_ENV), **changes)


def test_plan_round_trips_through_json() -> None:
    from mlflow_heroku_runtime.plan import Plan

    settings = _settings(password='pw with "quotes" and é', secrets=("pw", "p@ss"))
    plan = Plan(
        settings=settings,
        runtime_dir="/tmp/x",
        nginx_config="/tmp/x/nginx.conf",
        mlflow_ports=[40000, 40001],
    )
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("local", "dyno", "fix"),
    [
        (True, False, "pass --port N"),
        (False, True, "another process in this dyno took $PORT"),
        (False, False, "set PORT to a free port"),
    ],
)
def test_a_taken_port_is_named_with_its_fix(local: bool, dyno: bool, fix: str) -> None:
    """Another program's listener on the address nginx would bind: one line with the address
    and what to do; none once it is gone (a port in TIME_WAIT does not count)."""
    from mlflow_heroku_runtime.plan import listen_problem

    with socket.socket() as other:
        # As nginx (an earlier start of this stack) sets it, so its TIME_WAIT entries do too.
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # The listener's side closes a connection first: its port stays in TIME_WAIT.
        client = socket.create_connection(("127.0.0.1", port), timeout=1)
        accepted, _address = other.accept()
        accepted.close()
        client.close()
        settings = _settings(
            port=port, listen_address="127.0.0.1", local=local, behind_heroku_router=dyno
        )
        problem = listen_problem(settings)
        assert problem is not None
        assert problem.startswith(f"127.0.0.1:{port} is already in use: ")
        assert fix in problem
    assert listen_problem(settings) is None


def test_an_address_not_on_this_machine_is_named() -> None:
    from mlflow_heroku_runtime.plan import listen_problem

    settings = _settings(port=8080, listen_address="192.0.2.1")  # TEST-NET-1: never local
    problem = listen_problem(settings)
    assert problem is not None
    assert "192.0.2.1 is not an address of this machine" in problem
    assert "MLFLOW_HEROKU_LISTEN_ADDRESS" in problem
