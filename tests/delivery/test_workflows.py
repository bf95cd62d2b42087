"""The GitHub workflows: valid for GitHub, clean under zizmor, and shaped the way delivery needs.

No Docker engine or GitHub here, so the workflows are checked statically (schema, zizmor, the
structure below) and the shell each guard step runs is executed for real with bash.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the lock

from tests.infra.heroku_double import API_ACCEPT, running_fake_heroku
from tests.support.services import TEST_ARTIFACTS

REPO_ROOT = Path(__file__).resolve().parents[2]
GITHUB_DIR = REPO_ROOT / ".github"
WORKFLOW_DIR = GITHUB_DIR / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml"))
ACTIONS = sorted(GITHUB_DIR.glob("actions/*/action.yml"))
TOOLS = Path(sys.executable).parent
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
STACKS = sorted(path.name.split(".")[1] for path in REPO_ROOT.glob("Pulumi.*.yaml"))
PULUMI_ACTION = "pulumi/actions@"


def load(path: Path) -> dict[str, Any]:
    document: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def workflow(name: str) -> dict[str, Any]:
    return load(WORKFLOW_DIR / name)


def all_steps() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, step) for every step of every workflow job and composite action."""
    for path in WORKFLOWS:
        for job_id, job in load(path)["jobs"].items():
            for step in job.get("steps", []):
                yield f"{path.name}:{job_id}", step
    for path in ACTIONS:
        for step in load(path)["runs"].get("steps", []):
            yield str(path.relative_to(REPO_ROOT)), step


def pulumi_jobs() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workflow:job, job, the pulumi/actions step's `with`) for every job running Pulumi."""
    for path in WORKFLOWS:
        for job_id, job in load(path)["jobs"].items():
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith(PULUMI_ACTION):
                    yield f"{path.name}:{job_id}", job, step["with"]


