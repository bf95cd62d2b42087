"""Renders nginx.conf.j2 for one start of the stack, from the settings and what prepare chose."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import jinja2

from .errors import ConfigError
from .plan import READY_FLAG_NAME, UPSTREAM_IDLE_SECONDS, Settings

TEMPLATE_DIR = Path(__file__).parent
MIME_TYPES = Path("/etc/nginx/mime.types")


def expected_authorization(username: str, password: str) -> str:
    """The Authorization header a client with the right login sends (UTF-8, like browsers)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def expected_authorization_pattern(username: str, password: str) -> str:
    """A case-sensitive regex matching exactly that header. base64 brings only A-Z a-z 0-9
    + / =, of which only + means something in a regex; none needs quoting in nginx."""
    return "^" + expected_authorization(username, password).replace("+", "[+]") + "$"


def mlflow_ui_dir() -> Path:
    """The UI's React build in the installed MLflow (what its Flask app serves at "/" and
    /static-files/), found without importing MLflow."""
    spec = importlib.util.find_spec("mlflow")
    locations = list(spec.submodule_search_locations or []) if spec else []
    build = Path(locations[0]).resolve() / "server" / "js" / "build" if locations else None
    if build is None or not (build / "index.html").is_file():
        raise ConfigError(
            [
                f"MLflow's UI files are missing (no index.html in {build}): install the mlflow "
                "wheel from the lock (image/requirements.txt), not mlflow-skinny or a source "
                "checkout without its built UI"
            ]
        )
    return build


def render(
    settings: Settings,
    *,
    runtime_dir: Path,
    htpasswd_path: Path,
    mlflow_ports: list[int],  # one per MLflow worker (plan.Plan.mlflow_ports)
    worker_user: str = "",  # only when started as root: "user group"
) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (nginx config, not HTML)
        keep_trailing_newline=True,
    )
    template = environment.get_template("nginx.conf.j2")
    # The shared login enters only as its Authorization header value, never as itself; in
    # accounts mode nginx knows no login at all.
    return template.render(
        settings=settings,
        accounts=settings.accounts,
        runtime_dir=runtime_dir,
        ready_flag=runtime_dir / READY_FLAG_NAME,  # the supervisor's: MLflow serves
        htpasswd_path=htpasswd_path,
        mlflow_ports=mlflow_ports,
        worker_user=worker_user,
        expected_authorization_pattern=(
            ""
            if settings.accounts
            else expected_authorization_pattern(settings.username, settings.password)
        ),
        upstream_idle_seconds=UPSTREAM_IDLE_SECONDS,
        mime_types=MIME_TYPES,
        worker_processes=1,
        error_log_level="warn",
        mlflow_ui_dir=mlflow_ui_dir(),
    )
