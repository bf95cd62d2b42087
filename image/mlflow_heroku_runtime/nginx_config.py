"""Renders nginx.conf.j2 for one start of the stack."""

from __future__ import annotations

import base64
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

from .errors import ConfigError
from .plan import UPSTREAM_IDLE_SECONDS

TEMPLATE_DIR = Path(__file__).parent
MIME_TYPES = Path("/etc/nginx/mime.types")


@dataclass(frozen=True)
class NginxParams:
    runtime_dir: Path
    htpasswd_path: Path
    port: int
    mlflow_ports: list[int]  # one per MLflow worker (plan.Plan.mlflow_ports)
    username: str
    password: str
    # From settings (their defaults live in settings.DEFAULTS only).
    max_body_size: str
    proxy_read_timeout: int
    auth_failures_per_minute: int
    listen_address: str = "0.0.0.0"  # noqa: S104 (a dyno must listen on all interfaces)
    worker_processes: int = 1
    error_log_level: str = "warn"
    worker_user: str = ""  # only when started as root: "user group"
    trust_forwarded_for: bool = True  # behind Heroku's router (DYNO set)


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


def render(params: NginxParams) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (nginx config, not HTML)
        keep_trailing_newline=True,
    )
    template = environment.get_template("nginx.conf.j2")
    # Every field but the login itself, which enters only as its Authorization header value.
    fields = {
        name: value
        for name, value in asdict(params).items()
        if name not in ("username", "password")
    }
    return template.render(
        **fields,
        expected_authorization_pattern=expected_authorization_pattern(
            params.username, params.password
        ),
        upstream_idle_seconds=UPSTREAM_IDLE_SECONDS,
        mime_types=MIME_TYPES,
        mlflow_ui_dir=mlflow_ui_dir(),
    )
