"""Runs the Pulumi program under `pulumi.runtime.set_mocks` and records what it registers.

The recording monitor keeps each resource's resolved inputs (secrets still marked), parent,
dependencies and options, so tests assert on plain values instead of inside `apply` callbacks.
Outputs the program returns are resolved inside `@pulumi.runtime.test`, which drives the event
loop; `ProgramRun.resolved` counts them so a test can prove nothing was skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi
import pytest
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from .heroku_double import DOUBLE_API_KEY, DOUBLE_APP, FakeHeroku, running_fake_heroku

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mlflow-heroku"
UNKNOWN = rpc.UNKNOWN
SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key
API_KEY = "heroku-api-key-0123456789abcdef"


def secret(value: Any) -> dict[str, Any]:
    """How the engine marks a secret value on the wire (what real providers return)."""
    return {SIG_KEY: SECRET_SIG, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def reveal(value: Any) -> Any:
    """A value with every secret marker removed, recursively."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


def fake(*parts: object, length: int = 12) -> str:
    """Deterministic stand-in for a provider-generated value: the same run gives the same
    value, as a real provider keeps its resources' IDs from one `pulumi up` to the next."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def fake_uuid(*parts: object) -> str:
    return str(uuid.UUID(fake(*parts, length=32)))


class HerokuAwsMocks(pulumi_mocks.Mocks):
    """Outputs shaped like the real providers' (secrets where they return secrets)."""

    def __init__(self, preview: bool) -> None:
        self.preview = preview

    def computed(self, value: Any) -> Any:
        # In a preview of a new stack, provider-computed outputs are unknown.
        return UNKNOWN if self.preview else value

    def new_resource(
        self, args: pulumi_mocks.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        kind = args.typ
        if kind == "heroku:app/app:App":
            name = inputs["name"]
            host = f"{name}-{fake(kind, name)}.herokuapp.com"
            app_id = fake_uuid(kind, name)
            return self.computed(app_id), {
                **inputs,
                "uuid": self.computed(app_id),
                # What the provider really returns: a name guessed without Heroku's suffix.
                "herokuHostname": self.computed(f"{name}.herokuapp.com"),
                "webUrl": self.computed(f"https://{host}/"),
                "gitUrl": self.computed(f"https://git.heroku.com/{name}.git"),
            }
        if kind == "heroku:addon/addon:Addon":
            return self.computed(fake_uuid(kind, args.name)), {
                **inputs,
                "name": self.computed(f"postgresql-shaped-{fake(kind, args.name, length=5)}"),
                "configVars": self.computed(["DATABASE_URL"]),
            }
        if kind == "aws:s3/bucket:Bucket":
            # A prefix gets 26 characters appended, as the AWS provider does (a UTC timestamp
            # and a counter), so name-length limits are met or missed as they would be.
            unique = "20260102150405" + "0000" + fake(kind, length=8)
            bucket = inputs.get("bucket") or f"{inputs['bucketPrefix']}{unique}"
            return self.computed(bucket), {
                **inputs,
                "bucket": self.computed(bucket),
                "arn": self.computed(f"arn:aws:s3:::{bucket}"),
            }
        if kind == "aws:iam/user:User":
            return inputs["name"], {
                **inputs,
                "arn": self.computed(f"arn:aws:iam::123456789012:user{inputs['path']}x"),
            }
        if kind == "aws:iam/accessKey:AccessKey":
            key_id = "AKIA" + fake(kind, args.name, length=16).upper()
            return self.computed(key_id), {
                **inputs,
                "secret": self.computed(secret(fake("secret", args.name, length=40))),
            }
        if kind == "random:index/randomPassword:RandomPassword":
            return "none", {
                **inputs,
                "result": self.computed(secret(fake("password", args.name, length=32))),
            }
        if kind == "docker:index/image:Image":
            repository = str(inputs["imageName"]).rsplit(":", 1)[0]
            digest = "sha256:" + hashlib.sha256(repr(inputs).encode()).hexdigest()
            return str(inputs["imageName"]), {
                **inputs,
                "repoDigest": self.computed(f"{repository}@{digest}"),
                "baseImageName": inputs["imageName"],
            }
        if kind == "docker:index/tag:Tag":
            return f"{inputs['sourceImage']}.{inputs['targetImage']}", {
                **inputs,
                "sourceImageId": self.computed("sha256:" + "ab" * 32),
            }
        if kind == "docker:index/registryImage:RegistryImage":
            # The same local image pushed to another repository: the same manifest digest.
            web = inputs["triggers"]["web_repo_digest"]
            digest = web.rsplit("@", 1)[1] if isinstance(web, str) else UNKNOWN
            return self.computed(digest), {**inputs, "sha256Digest": self.computed(digest)}
        if kind == "pulumi-python:dynamic/heroku:ContainerRelease":
            types = ["web", "release"] if inputs.get("release_image_ref") else ["web"]
            return self.computed(f"{inputs['app_name']}/web"), {
                **{key: value for key, value in inputs.items() if key != "api_key"},
                "image_id": self.computed("sha256:" + "ab" * 32),
                "process_types": self.computed(types),
                "release_id": self.computed(fake_uuid(kind, args.name)),
                "release_version": self.computed(7),
            }
        return self.computed(f"{args.name}-id"), inputs

    def call(
        self, args: pulumi_mocks.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        raise AssertionError(f"the program made an unexpected invoke: {args.token}")


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    inputs: dict[str, Any]
    protect: bool
    retain_on_delete: bool
    additional_secret_outputs: list[str]
    outputs: dict[str, Any]
    id: str


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    dependencies=list(request.dependencies),
                    inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    outputs=self.resources[response.urn].state,
                    id=response.id,
                )
            )
        return response


