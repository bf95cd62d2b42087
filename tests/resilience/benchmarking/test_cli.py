"""scripts/benchmarking/cli.py: options, their errors, and which stacks a run measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.benchmarking.cli import DEFAULT_RESULTS_DIR, parse_args, stacks_to_run
from tests.support.services import TEST_ARTIFACTS


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--clients", "1,x"], "--clients"),
        (["--clients", ""], "--clients"),
        (["--workers", "0"], "--workers"),
        (["--duration", "0"], "--duration"),
        (["--rounds", "0"], "--rounds"),
        (["--settle", "-1"], "--settle"),
        (["--mix-seconds", "601"], "--mix-seconds"),
        (["--db-latency-ms", "60"], "--db-latency-ms"),
        (["--db-latency-ms", "-1"], "--db-latency-ms"),
    ],
)
def test_bad_options_are_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_quick_shortens_everything() -> None:
    args = parse_args(["--quick"])
    assert args.duration == 3.0
    assert args.client_counts == [1, 16]
    assert args.worker_counts == []
    assert args.rounds == 4
    assert args.mix_seconds == 0.0
    full = parse_args([])
    assert full.duration == 10.0
    assert full.client_counts == [1, 4, 16]
    assert full.worker_counts == [1, 2, 3]


def test_results_go_under_test_artifacts_by_default() -> None:
    assert parse_args([]).results_dir == DEFAULT_RESULTS_DIR
    assert DEFAULT_RESULTS_DIR.parent == TEST_ARTIFACTS


def test_doc_is_refused_with_where_the_results_go(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark never edits docs: asking it to is an error that says what to do."""
    with pytest.raises(SystemExit):
        parse_args(["--doc", "docs/benchmark.md"])
    error = capsys.readouterr().err
    assert "--doc" in error
    assert "results.md" in error
    assert parse_args(["--no-doc"]).duration == 10.0  # older command lines still run


def test_the_stacks_are_ours_accounts_the_recipe_then_worker_variants() -> None:
    names = [stack.name for stack in stacks_to_run(parse_args(["--workers", "1,2,3"]))]
    assert names == [
        "ours (defaults, 2w)",
        "ours (accounts, 2w)",
        "2021 recipe",
        "ours workers=1",
        "ours workers=3",
    ]
    only = stacks_to_run(
        parse_args(["--no-recipe", "--no-ours", "--no-accounts", "--workers", "2"])
    )
    assert [(stack.name, stack.env) for stack in only] == [
        ("ours workers=2", {"WEB_CONCURRENCY": "2"})
    ]
    assert len({stack.database for stack in stacks_to_run(parse_args([]))}) == 5


def test_accounts_runs_log_in_as_an_editor_and_the_uncached_run_turns_the_cache_off() -> None:
    stacks = stacks_to_run(parse_args(["--workers", "", "--accounts-without-cache"]))
    accounts, uncached = (s for s in stacks if s.env.get("MLFLOW_HEROKU_LOGIN_MODE"))
    assert "MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS" not in accounts.env  # the image's default
    assert uncached.env["MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS"] == "0"
    assert accounts.direct_needs_login
    assert uncached.direct_needs_login
    env = {"MLFLOW_TRACKING_USERNAME": "bench-user", "MLFLOW_TRACKING_PASSWORD": "pw-of-the-load"}
    accounts.prepare(Path("."), env)
    assert json.loads(env["MLFLOW_HEROKU_PEOPLE"]) == [{"username": "bench-user", "role": "editor"}]
    assert json.loads(env["MLFLOW_HEROKU_PEOPLE_PASSWORDS"]) == {"bench-user": "pw-of-the-load"}
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] != "bench-user"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] != "pw-of-the-load"
    assert len(env["MLFLOW_CRYPTO_KEK_PASSPHRASE"]) >= 32
