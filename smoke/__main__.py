"""Command line: ``python -m smoke [--url URL] [--username NAME] [--pulumi-stack NAME] ...``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from smoke.check import SmokeCheck
from smoke.target import (
    PASSWORD_VARIABLE,
    URL_VARIABLE,
    USERNAME_VARIABLE,
    TargetError,
    resolve_target,
)

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Check a deployed mlflow-heroku tracking server end to end, one line per step:
  health      GET /health answers 200 without a login
  auth        the API answers 401 without the login and 200 with it
  experiment  create an experiment (named smoke-check-<time>-<random>)
  run         create a run whose artifacts go through the proxy (mlflow-artifacts:)
  log         log a param and a metric
  artifact    upload and download a small file through /api/2.0/mlflow-artifacts/artifacts/
  read-back   read the param, the metric and the artifact listing back
  cleanup     delete what the check created (also after a failed step)
"""

EPILOG = f"""\
Each setting comes from the first source that has it: the options, then the outputs of
--pulumi-stack, then the environment ({URL_VARIABLE}, {USERNAME_VARIABLE}, {PASSWORD_VARIABLE}).
Prefer {PASSWORD_VARIABLE} over --password: options are visible to other users in the
process list. The password is never printed.

Exit status: 0 every step passed; 1 a step failed (the last line names it); 2 bad usage or
a target that could not be resolved.

Examples:
  python -m smoke --pulumi-stack dev
  {URL_VARIABLE}=https://my-app.herokuapp.com {USERNAME_VARIABLE}=mlflow \\
    {PASSWORD_VARIABLE}=... python -m smoke --wait 120
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoke",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help=f"the tracking server's URL (default: ${URL_VARIABLE})")
    parser.add_argument("--username", help=f"the basic-auth user (default: ${USERNAME_VARIABLE})")
    parser.add_argument(
        "--password",
        help=f"the basic-auth password (default: ${PASSWORD_VARIABLE}, which is safer)",
    )
    parser.add_argument(
        "--pulumi-stack",
        metavar="NAME",
        help="read URL and login from `pulumi stack output --json --show-secrets --stack NAME`",
    )
    parser.add_argument(
        "--pulumi-cwd",
        metavar="DIR",
        type=Path,
        help="the Pulumi project directory for --pulumi-stack (default: the current directory)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="per-request timeout (default: 30, Heroku's router limit)",
    )
    parser.add_argument(
        "--wait",
        type=_non_negative_seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying /health this long, e.g. while a new release boots (default: 0)",
    )
    return parser


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = resolve_target(
            url=args.url,
            username=args.username,
            password=args.password,
            pulumi_stack=args.pulumi_stack,
            pulumi_cwd=args.pulumi_cwd,
            environ=os.environ if environ is None else environ,
        )
    except TargetError as error:
        print(f"smoke check: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"smoke check of {target.url} as {target.username!r}", flush=True)
    check = SmokeCheck(target, timeout=args.timeout, wait=args.wait)
    if check.run():
        print(f"smoke check passed: {len(check.results)} steps", flush=True)
        return EXIT_OK
    print(f"smoke check failed at step {check.failed_step!r}", file=sys.stderr, flush=True)
    return EXIT_STEP_FAILED


if __name__ == "__main__":
    sys.exit(main())