@dataclass
class ProgramRun:
    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    unknown_outputs: set[str] = field(default_factory=set)
    resolved: int = 0
    by_urn: dict[str, Registration] = field(default_factory=dict)

    def one(self, type_: str, name: str | None = None) -> Registration:
        found = [
            r for r in self.registrations if r.type == type_ and (name is None or r.name == name)
        ]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {len(found)}"
        return found[0]

    def all(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def parent_of(self, registration: Registration) -> Registration:
        return self.by_urn[registration.parent]


def load_program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlflow_heroku_program", ROOT / "__main__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_config(stack: str) -> dict[str, str]:
    """The committed stack file's values plus the secrets a user sets with --secret."""
    import yaml  # type: ignore[import-untyped]  # no stubs in the lock

    stack_file = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    config = {key: cli_config_value(value) for key, value in stack_file.items()}
    config["heroku:apiKey"] = API_KEY
    return config


def cli_config_value(value: Any) -> str:
    """A stack file's value as the CLI hands it to the program: booleans as "true"/"false",
    structured values (lists, objects) as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


SECRET_CONFIG_KEYS = ("heroku:apiKey", f"{PROJECT}:loginPassword", f"{PROJECT}:adminPassword")


def run_program(
    stack: str,
    config: Mapping[str, str],
    preview: bool = False,
    secret_keys: tuple[str, ...] = SECRET_CONFIG_KEYS,
    program: Callable[[], dict[str, pulumi.Output[Any]]] | None = None,
    monitor: RecordingMonitor | None = None,
) -> ProgramRun:
    # Module-scoped fixtures call this before any function-scoped fixture: give it its own loop.
    asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = monitor or RecordingMonitor(HerokuAwsMocks(preview))
    # A fresh root Stack resource, so this run's resources hang under this run's stack name.
    pulumi.runtime.settings.ROOT.set(None)
    pulumi.runtime.set_mocks(
        monitor.mocks, project=PROJECT, stack=stack, preview=preview, monitor=monitor
    )
    pulumi.runtime.set_all_config(dict(config), [key for key in secret_keys if key in config])
    run = ProgramRun(registrations=monitor.registrations, outputs={}, secret_outputs=set())
    main = program or load_program().main

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def drive() -> pulumi.Output[Any]:
        outputs = main()

        async def resolve(name: str, output: pulumi.Output[Any]) -> None:
            run.outputs[name] = await output.future(with_unknowns=True)
            if await output.is_secret():
                run.secret_outputs.add(name)
            if not await output.is_known():
                run.unknown_outputs.add(name)
            run.resolved += 1

        return pulumi.Output.from_input(
            asyncio.ensure_future(
                asyncio.gather(*(resolve(name, out) for name, out in outputs.items()))
            )
        )

    drive()
    run.by_urn = {r.urn: r for r in run.registrations}
    return run


@pytest.fixture(autouse=True)
def current_event_loop() -> Iterator[None]:
    """Gives every test here a current event loop. Pulumi's SDK calls asyncio.get_event_loop(),
    which raises on Python 3.11 once any earlier test in the session ran asyncio.run() (it leaves
    the main thread with no current loop): without this, these tests pass alone and fail in the
    whole suite."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(scope="session")
def program_module() -> ModuleType:
    # Importing pulumi_aws is slow; do it once per session.
    return load_program()


@pytest.fixture
def heroku() -> Iterator[FakeHeroku]:
    """The local Heroku double (tests/infra/heroku_double.py) with one container-stack app."""
    with running_fake_heroku(DOUBLE_API_KEY) as fake:
        fake.add_app(DOUBLE_APP)
        yield fake
