"""The whole Pulumi program under mocks, for both stacks: resources, properties, parents,
dependencies, protection, secrets, exports, bad configuration and preview mode."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import dill  # type: ignore[import-untyped]  # no stubs
import pulumi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pulumi.dynamic.dynamic import serialize_provider

from infra.artifact_store import OBJECT_ACTIONS
from infra.heroku_app import host_of
from infra.image import PROJECT_DIR, content_tag
from infra.release import ContainerReleaseProvider
from infra.settings import SettingsError

from .conftest import (
    API_KEY,
    PROJECT,
    HerokuAwsMocks,
    ProgramRun,
    RecordingMonitor,
    Registration,
    base_config,
    is_secret,
    reveal,
    run_program,
)

APP = "heroku:app/app:App"
ADDON = "heroku:addon/addon:Addon"
CONFIG_VARS = "heroku:app/configAssociation:ConfigAssociation"
DOMAIN = "heroku:domain/domain:Domain"
FORMATION = "heroku:formation/formation:Formation"
BUCKET = "aws:s3/bucket:Bucket"
OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ENCRYPTION = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
USER = "aws:iam/user:User"
USER_POLICY = "aws:iam/userPolicy:UserPolicy"
ACCESS_KEY = "aws:iam/accessKey:AccessKey"
PASSWORD = "random:index/randomPassword:RandomPassword"
IMAGE = "docker:index/image:Image"
RELEASE = "pulumi-python:dynamic/heroku:ContainerRelease"
COMPONENTS = {
    "mlflow-heroku:index:ArtifactStore": "artifacts",
    "mlflow-heroku:index:HerokuApp": "heroku",
    "mlflow-heroku:index:HerokuImage": "image",
    "mlflow-heroku:index:WebRelease": "web",
}
OUTPUT_NAMES = {
    "appUrl",
    "mlflowTrackingUri",
    "loginUser",
    "loginPassword",
    "bucketName",
    "imageId",
    "clientEnvironment",
}


def run(
    program_module: ModuleType, stack: str, preview: bool = False, **overrides: str
) -> ProgramRun:
    config = base_config(stack)
    config.update({f"{PROJECT}:{key}": value for key, value in overrides.items()})
    result = run_program(stack, config, preview=preview, program=program_module.main)
    # Guard: every exported output was resolved inside the driven event loop.
    assert result.resolved == len(OUTPUT_NAMES)
    return result


@pytest.fixture(scope="module")
def dev(program_module: ModuleType) -> ProgramRun:
    return run(program_module, "dev")


@pytest.fixture(scope="module")
def prod(program_module: ModuleType) -> ProgramRun:
    return run(program_module, "prod")


def depends_on(program: ProgramRun, registration: Registration, *names: str) -> None:
    dependency_names = {program.by_urn[urn].name for urn in registration.dependencies}
    assert set(names) <= dependency_names, (registration.name, dependency_names)


def component_of(program: ProgramRun, registration: Registration) -> str:
    parent = program.parent_of(registration)
    return parent.type


# -- resources and their properties --------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_has_its_component_as_parent(
    stack: str, dev: ProgramRun, prod: ProgramRun
) -> None:
    program = dev if stack == "dev" else prod
    expected_parent = {
        APP: "mlflow-heroku:index:HerokuApp",
        ADDON: "mlflow-heroku:index:HerokuApp",
        CONFIG_VARS: "mlflow-heroku:index:HerokuApp",
        PASSWORD: "mlflow-heroku:index:HerokuApp",
        BUCKET: "mlflow-heroku:index:ArtifactStore",
        OWNERSHIP: "mlflow-heroku:index:ArtifactStore",
        PUBLIC_ACCESS: "mlflow-heroku:index:ArtifactStore",
        ENCRYPTION: "mlflow-heroku:index:ArtifactStore",
        VERSIONING: "mlflow-heroku:index:ArtifactStore",
        LIFECYCLE: "mlflow-heroku:index:ArtifactStore",
        BUCKET_POLICY: "mlflow-heroku:index:ArtifactStore",
        USER: "mlflow-heroku:index:ArtifactStore",
        USER_POLICY: "mlflow-heroku:index:ArtifactStore",
        ACCESS_KEY: "mlflow-heroku:index:ArtifactStore",
        IMAGE: "mlflow-heroku:index:HerokuImage",
        RELEASE: "mlflow-heroku:index:WebRelease",
        FORMATION: "mlflow-heroku:index:WebRelease",
    }
    types = sorted(r.type for r in program.registrations)
    assert types == sorted([*expected_parent, *COMPONENTS])
    for registration in program.registrations:
        if registration.type in COMPONENTS:
            assert registration.name == COMPONENTS[registration.type]
            assert registration.parent.endswith(f"pulumi:pulumi:Stack::{PROJECT}-{stack}")
        else:
            assert component_of(program, registration) == expected_parent[registration.type]


def test_dev_heroku_app_and_database(dev: ProgramRun) -> None:
    app = dev.one(APP)
    assert app.inputs["name"] == "mlflow-heroku-dev"
    assert app.inputs["region"] == "eu"
    assert app.inputs["stack"] == "container"
    assert app.inputs["acm"] is False
    app_id = app.outputs["uuid"]
    addon = dev.one(ADDON)
    assert addon.inputs == {"appId": app_id, "plan": "heroku-postgresql:essential-0"}
    assert dev.one(CONFIG_VARS).inputs["appId"] == app_id
    assert dev.one(FORMATION).inputs["appId"] == app_id
    assert not dev.all(DOMAIN)
    for registration in dev.registrations:
        assert not registration.protect
        assert not registration.retain_on_delete


def test_config_vars_come_from_the_real_host_name_and_the_other_resources(dev: ProgramRun) -> None:
    config_vars = dev.one(CONFIG_VARS)
    # The host of the real web URL, with Heroku's random suffix; never the provider's guess.
    host = dev.one(APP).outputs["webUrl"].removeprefix("https://").rstrip("/")
    assert host.startswith("mlflow-heroku-dev-")
    assert host != dev.one(APP).outputs["herokuHostname"]
    bucket = dev.one(BUCKET).outputs["bucket"]
    assert config_vars.inputs["vars"] == {
        "S3_URI": f"s3://{bucket}/artifacts",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "MLFLOW_TRACKING_USERNAME": "mlflow",
        "MLFLOW_SERVER_ALLOWED_HOSTS": host,
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"https://{host}",
        "WEB_CONCURRENCY": "2",
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "3",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "1",
        "MLFLOW_HEROKU_MAX_BODY_SIZE": "5g",
        "MLFLOW_HEROKU_BACKUP_RETENTION_DAYS": "30",
        "MLFLOW_HEROKU_GC_AFTER_DAYS": "30",
    }
    sensitive = config_vars.inputs["sensitiveVars"]
    assert is_secret(sensitive)
    access_key = dev.one(ACCESS_KEY)
    assert reveal(sensitive) == {
        "AWS_ACCESS_KEY_ID": access_key.id,
        "AWS_SECRET_ACCESS_KEY": reveal(access_key.outputs["secret"]),
        "MLFLOW_TRACKING_PASSWORD": reveal(dev.one(PASSWORD).outputs["result"]),
    }
    # DATABASE_URL belongs to the add-on (it changes on credential rotation and failover).
    assert "DATABASE_URL" not in config_vars.inputs["vars"]
    # No secret value leaks into the plain (non-sensitive) vars.
    plain_values = json.dumps(config_vars.inputs["vars"])
    for value in reveal(sensitive).values():
        assert value not in plain_values
    depends_on(dev, config_vars, "app", "bucket", "access-key-1", "login-password")


def test_generated_password_is_a_long_secret(dev: ProgramRun) -> None:
    password = dev.one(PASSWORD)
    assert password.inputs["length"] == 32
    assert password.inputs["special"] is False
    assert "result" in password.additional_secret_outputs


def test_dev_bucket_is_private_encrypted_tls_only_and_destroyable(dev: ProgramRun) -> None:
    bucket = dev.one(BUCKET)
    assert bucket.inputs["bucketPrefix"] == "mlflow-heroku-dev-mlflow-"
    assert "bucket" not in bucket.inputs
    assert bucket.inputs["forceDestroy"] is True
    bucket_name = bucket.outputs["bucket"]
    for type_ in (OWNERSHIP, PUBLIC_ACCESS, ENCRYPTION, VERSIONING, LIFECYCLE, BUCKET_POLICY):
        registration = dev.one(type_)
        assert registration.inputs["bucket"] == bucket_name
        depends_on(dev, registration, "bucket")
    assert dev.one(OWNERSHIP).inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    access = dev.one(PUBLIC_ACCESS).inputs
    for flag in (
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ):
        assert access[flag] is True
    assert dev.one(ENCRYPTION).inputs["rules"] == [
        {
            "applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"},
            "bucketKeyEnabled": False,
        }
    ]
    assert dev.one(VERSIONING).inputs["versioningConfiguration"] == {"status": "Suspended"}
    lifecycle = dev.one(LIFECYCLE)
    assert lifecycle.inputs["rules"] == [
        {
            "id": "abort-incomplete-multipart-uploads",
            "status": "Enabled",
            "filter": {},
            "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7},
        }
    ]
    depends_on(dev, lifecycle, "versioning")
    policy = json.loads(dev.one(BUCKET_POLICY).inputs["policy"])
    arn = f"arn:aws:s3:::{bucket_name}"
    assert policy["Statement"] == [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    depends_on(dev, dev.one(BUCKET_POLICY), "public-access-block")


def test_iam_user_may_touch_only_objects_under_the_prefix(dev: ProgramRun) -> None:
    bucket_name = dev.one(BUCKET).outputs["bucket"]
    arn = f"arn:aws:s3:::{bucket_name}"
    user = dev.one(USER)
    assert user.inputs["name"] == "mlflow-heroku-dev-mlflow-artifacts"
    user_policy = dev.one(USER_POLICY)
    assert user_policy.inputs["user"] == user.outputs["name"]
    statements = json.loads(user_policy.inputs["policy"])["Statement"]
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert all(action.startswith("s3:") and "*" not in action for action in actions)
        assert statement["Resource"] != "*"
        forbidden = ("Acl", "Policy", "Tagging", "Replication", "DeleteBucket", "PutBucket")
        assert not any(word in action for action in actions for word in forbidden)
    objects, listing, backup_objects, backup_listing = statements
    assert backup_objects["Action"] == list(OBJECT_ACTIONS)
    assert backup_objects["Resource"] == f"{arn}/backups/*"
    assert backup_listing["Condition"] == {"StringLike": {"s3:prefix": ["backups/*"]}}
    assert backup_listing["Resource"] == arn
    assert objects["Action"] == list(OBJECT_ACTIONS)
    assert objects["Resource"] == f"{arn}/artifacts/*"
    assert listing == {
        "Sid": "MlflowArtifactListing",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": arn,
        "Condition": {"StringLike": {"s3:prefix": ["artifacts", "artifacts/*"]}},
    }
    access_key = dev.one(ACCESS_KEY)
    assert access_key.name == "access-key-1"
    assert access_key.inputs["user"] == user.outputs["name"]
    assert "secret" in access_key.additional_secret_outputs
    depends_on(dev, access_key, "user-policy")


def test_image_is_built_for_amd64_and_pushed_to_herokus_registry(dev: ProgramRun) -> None:
    image = dev.one(IMAGE)
    tag = content_tag(PROJECT_DIR / "image")
    assert image.inputs["imageName"] == f"registry.heroku.com/mlflow-heroku-dev/web:{tag}"
    assert image.inputs["build"] == {
        "context": "image",
        "dockerfile": "image/Dockerfile",
        "platform": "linux/amd64",
        "builderVersion": "BuilderBuildKit",
    }
    assert image.inputs["skipPush"] is False
    # The API key makes the whole registry object secret on the wire.
    assert is_secret(image.inputs["registry"])
    assert reveal(image.inputs["registry"]) == {
        "server": "registry.heroku.com",
        "username": "_",
        "password": API_KEY,
    }


def test_release_waits_for_config_vars_and_database_then_formation_follows(
    dev: ProgramRun,
) -> None:
    release = dev.one(RELEASE)
    assert release.inputs["app_name"] == "mlflow-heroku-dev"
    assert release.inputs["process_type"] == "web"
    assert release.inputs["image_ref"] == dev.one(IMAGE).outputs["repoDigest"]
    assert release.inputs["timeout_seconds"] == 600
    assert is_secret(release.inputs["api_key"])
    assert reveal(release.inputs["api_key"]) == API_KEY
    # The serialized provider is a secret too (it could capture secrets).
    assert is_secret(release.inputs["__provider"])
    depends_on(dev, release, "config-vars", "postgres", "image")
    formation = dev.one(FORMATION)
    assert formation.inputs == {
        "appId": dev.one(APP).outputs["uuid"],
        "type": "web",
        "size": "basic",
        "quantity": 1,
    }
    depends_on(dev, formation, "release")


def test_exports_and_which_are_secret(dev: ProgramRun) -> None:
    assert set(dev.outputs) == OUTPUT_NAMES
    assert not dev.unknown_outputs
    assert dev.secret_outputs == {"loginPassword", "clientEnvironment"}
    web_url = dev.one(APP).outputs["webUrl"]
    password = reveal(dev.one(PASSWORD).outputs["result"])
    assert dev.outputs["appUrl"] == web_url
    assert dev.outputs["mlflowTrackingUri"] == web_url.rstrip("/")
    assert dev.outputs["loginUser"] == "mlflow"
    assert dev.outputs["loginPassword"] == password
    assert dev.outputs["bucketName"] == dev.one(BUCKET).outputs["bucket"]
    assert dev.outputs["imageId"] == dev.one(RELEASE).outputs["image_id"]
    assert dev.outputs["clientEnvironment"] == (
        f"export MLFLOW_TRACKING_URI={web_url.rstrip('/')}\n"
        "export MLFLOW_TRACKING_USERNAME=mlflow\n"
        f"export MLFLOW_TRACKING_PASSWORD={password}\n"
    )


def test_prod_keeps_its_data_and_is_larger(prod: ProgramRun, dev: ProgramRun) -> None:
    # The data, and the bucket's settings with it: a kept bucket must stay private,
    # encrypted and TLS-only after `pulumi destroy --exclude-protected`.
    kept = {APP, ADDON, BUCKET, OWNERSHIP, PUBLIC_ACCESS, ENCRYPTION, VERSIONING, LIFECYCLE}
    kept.add(BUCKET_POLICY)
    for type_ in kept:
        registration = prod.one(type_)
        assert registration.protect, type_
        assert registration.retain_on_delete, type_
    unprotected = [r for r in prod.registrations if r.type not in kept]
    assert unprotected
    assert not any(r.protect or r.retain_on_delete for r in unprotected)
    assert not any(r.protect or r.retain_on_delete for r in dev.registrations)
    assert prod.one(BUCKET).inputs["forceDestroy"] is False
    assert prod.one(ADDON).inputs["plan"] == "heroku-postgresql:standard-0"
    assert prod.one(VERSIONING).inputs["versioningConfiguration"] == {"status": "Enabled"}
    rules = prod.one(LIFECYCLE).inputs["rules"]
    assert rules[1] == {
        "id": "expire-noncurrent-versions",
        "status": "Enabled",
        "filter": {},
        "noncurrentVersionExpiration": {"noncurrentDays": 90},
    }
    assert prod.one(FORMATION).inputs["size"] == "standard-2x"
    assert prod.one(CONFIG_VARS).inputs["vars"]["WEB_CONCURRENCY"] == "2"
    assert prod.one(APP).inputs["name"] == "mlflow-heroku-prod"
    assert dev.one(APP).outputs["webUrl"] != prod.one(APP).outputs["webUrl"]


def test_configured_password_custom_domain_and_kms_key(program_module: ModuleType) -> None:
    key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"
    program = run(
        program_module,
        "dev",
        loginPassword="a-configured-password-1234",
        customDomains='["mlflow.example.com"]',
        kmsKeyArn=key_arn,
        accessKeyGeneration="2",
        bucketName="acme-mlflow-artifacts",
    )
    assert not program.all(PASSWORD)
    sensitive = reveal(program.one(CONFIG_VARS).inputs["sensitiveVars"])
    assert sensitive["MLFLOW_TRACKING_PASSWORD"] == "a-configured-password-1234"
    assert program.outputs["loginPassword"] == "a-configured-password-1234"
    assert "loginPassword" in program.secret_outputs
    domain = program.one(DOMAIN)
    assert domain.inputs["hostname"] == "mlflow.example.com"
    assert program.one(APP).inputs["acm"] is True
    host = program.one(APP).outputs["webUrl"].removeprefix("https://").rstrip("/")
    config_vars = program.one(CONFIG_VARS).inputs["vars"]
    assert config_vars["MLFLOW_SERVER_ALLOWED_HOSTS"] == f"{host},mlflow.example.com"
    assert config_vars["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == (
        f"https://{host},https://mlflow.example.com"
    )
    assert program.outputs["mlflowTrackingUri"] == "https://mlflow.example.com"
    depends_on(program, program.one(RELEASE), "domain-mlflow.example.com")
    assert program.one(ENCRYPTION).inputs["rules"] == [
        {
            "applyServerSideEncryptionByDefault": {
                "sseAlgorithm": "aws:kms",
                "kmsMasterKeyId": key_arn,
            },
            "bucketKeyEnabled": True,
        }
    ]
    kms = json.loads(program.one(USER_POLICY).inputs["policy"])["Statement"][2]
    assert kms == {
        "Sid": "MlflowArtifactEncryption",
        "Effect": "Allow",
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": key_arn,
    }
    # Rotation: a new generation is a new key resource (created before the old one is deleted).
    assert program.one(ACCESS_KEY).name == "access-key-2"
    assert program.one(BUCKET).inputs["bucket"] == "acme-mlflow-artifacts"
    assert "bucketPrefix" not in program.one(BUCKET).inputs


def test_a_second_run_with_nothing_changed_declares_the_same_inputs(
    program_module: ModuleType, dev: ProgramRun
) -> None:
    """What `pulumi up` diffs: every resource's inputs, options and dependencies. The dynamic
    release's own diff (no change for the same image) is tested in test_release_provider.py."""
    again = run(program_module, "dev")

    def shape(program: ProgramRun) -> list[tuple[Any, ...]]:
        return [
            (r.urn, r.inputs, sorted(r.dependencies), r.protect, r.retain_on_delete)
            for r in sorted(program.registrations, key=lambda r: r.urn)
        ]

    assert shape(again) == shape(dev)


