"""Every name the runtime uses that another package does not document (MLflow, gunicorn,
Starlette, ...), in one place.

Each use is a small function here with a comment on why no public path does the job, and is
registered with ``@internal`` together with a check of the installed version.
``tests/image/test_internals.py`` runs every check, so an upgrade that moves a name fails with
a message naming the package, its version and what broke. Nothing else in the runtime may
reach into another package's private names: the same test scans the runtime's source for them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    package: str  # the distribution whose version matters, e.g. "mlflow"
    name: str  # what we rely on, e.g. "mlflow.server.handlers._get_tracking_store"
    why: str  # why no public path does it (one line)
    check: Callable[[], None]  # raises (AssertionError, AttributeError, ...) when it broke


INTERNALS: list[Internal] = []


def internal(
    package: str, name: str, why: str
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register ``check`` as the installed-version check of one private name."""

    def register(check: Callable[[], None]) -> Callable[[], None]:
        INTERNALS.append(Internal(package, name, why, check))
        return check

    return register


def broken() -> list[str]:
    """One message per private name the installed versions no longer provide as we use it."""
    problems = []
    for entry in INTERNALS:
        try:
            entry.check()
        except Exception as error:
            version = importlib.metadata.version(entry.package)
            problems.append(
                f"{entry.package} {version}: {entry.name} changed ({type(error).__name__}: "
                f"{error}); it is used because {entry.why}"
            )
    return problems


# ----------------------------------------------------------------------------- MLflow

# ----------------------------------------------------------------------------- SQLAlchemy

# ----------------------------------------------------------------------------- gunicorn, uvicorn

# ----------------------------------------------------------------------------- Starlette