def run_step_script(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a workflow step's shell as GitHub does (bash -e, pipefail)."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def step_named(job: dict[str, Any], prefix: str) -> dict[str, Any]:
    matches = [step for step in job["steps"] if str(step.get("name", "")).startswith(prefix)]
    assert len(matches) == 1, f"expected one step named {prefix!r}"
    step: dict[str, Any] = matches[0]
    return step


# --------------------------------------------------------------------------- external checkers


def test_the_expected_workflows_exist() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {
        "pull-request.yml",
        "deploy.yml",
        "destroy.yml",
        "image.yml",
        "tests.yml",
        "maintenance.yml",
    } <= names
    assert STACKS == ["dev", "prod"]


def test_workflows_and_actions_match_githubs_schemas() -> None:
    checks = [
        ("vendor.github-workflows", WORKFLOWS),
        ("vendor.github-actions", ACTIONS),
        ("vendor.dependabot", [GITHUB_DIR / "dependabot.yml"]),
    ]
    for schema, paths in checks:
        result = subprocess.run(
            [str(TOOLS / "check-jsonschema"), "--builtin-schema", schema, *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"{schema}:\n{result.stdout}{result.stderr}"


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: a job without runs-on or uses is not a workflow."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")
    result = subprocess.run(
        [
            str(TOOLS / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(broken),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0


def zizmor_findings(target: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(TOOLS / "zizmor"), "--offline", "--format", "json", "--no-progress", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    # Exit codes: 0 clean, 10-14 findings by severity; anything else is zizmor failing.
    assert result.returncode in (0, 10, 11, 12, 13, 14), result.stderr
    return findings


def test_zizmor_reports_nothing() -> None:
    findings = zizmor_findings(GITHUB_DIR)
    summary = [
        f"{finding['ident']}: {finding['desc']} at "
        f"{finding['locations'][0]['symbolic']['key']['Local']['given_path']}"
        for finding in findings
    ]
    assert summary == []


def test_zizmor_flags_an_unsafe_workflow(tmp_path: Path) -> None:
    """zizmor really audits here: a tag-pinned action with persisted credentials is flagged."""
    unsafe = tmp_path / ".github" / "workflows" / "unsafe.yml"
    unsafe.parent.mkdir(parents=True)
    unsafe.write_text(
        "on: pull_request\npermissions: {}\njobs:\n  build:\n    runs-on: ubuntu-24.04\n"
        "    permissions:\n      contents: read\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    idents = {finding["ident"] for finding in zizmor_findings(tmp_path)}
    assert {"artipacked", "template-injection"} <= idents


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_permissions_are_empty_at_the_top_and_explicit_per_job(path: Path) -> None:
    document = load(path)
    assert document["permissions"] == {}
    for job_id, job in document["jobs"].items():
        assert "permissions" in job, f"job {job_id} has no permissions block"
        assert "write-all" not in str(job["permissions"]), job_id


def test_every_third_party_action_is_pinned_to_a_commit() -> None:
    uses_lines = [
        line.strip()
        for path in [*WORKFLOWS, *ACTIONS]
        for line in path.read_text().splitlines()
        if re.match(r"^\s*(- )?uses:", line)
    ]
    assert uses_lines
    for line in uses_lines:
        reference = line.split("uses:", 1)[1].split("#", 1)[0].strip()
        if reference.startswith("$/"):
            continue  # this repository, at the running commit
        assert SHA_PIN.match(reference), f"not pinned to a full commit SHA: {line}"
        # The comment keeps the human-readable version next to the SHA (Dependabot updates both).
        assert re.search(r"#\s*v?\d+(\.\d+)*\s*$", line), f"no version comment: {line}"


def test_checkout_never_persists_credentials() -> None:
    checkouts = [
        (where, step)
        for where, step in all_steps()
        if str(step.get("uses", "")).startswith("actions/checkout@")
    ]
    assert checkouts
    for where, step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False, where


def test_every_pulumi_job_holds_its_stacks_concurrency_group() -> None:
    jobs = list(pulumi_jobs())
    assert {where.split(":")[0] for where, _, _ in jobs} == {
        "pull-request.yml",
        "deploy.yml",
        "destroy.yml",
    }
    for where, job, settings in jobs:
        concurrency = job["concurrency"]
        assert concurrency["group"] == f"pulumi-{settings['stack-name']}", where
        # Cancelling a running `pulumi up` would leave the stack locked and half-applied.
        assert concurrency["cancel-in-progress"] is False, where
        # With GitHub's default of one pending job per group, a newly queued preview would
        # cancel a deploy or destroy already waiting for the group.
        assert concurrency["queue"] == "max", where


def test_nothing_cancels_a_running_pulumi_job() -> None:
    """Workflow-level cancel-in-progress would kill running Pulumi jobs (and leave locks)."""
    for where, _, _ in pulumi_jobs():
        document = workflow(where.split(":")[0])
        assert document.get("concurrency", {}).get("cancel-in-progress") is not True, where


def test_pulumi_outputs_are_not_printed() -> None:
    for where, _, settings in pulumi_jobs():
        assert settings.get("suppress-outputs") is True, where


def test_pull_requests_preview_every_stack_with_one_updated_comment_each() -> None:
    document = workflow("pull-request.yml")
    assert list(document["on"]) == ["pull_request"]
    preview = document["jobs"]["preview"]
    assert preview["needs"] == "tests"
    assert sorted(preview["strategy"]["matrix"]["stack"]) == STACKS
    settings = step_named(preview, "pulumi preview")["with"]
    assert settings["command"] == "preview"
    assert settings["stack-name"] == "${{ matrix.stack }}"
    assert settings["comment-on-pr"] is True
    assert settings["edit-pr-comment"] is True
    assert preview["permissions"] == {
        "contents": "read",
        "id-token": "write",
        "pull-requests": "write",
    }
    for called in ("tests", "image"):
        assert document["jobs"][called]["uses"] == f"$/.github/workflows/{called}.yml"
        assert "if" not in document["jobs"][called]  # forks and Dependabot are tested too
    # Only runs that get the repository's Actions secrets preview (not forks, not Dependabot).
    condition = " ".join(preview["if"].split())
    assert condition == (
        "github.event.pull_request.head.repo.full_name == github.repository "
        "&& github.actor != 'dependabot[bot]'"
    )


def test_main_deploys_dev_then_smoke_checks_then_prod_behind_its_environment() -> None:
    document = workflow("deploy.yml")
    assert document["on"] == {"push": {"branches": ["main"]}}
    dev, prod = document["jobs"]["dev"], document["jobs"]["prod"]
    assert sorted(dev["needs"]) == ["image", "tests"]
    assert prod["needs"] == "dev"
    assert dev["environment"]["name"] == "dev"
    assert prod["environment"]["name"] == "prod"
    for job, stack in ((dev, "dev"), (prod, "prod")):
        names = [str(step.get("name", step.get("uses", ""))) for step in job["steps"]]
        up_index = names.index("pulumi up")
        smoke = job["steps"][up_index + 1]
        assert smoke["run"] == f".venv/bin/python -m smoke --pulumi-stack {stack} --wait 180"
        assert job["steps"][up_index]["with"]["command"] == "up"
        assert job["steps"][up_index]["with"]["stack-name"] == stack


def test_a_deploy_job_outlasts_the_longest_release_wait() -> None:
    """GitHub killing `pulumi up` mid-release would leave the stack locked: each deploy job
    has room for the build and push (15 min) besides the longest allowed release wait
    (whose status reads keep to its deadline: test_a_failing_api_cannot_stretch_...)."""
    from infra.settings import MAX_RELEASE_TIMEOUT_SECONDS

    for job in ("dev", "prod"):
        minutes = workflow("deploy.yml")["jobs"][job]["timeout-minutes"]
        assert minutes * 60 >= MAX_RELEASE_TIMEOUT_SECONDS + 15 * 60, job


def test_the_program_dependencies_land_where_pulumi_yaml_looks() -> None:
    """pulumi/actions runs the CLI, which uses the virtualenv that Pulumi.yaml names."""
    virtualenv = load(REPO_ROOT / "Pulumi.yaml")["runtime"]["options"]["virtualenv"]
    action = load(GITHUB_DIR / "actions" / "pulumi-prepare" / "action.yml")
    install = next(
        step for step in action["runs"]["steps"] if "requirements.txt" in step.get("run", "")
    )
    assert f"python -m venv {virtualenv}\n" in install["run"]
    assert f"{virtualenv}/bin/python -m pip install" in install["run"]
    assert "--require-hashes -r requirements.txt" in install["run"]


def test_the_image_is_built_for_heroku_run_smoke_checked_and_scanned() -> None:
    job = workflow("image.yml")["jobs"]["build-run-scan"]
    assert set(job["services"]) == {"postgres", "s3"}
    build = step_named(job, "Build")["with"]
    assert build["context"] == "image"  # the Dockerfile COPYs paths relative to image/
    assert build["file"] == "image/Dockerfile"
    assert build["platforms"] == "linux/amd64"
    assert build["provenance"] is False
    assert build["sbom"] is False
    assert build["load"] is True
    assert build["push"] is False
    names = [str(step.get("name", "")) for step in job["steps"]]
    assert names.index("Smoke check (with the image's own Python and requests)") > names.index(
        "Start the container as a dyno would (non-root, $PORT, config vars)"
    )
    scan = step_named(job, "Scan")
    assert scan["uses"].startswith("aquasecurity/trivy-action@")
    assert scan["with"]["severity"] == "CRITICAL"
    assert scan["with"]["ignore-unfixed"] is True
    assert scan["with"]["exit-code"] == "1"
    assert scan["with"]["image-ref"] == "${{ env.IMAGE }}"


def test_the_suite_keeps_its_artifacts_even_when_a_test_fails() -> None:
    """The browser test's screenshot and the load test's report go to TEST_ARTIFACTS; CI
    uploads that folder after the suite, whether the suite passed or not."""
    job = workflow("tests.yml")["jobs"]["suite"]
    names = [str(step.get("name", "")) for step in job["steps"]]
    upload = step_named(job, "Keep the test artifacts")
    assert names.index("Keep the test artifacts") > names.index("Run the suite")
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert upload["if"] == "${{ !cancelled() }}"
    assert (REPO_ROOT / upload["with"]["path"]).resolve() == TEST_ARTIFACTS


# --------------------------------------------------------------------------- destroy


DESTROY = workflow("destroy.yml")


def test_destroy_is_manual_and_asks_for_the_stack_and_confirmations() -> None:
    inputs = DESTROY["on"]["workflow_dispatch"]["inputs"]
    assert list(DESTROY["on"]) == ["workflow_dispatch"]
    assert inputs["stack"]["options"] == STACKS
    assert inputs["confirm"]["required"] is True
    assert "confirm-prod" in inputs
    destroy = DESTROY["jobs"]["destroy"]
    assert destroy["needs"] == "confirm"
    assert destroy["environment"]["name"] == "${{ inputs.stack }}"
    settings = step_named(destroy, "pulumi destroy")["with"]
    assert settings["command"] == "destroy"
    assert settings["exclude-protected"] is True


@pytest.mark.parametrize(
    ("stack", "confirmation", "prod_confirmation", "allowed"),
    [
        ("dev", "dev", "", True),
        ("dev", "dev", "destroy prod", True),
        ("dev", "prod", "", False),
        ("dev", "", "", False),
        ("dev", "dev ", "", False),
        ("prod", "prod", "destroy prod", True),
        ("prod", "prod", "", False),
        ("prod", "prod", "yes", False),
        ("prod", "Prod", "destroy prod", False),
        ("prod", "dev", "destroy prod", False),
        ("staging", "staging", "", False),
    ],
)
def test_the_confirmation_step_refuses_unless_confirmed(
    stack: str, confirmation: str, prod_confirmation: str, allowed: bool
) -> None:
    job = DESTROY["jobs"]["confirm"]
    assert job["env"] == {
        "STACK": "${{ inputs.stack }}",
        "CONFIRMATION": "${{ inputs.confirm }}",
        "PROD_CONFIRMATION": "${{ inputs.confirm-prod }}",
    }
    script = step_named(job, "Refuse unless confirmed")["run"]
    result = run_step_script(
        script,
        {"STACK": stack, "CONFIRMATION": confirmation, "PROD_CONFIRMATION": prod_confirmation},
    )
    assert (result.returncode == 0) is allowed, result.stdout + result.stderr
    if not allowed:
        assert "::error" in result.stdout


def test_the_confirmation_step_never_echoes_what_was_typed() -> None:
    """Typed text could hold workflow commands; the refusal must not print it."""
    script = step_named(DESTROY["jobs"]["confirm"], "Refuse unless confirmed")["run"]
    typed = "::add-mask::injected-by-typing"
    for env in (
        {"STACK": "dev", "CONFIRMATION": typed, "PROD_CONFIRMATION": ""},
        {"STACK": "prod", "CONFIRMATION": "prod", "PROD_CONFIRMATION": typed},
    ):
        result = run_step_script(script, env)
        assert result.returncode == 1
        assert "injected-by-typing" not in result.stdout + result.stderr


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_job_summary_says_what_the_stack_keeps(stack: str, tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.md"
    script = step_named(DESTROY["jobs"]["confirm"], "Say what the stack keeps")["run"]
    result = run_step_script(script, {"STACK": stack, "GITHUB_STEP_SUMMARY": str(summary_file)})
    assert result.returncode == 0, result.stderr
    summary = summary_file.read_text()
    assert f"## Destroying stack {stack}" in summary
    if stack == "prod":
        for kept in ("Heroku Postgres add-on", "S3 artifact bucket", "protectData", "unprotect"):
            assert kept in summary
    else:
        assert "keeps nothing" in summary


KEPT_APP = "mlflow-heroku-prod"  # Pulumi.prod.yaml's appName


def run_scale_down(
    tmp_path: Path, api_url: str, api_key: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """The prod destroy's scale-down step against the Heroku double; a stand-in `pulumi`
    answers `config get appName` as the CLI would from Pulumi.prod.yaml."""
    fake = tmp_path / "pulumi"
    fake.write_text(
        f'#!/bin/sh\n[ "$*" = "config get appName --stack prod" ] || exit 9\necho {KEPT_APP}\n'
    )
    fake.chmod(0o755)
    summary_file = tmp_path / "summary.md"
    summary_file.touch()
    script = step_named(DESTROY["jobs"]["destroy"], "Scale the kept app")["run"]
    result = run_step_script(
        script,
        {
            "STACK": "prod",
            "HEROKU_API_KEY": api_key,
            "HEROKU_API_URL": api_url,
            "GITHUB_STEP_SUMMARY": str(summary_file),
            "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        },
    )
    return result, summary_file.read_text()


def test_a_prod_destroy_scales_the_kept_app_to_no_web_dynos(tmp_path: Path) -> None:
    """Its config vars went with the stack, so its dynos could only crash-loop (and bill)."""
    step = step_named(DESTROY["jobs"]["destroy"], "Scale the kept app")
    assert step["if"] == "success() && inputs.stack == 'prod'"
    names = [str(each.get("name", "")) for each in DESTROY["jobs"]["destroy"]["steps"]]
    assert names.index(step["name"]) > next(
        index for index, name in enumerate(names) if name.startswith("pulumi destroy")
    )
    api_key = "heroku-api-key-for-the-double"
    with running_fake_heroku(api_key) as heroku:
        heroku.add_app(KEPT_APP)
        heroku.formation_quantity[(KEPT_APP, "web")] = 2
        # One transient failure first: the step retries it.
        heroku.answer_next(
            "PATCH", f"/apps/{KEPT_APP}/formation/web", 503, {"id": "unavailable", "message": "x"}
        )
        result, summary = run_scale_down(tmp_path, heroku.base_url, api_key)
        calls = heroku.calls("PATCH", f"/apps/{KEPT_APP}/formation/web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert heroku.formation_quantity[(KEPT_APP, "web")] == 0
    assert len(calls) == 2
    assert calls[-1].body == {"quantity": 0}
    assert calls[-1].headers["Accept"] == API_ACCEPT
    assert calls[-1].headers["Authorization"] == f"Bearer {api_key}"
    assert f"{KEPT_APP}: web dynos scaled to 0" in summary
    assert api_key not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("known_app", "key_matches", "code", "said"),
    [
        (False, True, 0, "nothing to scale (Heroku: Couldn't find that app.)"),
        (True, False, 1, "Heroku answered 401 Invalid credentials provided."),
    ],
    ids=["app already gone", "wrong API key"],
)
def test_the_scale_down_step_reports_heroku_errors(
    tmp_path: Path, known_app: bool, key_matches: bool, code: int, said: str
) -> None:
    api_key = "heroku-api-key-for-the-double"
    with running_fake_heroku(api_key) as heroku:
        if known_app:
            heroku.add_app(KEPT_APP)
            heroku.formation_quantity[(KEPT_APP, "web")] = 1
        sent_key = api_key if key_matches else "some-other-key"
        result, summary = run_scale_down(tmp_path, heroku.base_url, sent_key)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert said in output
    assert sent_key not in output
    if code:
        assert "::error title=Could not scale" in output
        assert f"heroku ps:scale web=0 -a {KEPT_APP}" in output
        assert heroku.formation_quantity[(KEPT_APP, "web")] == 1
    else:
        assert said in summary


# --------------------------------------------------------------------------- maintenance


MAINTENANCE = workflow("maintenance.yml")
HEROKU_CLI = GITHUB_DIR / "heroku-cli"


def test_maintenance_runs_daily_and_by_hand_with_the_commands_choices() -> None:
    from mlflow_heroku_runtime import maintenance

    schedule = MAINTENANCE["on"]["schedule"]
    assert len(schedule) == 1
    minute, hour, *every_day = schedule[0]["cron"].split()
    assert every_day == ["*", "*", "*"]
    assert 0 < int(minute) < 60  # off the full hour, when GitHub delays jobs
    assert 0 <= int(hour) < 24
    inputs = MAINTENANCE["on"]["workflow_dispatch"]["inputs"]
    assert sorted(inputs["stack"]["options"]) == STACKS
    assert inputs["command"]["options"] == list(maintenance.COMMANDS)
    for command in maintenance.COMMANDS:
        assert maintenance.argument_parser().parse_args([command]).command == command
    assert inputs["command"]["default"] == "all"


def test_maintenance_holds_the_stacks_group_and_outlasts_the_commands_time_limit() -> None:
    from mlflow_heroku_runtime import maintenance

    job = MAINTENANCE["jobs"]["maintain"]
    assert job["needs"] == "plan"
    assert job["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.plan.outputs.stacks) }}"
    # Shared with `pulumi up` of the same stack (test_every_pulumi_job_holds_...).
    assert job["concurrency"] == {
        "group": "pulumi-${{ matrix.stack }}",
        "cancel-in-progress": False,
        "queue": "max",
    }
    # The secret comes from an environment without reviewers: prod's would stop a daily job.
    assert job["environment"]["name"] == "${{ matrix.stack }}-maintenance"
    assert job["permissions"] == {"contents": "read"}
    time_limit = int(job["env"]["TIME_LIMIT"])
    assert time_limit == maintenance.DEFAULT_TIME_LIMIT_SECONDS
    # Room for the CLI install, the dyno's start and the backup besides the gc's limit.
    assert job["timeout-minutes"] * 60 >= time_limit + 15 * 60
    run = step_named(job, "Run the maintenance command")
    assert run["env"]["HEROKU_API_KEY"] == "${{ secrets.HEROKU_API_KEY }}"
    assert "HEROKU_API_KEY" not in str(job.get("env", {}))  # only the step that needs it


@pytest.mark.parametrize(
    ("event", "stack", "maintain_dev", "stacks"),
    [
        ("schedule", "", "", ["prod"]),
        ("schedule", "", "false", ["prod"]),
        ("schedule", "", "true", ["prod", "dev"]),
        ("workflow_dispatch", "dev", "", ["dev"]),
        ("workflow_dispatch", "prod", "true", ["prod"]),
        ("workflow_dispatch", "staging", "", None),
        ("workflow_dispatch", "::add-mask::typed", "", None),
    ],
)
def test_maintenance_chooses_its_stacks(
    tmp_path: Path, event: str, stack: str, maintain_dev: str, stacks: list[str] | None
) -> None:
    outputs = tmp_path / "outputs"
    outputs.touch()
    script = step_named(MAINTENANCE["jobs"]["plan"], "Choose the stacks")["run"]
    env = {"EVENT": event, "STACK": stack, "MAINTAIN_DEV": maintain_dev}
    result = run_step_script(script, {**env, "GITHUB_OUTPUT": str(outputs)})
    if stacks is None:
        assert result.returncode == 1
        assert "::error title=Unknown stack::" in result.stdout
        assert "typed" not in result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stderr
    (line,) = outputs.read_text().splitlines()
    assert json.loads(line.removeprefix("stacks=")) == stacks


@pytest.mark.parametrize("stack", STACKS)
def test_maintenance_reads_the_app_name_the_program_gives_the_app(
    tmp_path: Path, stack: str
) -> None:
    from infra.settings import check_app_name

    outputs = tmp_path / "outputs"
    outputs.touch()
    script = step_named(MAINTENANCE["jobs"]["maintain"], "Read the app name")["run"]
    result = run_step_script(
        f'cd "{REPO_ROOT}"\n{script}', {"STACK": stack, "GITHUB_OUTPUT": str(outputs)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    app_name = load(REPO_ROOT / f"Pulumi.{stack}.yaml")["config"]["mlflow-heroku:appName"]
    assert check_app_name(app_name) is None
    assert outputs.read_text() == f"app={app_name}\n"


def test_maintenance_refuses_a_stack_file_without_a_plain_app_name(tmp_path: Path) -> None:
    script = step_named(MAINTENANCE["jobs"]["maintain"], "Read the app name")["run"]
    for content in ('  mlflow-heroku:appName: "quoted-name"\n', "  mlflow-heroku:region: eu\n"):
        (tmp_path / "Pulumi.prod.yaml").write_text(f"config:\n{content}")
        outputs = tmp_path / "outputs"
        outputs.write_text("")
        result = run_step_script(
            f'cd "{tmp_path}"\n{script}', {"STACK": "prod", "GITHUB_OUTPUT": str(outputs)}
        )
        assert result.returncode == 1
        assert "::error title=No app name::" in result.stdout
        assert outputs.read_text() == ""


@pytest.mark.parametrize(
    ("status", "passes", "said"),
    [
        (0, True, "maintenance all: done"),
        (3, True, "stopped at the time limit"),
        (4, True, "another maintenance run was under way"),
        (1, False, "failed (exit 1"),
        (2, False, "bad settings"),
        (137, False, "failed (exit 137"),
    ],
)
def test_maintenance_runs_the_command_in_a_one_off_dyno_and_reads_its_exit_code(
    tmp_path: Path, status: int, passes: bool, said: str
) -> None:
    """A stand-in `heroku` records how it is called and exits as the dyno's command would."""
    from mlflow_heroku_runtime import maintenance

    api_key = "heroku-api-key-of-the-environment"
    calls = tmp_path / "calls"
    fake = tmp_path / "heroku"
    fake.write_text(
        f'#!/bin/sh\n[ "$HEROKU_API_KEY" = "{api_key}" ] || exit 99\n'
        f'printf "%s\\n" "$@" > "{calls}"\nexit {status}\n'
    )
    fake.chmod(0o755)
    summary = tmp_path / "summary.md"
    job = MAINTENANCE["jobs"]["maintain"]
    script = step_named(job, "Run the maintenance command")["run"]
    env = {
        "STACK": "prod",
        "COMMAND": "all",
        "TIME_LIMIT": job["env"]["TIME_LIMIT"],
        "APP": "mlflow-heroku-prod",
        "HEROKU_API_KEY": api_key,
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
    }
    result = run_step_script(script, env)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) is passes, output
    assert said in summary.read_text()
    assert api_key not in output
    argv = calls.read_text().splitlines()
    assert argv[:6] == ["run", "--exit-code", "--no-tty", "--app", "mlflow-heroku-prod", "--"]
    assert argv[6:] == [
        "python",
        "-m",
        "mlflow_heroku_runtime.maintenance",
        "all",
        "--time-limit",
        str(maintenance.DEFAULT_TIME_LIMIT_SECONDS),
    ]
    # What the dyno runs is a command the image has, with arguments it accepts.
    assert maintenance.argument_parser().parse_args(argv[9:]).command == "all"
    if status in (3, 4):
        assert "::warning title=prod: maintenance" in result.stdout


def test_the_heroku_cli_is_installed_from_a_lock_with_every_package_hashed() -> None:
    install = step_named(MAINTENANCE["jobs"]["maintain"], "Install the Heroku CLI")["run"]
    assert "npm ci --prefix .github/heroku-cli --ignore-scripts " in install
    manifest = json.loads((HEROKU_CLI / "package.json").read_text())
    (version,) = manifest["dependencies"].values()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin an exact version"
    lock = json.loads((HEROKU_CLI / "package-lock.json").read_text())
    assert lock["lockfileVersion"] == 3
    packages = {path: entry for path, entry in lock["packages"].items() if path}
    assert packages["node_modules/heroku"]["version"] == version
    # A bundled package comes inside its parent's tarball, which the parent's hash covers.
    unhashed = [
        path
        for path, entry in packages.items()
        if not entry.get("inBundle") and not str(entry.get("integrity")).startswith("sha512-")
    ]
    assert unhashed == []
    # Dependabot keeps it current, as it does the actions.
    updates = load(GITHUB_DIR / "dependabot.yml")["updates"]
    assert {"package-ecosystem": "npm", "directory": "/.github/heroku-cli"}.items() <= next(
        update for update in updates if update["package-ecosystem"] == "npm"
    ).items()


# --------------------------------------------------------------------------- documentation


def test_every_secret_and_variable_the_workflows_use_is_documented() -> None:
    text = "\n".join(path.read_text() for path in [*WORKFLOWS, *ACTIONS])
    names = set(re.findall(r"\$\{\{\s*(?:secrets|vars)\.([A-Z0-9_]+)", text))
    assert names, "no secrets found: the pattern is wrong"
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in operations)
    assert missing == [], "document these in docs/operations.md"


def test_config_keys_and_outputs_named_in_the_operations_guide_exist() -> None:
    """The guide tells people to `pulumi config set` keys: each must be one the program reads."""
    from infra.settings import DEFAULTS, OPTIONAL_KEYS, REQUIRED_KEYS

    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    program = (REPO_ROOT / "__main__.py").read_text()
    config_keys = {*DEFAULTS, *OPTIONAL_KEYS, *REQUIRED_KEYS}
    set_keys = re.findall(r"pulumi config set (?:--secret |--path )*'?([A-Za-z]+)", operations)
    assert set_keys, "no `pulumi config set` found: the pattern is wrong"
    assert sorted(set(set_keys) - config_keys) == []
    # Every camelCase name in backticks is a config key or a stack output of __main__.py.
    named = set(re.findall(r"`([a-z]+[A-Z][A-Za-z]*)`", operations))
    unknown = sorted(
        name for name in named if name not in config_keys and f'"{name}"' not in program
    )
    assert unknown == []


def test_the_image_job_gives_the_container_an_environment_the_image_accepts() -> None:
    """The `docker run --env` flags in image.yml, checked by the image's own settings loader."""
    from mlflow_heroku_runtime.settings import load_settings

    job = workflow("image.yml")["jobs"]["build-run-scan"]
    script = step_named(job, "Start the container")["run"]
    values = {
        **job["env"],
        "password": "a-generated-password-of-48-hex-characters",
        "passphrase": "a-generated-passphrase-of-64-hex-characters",
    }
    env = {
        name: re.sub(r"\$\{(\w+)\}", lambda match: str(values[match.group(1)]), value)
        for name, value in re.findall(r'--env ([A-Z0-9_]+)="?([^"\s\\]*)"?', script)
    }
    assert {"PORT", "DATABASE_URL", "S3_URI", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    assert env["MLFLOW_CRYPTO_KEK_PASSPHRASE"] == values["passphrase"]
    settings = load_settings(env)
    assert settings.port == int(job["env"]["APP_PORT"])
    assert settings.artifacts_destination == f"s3://{job['env']['BUCKET']}/artifacts"
    assert settings.password == values["password"]
    # The service's port mapping is where the URL points.
    postgres_port = job["services"]["postgres"]["ports"][0].rsplit(":", 1)[1]
    assert f"@127.0.0.1:{postgres_port}/" in env["DATABASE_URL"]


def test_after_destroy_the_summary_lists_what_is_left(tmp_path: Path) -> None:
    """The listing step reads `pulumi stack export`; a stand-in CLI prints a kept prod state."""
    state = {
        "deployment": {
            "resources": [
                {
                    "type": "pulumi:pulumi:Stack",
                    "urn": "urn:pulumi:prod::p::pulumi:pulumi:Stack::s",
                },
                {
                    "type": "pulumi:providers:aws",
                    "urn": "urn:pulumi:prod::p::pulumi:providers:aws::x",
                },
                {"type": "heroku:app/app:App", "urn": "urn:app", "protect": True},
                {"type": "aws:s3/bucket:Bucket", "urn": "urn:bucket", "protect": True},
                {"type": "aws:iam/user:User", "urn": "urn:user"},
            ]
        }
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    fake = tmp_path / "pulumi"
    fake.write_text(
        '#!/bin/sh\n[ "$*" = "stack export --stack prod" ] || exit 9\n'
        f'exec cat "{tmp_path / "state.json"}"\n'
    )
    fake.chmod(0o755)
    summary_file = tmp_path / "summary.md"
    script = step_named(DESTROY["jobs"]["destroy"], "List what the stack still holds")["run"]
    result = run_step_script(
        script,
        {
            "STACK": "prod",
            "GITHUB_STEP_SUMMARY": str(summary_file),
            "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert result.returncode == 0, result.stderr
    listed = summary_file.read_text().split("```")[1].strip().splitlines()
    assert listed == ["protected urn:app", "protected urn:bucket", "left      urn:user"]