def test_bad_config_fails_before_any_resource_exists(program_module: ModuleType) -> None:
    config = base_config("dev")
    config[f"{PROJECT}:postgresPlan"] = "hobby-dev"
    config[f"{PROJECT}:appName"] = "Bad_Name"
    with pytest.raises(SettingsError) as raised:
        run_program("dev", config, program=program_module.main)
    message = str(raised.value)
    assert "mlflow-heroku:postgresPlan: 'hobby-dev' is not allowed: Heroku retired it" in message
    assert "mlflow-heroku:appName: 'Bad_Name' is not a valid Heroku app name" in message
    assert isinstance(raised.value, pulumi.RunError)


def test_bad_config_registers_nothing(program_module: ModuleType) -> None:
    config = base_config("prod")
    config[f"{PROJECT}:dynoCount"] = "zero"
    monitor = RecordingMonitor(HerokuAwsMocks(preview=False))
    with pytest.raises(
        SettingsError, match="mlflow-heroku:dynoCount: 'zero' is not a whole number"
    ):
        run_program("prod", config, program=program_module.main, monitor=monitor)
    assert monitor.registrations == []
    # The same monitor does record a good run's resources.
    run_program("prod", base_config("prod"), program=program_module.main, monitor=monitor)
    assert len(monitor.registrations) > 20


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_preview_of_a_new_stack_works_with_unknown_values(
    program_module: ModuleType, stack: str
) -> None:
    program = run(program_module, stack, preview=True)
    assert len(program.registrations) >= 20
    config_vars = program.one(CONFIG_VARS).inputs["vars"]
    # Values computed by Heroku (the host name) are unknown in a preview, not guessed.
    assert isinstance(config_vars["MLFLOW_SERVER_ALLOWED_HOSTS"], pulumi.output.Unknown)
    assert config_vars["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert isinstance(program.one(RELEASE).inputs["image_ref"], pulumi.output.Unknown)
    assert program.unknown_outputs == OUTPUT_NAMES - {"loginUser"}
    assert program.outputs["loginUser"] == "mlflow"
    assert {"loginPassword", "clientEnvironment"} <= program.secret_outputs


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    bad=st.sampled_from(
        [
            ("appName", "UPPER"),
            ("region", "mars"),
            ("postgresPlan", "hobby-basic"),
            ("dynoSize", "free"),
            ("mlflowWorkers", "99"),
            ("bucketName", "Not_A_Bucket"),
            ("loginUser", "a:b"),
            ("kmsKeyArn", "arn:aws:kms:eu-west-1:1:key/x"),
            ("maxBodySize", "10m"),
            ("customDomains", "not a host"),
        ]
    ),
    stack=st.sampled_from(["dev", "prod"]),
)
def test_generated_bad_stack_config_creates_nothing(
    program_module: ModuleType, bad: tuple[str, str], stack: str
) -> None:
    key, value = bad
    config = base_config(stack)
    config[f"{PROJECT}:{key}"] = value
    monitor = RecordingMonitor(HerokuAwsMocks(preview=True))
    with pytest.raises(SettingsError, match=f"mlflow-heroku:{key}: "):
        run_program(stack, config, preview=True, program=program_module.main, monitor=monitor)
    assert monitor.registrations == []


def test_host_of_takes_the_real_host_from_the_web_url() -> None:
    assert host_of("https://acme-1a2b3c4d5e6f.herokuapp.com/") == "acme-1a2b3c4d5e6f.herokuapp.com"
    with pytest.raises(ValueError, match="without a host name"):
        host_of("not a url")


def test_a_missing_dockerfile_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "entrypoint.py").write_text("print('hi')\n")
    with pytest.raises(pulumi.RunError, match="has no Dockerfile"):
        content_tag(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    first = content_tag(tmp_path)
    assert first == content_tag(tmp_path)
    (tmp_path / "entrypoint.py").write_text("print('changed')\n")
    assert content_tag(tmp_path) != first


def test_release_provider_is_stored_by_reference_without_secrets() -> None:
    provider = ContainerReleaseProvider(api_base_url="https://api.example.test")
    serialized = base64.b64decode(serialize_provider(provider))
    assert b"infra.release" in serialized
    assert b"ContainerReleaseProvider" in serialized
    assert b"def _release" not in serialized
    restored = dill.loads(serialized)  # noqa: S301 - bytes this test made itself
    assert type(restored) is ContainerReleaseProvider
    assert restored.api_base_url == "https://api.example.test"
