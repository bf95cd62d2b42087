"""Which server to check and with which login: from arguments, a Pulumi stack or the environment."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The environment variables MLflow's own client reads, so a shell set up for MLflow works as is.
URL_VARIABLE = "MLFLOW_TRACKING_URI"
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"  # noqa: S105 (a variable name, not a secret)

# Stack output names exported by the Pulumi program (__main__.py).
URL_OUTPUT = "mlflowTrackingUri"
USERNAME_OUTPUT = "loginUser"
PASSWORD_OUTPUT = "loginPassword"  # noqa: S105 (an output name, not a secret)

PULUMI_TIMEOUT_SECONDS = 120

RunCommand = Callable[..., "subprocess.CompletedProcess[str]"]


class TargetError(Exception):
    """The target or its login is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Target:
    """A tracking server URL (no trailing slash) and its basic-auth login."""

    url: str
    username: str
    password: str = field(repr=False)


def normalise_url(raw: str) -> str:
    """Check that raw is an http(s) URL without a login in it; return it without trailing '/'.

    Error messages never repeat the URL when it carries a login, so no password is echoed.
    """
    text = raw.strip()
    # Any "@" may be a login, also in a URL too malformed to parse (a mistyped scheme hides
    # the host from urlsplit): such a URL is refused without being repeated.
    if "@" in text:
        raise TargetError(
            "the URL contains a login (user:password@host) or an '@': remove it from the URL "
            f"and pass the login with --username and the {PASSWORD_VARIABLE} environment variable"
        )
    not_a_url = TargetError(
        f"not an http(s) URL: {text!r}; pass the tracking URI, e.g. "
        "https://my-app-1a2b3c4d5e6f.herokuapp.com"
    )
    try:
        parsed = urllib.parse.urlsplit(text)
        parsed.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        raise not_a_url from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise not_a_url
    if parsed.query or parsed.fragment:
        raise TargetError(f"the URL must not have a query or fragment: {text!r}")
    return text.rstrip("/")


def stack_outputs(
    stack: str, cwd: Path | None = None, run: RunCommand = subprocess.run
) -> dict[str, object]:
    """The outputs of a Pulumi stack, secrets in clear text (kept in memory only)."""
    argv: Sequence[str] = [
        "pulumi",
        "stack",
        "output",
        "--json",
        "--show-secrets",
        "--non-interactive",
        "--stack",
        stack,
    ]
    try:
        result = run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=PULUMI_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise TargetError(
            "the pulumi CLI was not found on PATH: install it "
            "(https://www.pulumi.com/docs/iac/download-install/) and log in to the state backend, "
            f"or pass --url and --username and set {PASSWORD_VARIABLE} instead of --pulumi-stack"
        ) from None
    except subprocess.TimeoutExpired:
        raise TargetError(
            f"`pulumi stack output` did not finish within {PULUMI_TIMEOUT_SECONDS} s: "
            "check that you are logged in to the state backend (pulumi whoami)"
        ) from None
    if result.returncode != 0:
        # Pulumi's error text names the problem (no such stack, not logged in); stdout would
        # hold the secrets, so only stderr is shown.
        detail = (result.stderr or "").strip().splitlines()
        reason = detail[-1] if detail else "no error output"
        raise TargetError(
            f"`pulumi stack output --stack {stack}` failed with exit code {result.returncode}: "
            f"{reason} (run it from the project directory or pass --pulumi-cwd)"
        )
    try:
        outputs = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise TargetError(
            f"`pulumi stack output --json --stack {stack}` did not print JSON; "
            "is `pulumi` the Pulumi CLI?"
        ) from None
    if not isinstance(outputs, dict):
        raise TargetError(f"`pulumi stack output --json --stack {stack}` did not print an object")
    return outputs


def _output_text(outputs: Mapping[str, object], name: str, stack: str) -> str:
    value = outputs.get(name)
    if not isinstance(value, str) or not value:
        known = ", ".join(sorted(outputs)) or "none"
        raise TargetError(
            f"stack {stack!r} has no output {name!r} (its outputs: {known}); "
            "deploy it with `pulumi up` first"
        )
    return value


def resolve_target(
    *,
    url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    pulumi_stack: str | None = None,
    pulumi_cwd: Path | None = None,
    environ: Mapping[str, str],
    run: RunCommand = subprocess.run,
) -> Target:
    """Combine the sources; each value comes from the first that has it.

    Order: explicit arguments, then the Pulumi stack's outputs (when a stack is named), then
    the MLFLOW_TRACKING_* environment variables.
    """
    from_stack: dict[str, str] = {}
    if pulumi_stack:
        outputs = stack_outputs(pulumi_stack, pulumi_cwd, run)
        from_stack = {
            name: _output_text(outputs, name, pulumi_stack)
            for name in (URL_OUTPUT, USERNAME_OUTPUT, PASSWORD_OUTPUT)
        }
    chosen_url = url or from_stack.get(URL_OUTPUT) or environ.get(URL_VARIABLE)
    chosen_username = username or from_stack.get(USERNAME_OUTPUT) or environ.get(USERNAME_VARIABLE)
    chosen_password = password or from_stack.get(PASSWORD_OUTPUT) or environ.get(PASSWORD_VARIABLE)
    if not chosen_url:
        raise TargetError(
            f"no server given: pass --url, set {URL_VARIABLE}, or name a stack with --pulumi-stack"
        )
    if not chosen_username or not chosen_password:
        raise TargetError(
            f"no login given: pass --username and set {PASSWORD_VARIABLE} "
            f"(or set {USERNAME_VARIABLE}), or name a stack with --pulumi-stack"
        )
    return Target(normalise_url(chosen_url), chosen_username, chosen_password)
