"""Facts about this machine and run that the report names next to its figures."""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import time
from typing import Any

import psutil
from mlflow_heroku_runtime.htpasswd import htpasswd_line


def auth_check_ms(checks: int = 50) -> float:
    """Milliseconds nginx spends per request verifying our htpasswd line (same bcrypt cost;
    crypt() in nginx and the bcrypt library run the same algorithm)."""
    import bcrypt

    password = secrets.token_urlsafe(18)
    hashed = htpasswd_line("user", password).strip().split(":", 1)[1].encode()
    began = time.perf_counter()
    for _ in range(checks):
        assert bcrypt.checkpw(password.encode(), hashed)
    return (time.perf_counter() - began) * 1000 / checks


def accounts_check_ms(checks: int = 5) -> float:
    """Milliseconds MLflow's auth app spends per uncached login check: werkzeug's
    check_password_hash on a hash made as its store makes them (generate_password_hash)."""
    from werkzeug.security import check_password_hash, generate_password_hash

    password = secrets.token_urlsafe(18)
    hashed = generate_password_hash(password)
    began = time.perf_counter()
    for _ in range(checks):
        assert check_password_hash(hashed, password)
    return (time.perf_counter() - began) * 1000 / checks


def uptime() -> str:
    """`uptime`'s line: the time, and the load average other engineers' work adds."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def load_average() -> str:
    """The machine's 1-minute load average."""
    return f"{psutil.getloadavg()[0]:.2f}"


def machine_facts(argv: list[str]) -> dict[str, Any]:
    import mlflow  # heavy: imported only for its version string

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["scripts/benchmark.py", *argv]),
        "nproc": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "nginx": nginx.stderr.strip().replace("nginx version: ", ""),
        "uptime_before": uptime(),
        "auth_check_ms": auth_check_ms(),
        "accounts_check_ms": accounts_check_ms(),
    }
