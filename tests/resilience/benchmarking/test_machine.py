"""scripts/benchmarking/machine.py: the machine facts the report names."""

from __future__ import annotations

import os
import re

from scripts.benchmarking.machine import accounts_check_ms, auth_check_ms, load_average, uptime


def test_load_average_is_the_one_minute_figure() -> None:
    before = os.getloadavg()[0]
    reported = load_average()
    after = os.getloadavg()[0]
    assert re.fullmatch(r"\d+\.\d\d", reported), reported
    # The kernel updates it every 5 s: the figure is one of the two read around it.
    assert float(reported) in (round(before, 2), round(after, 2))


def test_uptime_names_the_load_average() -> None:
    assert "load average" in uptime()


def test_an_auth_check_takes_time() -> None:
    """bcrypt at the image's cost: measurably more than nothing (a cheap hash would be ~0)."""
    assert auth_check_ms(checks=2) > 0.5


def test_an_accounts_login_check_takes_time() -> None:
    """werkzeug's default password hash, as MLflow's auth store makes it: far from free."""
    assert accounts_check_ms(checks=1) > 1.0
