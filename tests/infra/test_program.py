"""The whole Pulumi program under mocks, for both stacks: resources, properties, parents,
dependencies, protection, secrets, exports, bad configuration and preview mode."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pulumi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra import heroku_app
from infra.artifact_store import OBJECT_ACTIONS
from infra.heroku_app import host_of
from infra.image import PROJECT_DIR, content_tag
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
TAG = "docker:index/tag:Tag"
REGISTRY_IMAGE = "docker:index/registryImage:RegistryImage"
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
    "loginMode",
    "loginUser",
    "loginPassword",
    "bucketName",
    "imageId",
    "clientEnvironment",
}
# The prod stack file's example team.
PROD_PEOPLE = {"alice": "admin", "bob": "editor", "carol": "reader"}
# The generated secrets each stack file's stack declares.
GENERATED = {
    "dev": {"login-password", "gateway-kek-passphrase"},
    "prod": {
        "admin-password",
        "gateway-kek-passphrase",
        *(f"person-password-{name}" for name in PROD_PEOPLE),
    },
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
        TAG: "mlflow-heroku:index:HerokuImage",
        REGISTRY_IMAGE: "mlflow-heroku:index:HerokuImage",
        RELEASE: "mlflow-heroku:index:WebRelease",
        FORMATION: "mlflow-heroku:index:WebRelease",
    }
    types = sorted(r.type for r in program.registrations if r.type != PASSWORD)
    assert types == sorted({*expected_parent, *COMPONENTS} - {PASSWORD})
    assert {r.name for r in program.all(PASSWORD)} == GENERATED[stack]
    assert len(program.all(PASSWORD)) == len(GENERATED[stack])
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
        "MLFLOW_HEROKU_LOGIN_MODE": "shared",
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
        "MLFLOW_TRACKING_PASSWORD": generated(dev, "login-password"),
        "MLFLOW_CRYPTO_KEK_PASSPHRASE": generated(dev, "gateway-kek-passphrase"),
    }
    # DATABASE_URL belongs to the add-on (it changes on credential rotation and failover).
    assert "DATABASE_URL" not in config_vars.inputs["vars"]
    # No secret value leaks into the plain (non-sensitive) vars.
    plain_values = json.dumps(config_vars.inputs["vars"])
    for value in reveal(sensitive).values():
        assert value not in plain_values
    depends_on(dev, config_vars, "app", "bucket", "access-key-1", "login-password")


def generated(program: ProgramRun, name: str) -> str:
    """The value a RandomPassword of the program generated (the mock's stand-in)."""
    return str(reveal(program.one(PASSWORD, name).outputs["result"]))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_generated_secrets_are_long_secrets(stack: str, dev: ProgramRun, prod: ProgramRun) -> None:
    program = dev if stack == "dev" else prod
    for password in program.all(PASSWORD):
        long = password.name == "gateway-kek-passphrase"
        assert password.inputs["length"] == (64 if long else 32), password.name
        # Letters and digits only: they end up in shell exports and URLs.
        assert password.inputs["special"] is False, password.name
        assert "result" in password.additional_secret_outputs, password.name
        # Only a person's generator has keepers; nothing else replaces a password.
        keepers = password.inputs.get("keepers")
        if password.name.startswith("person-password-"):
            assert keepers == {"username": password.name.removeprefix("person-password-")}
        else:
            assert keepers is None, password.name


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


def test_the_image_is_pushed_for_web_and_release_under_the_apps_name(dev: ProgramRun) -> None:
    """What the image is and how it is pushed is tests/infra/test_image.py's; here: the app's
    name reaches both repositories, and the release push follows the web push."""
    tag = content_tag(PROJECT_DIR / "image")
    assert dev.one(IMAGE).inputs["imageName"] == f"registry.heroku.com/mlflow-heroku-dev/web:{tag}"
    release_tag = dev.one(TAG)
    assert release_tag.inputs["sourceImage"] == dev.one(IMAGE).outputs["imageName"]
    assert release_tag.inputs["targetImage"] == (
        f"registry.heroku.com/mlflow-heroku-dev/release:{tag}"
    )
    depends_on(dev, release_tag, "image")
    depends_on(dev, dev.one(REGISTRY_IMAGE), "release-tag", "image")


def test_release_waits_for_config_vars_and_database_then_formation_follows(
    dev: ProgramRun,
) -> None:
    release = dev.one(RELEASE)
    assert release.inputs["app_name"] == "mlflow-heroku-dev"
    assert release.inputs["process_type"] == "web"
    assert release.inputs["image_ref"] == dev.one(IMAGE).outputs["repoDigest"]
    # The release phase runs the same image, pushed to the release process type's repository.
    pushed = dev.one(REGISTRY_IMAGE).outputs["sha256Digest"]
    assert release.inputs["release_image_ref"] == (
        f"registry.heroku.com/mlflow-heroku-dev/release@{pushed}"
    )
    assert release.inputs["timeout_seconds"] == 600
    assert is_secret(release.inputs["api_key"])
    assert reveal(release.inputs["api_key"]) == API_KEY
    # The serialized provider is a secret too (it could capture secrets).
    assert is_secret(release.inputs["__provider"])
    depends_on(dev, release, "config-vars", "postgres", "image", "release-image")
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
    password = generated(dev, "login-password")
    assert dev.outputs["loginMode"] == "shared"
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
    assert {r.name for r in program.all(PASSWORD)} == {"gateway-kek-passphrase"}
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
    release's own diff (no change for the same image) is tested in test_release.py."""
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
    assert isinstance(program.one(RELEASE).inputs["release_image_ref"], pulumi.output.Unknown)
    assert program.unknown_outputs == OUTPUT_NAMES - {"loginUser", "loginMode"}
    assert program.outputs["loginUser"] == {"dev": "mlflow", "prod": "admin"}[stack]
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
            ("people", "not a list"),
            ("loginMode", "sso"),
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


# -- login modes and team accounts --------------------------------------------------------------


def test_accounts_mode_sets_the_accounts_config_vars_and_no_shared_login(prod: ProgramRun) -> None:
    config_vars = prod.one(CONFIG_VARS).inputs
    plain = config_vars["vars"]
    assert plain["MLFLOW_HEROKU_LOGIN_MODE"] == "accounts"
    assert plain["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert plain["MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS"] == "30"
    assert plain["MLFLOW_HEROKU_DEFAULT_PERMISSION"] == "READ"
    assert json.loads(plain["MLFLOW_HEROKU_PEOPLE"]) == [
        {"username": name, "role": role} for name, role in PROD_PEOPLE.items()
    ]
    assert is_secret(config_vars["sensitiveVars"])
    sensitive = reveal(config_vars["sensitiveVars"])
    assert sensitive["MLFLOW_AUTH_ADMIN_PASSWORD"] == generated(prod, "admin-password")
    assert json.loads(sensitive["MLFLOW_HEROKU_PEOPLE_PASSWORDS"]) == {
        name: generated(prod, f"person-password-{name}") for name in PROD_PEOPLE
    }
    assert sensitive["MLFLOW_CRYPTO_KEK_PASSPHRASE"] == generated(prod, "gateway-kek-passphrase")
    # Nothing of the shared login is left for the image to read.
    every_var = set(plain) | set(sensitive)
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & every_var
    # The program sets exactly the login variables its mode names, plain and sensitive.
    login_vars = {var for pair in heroku_app.LOGIN_VARS.values() for names in pair for var in names}
    plain_names, sensitive_names = heroku_app.LOGIN_VARS["accounts"]
    assert set(plain) & login_vars == plain_names
    assert set(sensitive) & login_vars == sensitive_names
    depends_on(prod, prod.one(CONFIG_VARS), "admin-password", "person-password-bob")


def test_shared_mode_sets_exactly_its_login_variables(dev: ProgramRun) -> None:
    config_vars = dev.one(CONFIG_VARS).inputs
    login_vars = {var for pair in heroku_app.LOGIN_VARS.values() for names in pair for var in names}
    plain_names, sensitive_names = heroku_app.LOGIN_VARS["shared"]
    assert set(config_vars["vars"]) & login_vars == plain_names
    assert set(reveal(config_vars["sensitiveVars"])) & login_vars == sensitive_names


def test_accounts_mode_exports_each_persons_client_lines_as_a_secret(prod: ProgramRun) -> None:
    assert prod.outputs["loginMode"] == "accounts"
    assert prod.secret_outputs == {"loginPassword", "clientEnvironment"}
    # The program's own login is the admin account (the smoke check logs in with it).
    assert prod.outputs["loginUser"] == "admin"
    assert prod.outputs["loginPassword"] == generated(prod, "admin-password")
    uri = prod.one(APP).outputs["webUrl"].rstrip("/")
    logins = {"admin": generated(prod, "admin-password")} | {
        name: generated(prod, f"person-password-{name}") for name in PROD_PEOPLE
    }
    assert prod.outputs["clientEnvironment"] == {
        name: (
            f"export MLFLOW_TRACKING_URI={uri}\n"
            f"export MLFLOW_TRACKING_USERNAME={name}\n"
            f"export MLFLOW_TRACKING_PASSWORD={password}\n"
        )
        for name, password in logins.items()
    }
    assert len(set(logins.values())) == len(logins)


def all_secret_values(program: ProgramRun, config: dict[str, str]) -> set[str]:
    """Every secret the program handles: what it generated, the access key's secret half and
    the secrets of the stack's configuration."""
    values = {generated(program, r.name) for r in program.all(PASSWORD)}
    values.add(str(reveal(program.one(ACCESS_KEY).outputs["secret"])))
    values |= {
        value
        for key, value in config.items()
        if key in ("heroku:apiKey", f"{PROJECT}:loginPassword", f"{PROJECT}:adminPassword")
    }
    return values


SECRETS_CASES = {
    "shared, generated": ("dev", {}),
    "shared, configured": ("dev", {"loginPassword": "a-configured-shared-password"}),
    "accounts, generated": ("prod", {}),
    "accounts, configured": ("prod", {"adminPassword": "a-configured-admin-password"}),
}


@pytest.mark.parametrize(("stack", "overrides"), list(SECRETS_CASES.values()), ids=SECRETS_CASES)
def test_no_secret_appears_in_a_plain_output_or_config_var(
    program_module: ModuleType, stack: str, overrides: dict[str, str]
) -> None:
    config = base_config(stack) | {f"{PROJECT}:{key}": value for key, value in overrides.items()}
    program = run_program(stack, config, program=program_module.main)
    secrets = all_secret_values(program, config)
    assert len(secrets) >= 4
    plain_outputs = json.dumps(
        {
            name: value
            for name, value in program.outputs.items()
            if name not in program.secret_outputs
        }
    )
    config_vars = program.one(CONFIG_VARS).inputs
    plain_vars = json.dumps(config_vars["vars"])
    assert is_secret(config_vars["sensitiveVars"])
    for value in secrets:
        assert value not in plain_outputs
        assert value not in plain_vars
    # Each generated or configured login password does reach the sensitive vars.
    sensitive = json.dumps(reveal(config_vars["sensitiveVars"]))
    for value in secrets - {API_KEY}:
        assert value in sensitive
    assert program.secret_outputs == {"loginPassword", "clientEnvironment"}
    if overrides:
        # A configured password replaces the generator.
        (configured,) = overrides.values()
        assert program.outputs["loginPassword"] == configured
        assert not {"login-password", "admin-password"} & {r.name for r in program.all(PASSWORD)}


def person_passwords(program: ProgramRun) -> dict[str, Registration]:
    return {
        r.name.removeprefix("person-password-"): r
        for r in program.all(PASSWORD)
        if r.name.startswith("person-password-")
    }


def test_people_keep_their_password_generators_as_the_team_changes(
    program_module: ModuleType, prod: ProgramRun
) -> None:
    """What `pulumi up` diffs for a person's generator: the same URN and inputs, so the same
    password, as long as they are listed (a role change included); removed, it goes."""
    before = person_passwords(prod)
    team = [
        {"username": "alice", "role": "admin"},
        {"username": "carol", "role": "editor"},  # was a reader
        {"username": "dave", "role": "reader"},  # new
    ]
    after_run = run(program_module, "prod", people=json.dumps(team))
    after = person_passwords(after_run)
    assert set(after) == {"alice", "carol", "dave"}
    for name in ("alice", "carol"):
        assert (after[name].urn, after[name].inputs) == (before[name].urn, before[name].inputs)
        assert generated(after_run, f"person-password-{name}") == generated(
            prod, f"person-password-{name}"
        )
    people_var = json.loads(after_run.one(CONFIG_VARS).inputs["vars"]["MLFLOW_HEROKU_PEOPLE"])
    assert people_var == team
    passwords = reveal(after_run.one(CONFIG_VARS).inputs["sensitiveVars"])
    assert set(json.loads(passwords["MLFLOW_HEROKU_PEOPLE_PASSWORDS"])) == {
        "alice",
        "carol",
        "dave",
    }
    assert set(after_run.outputs["clientEnvironment"]) == {"admin", "alice", "carol", "dave"}
    # The admin's and the gateway's generators do not move either.
    for name in ("admin-password", "gateway-kek-passphrase"):
        assert after_run.one(PASSWORD, name).urn == prod.one(PASSWORD, name).urn


def test_switching_to_accounts_drops_the_shared_login_and_keeps_the_gateway_passphrase(
    program_module: ModuleType, dev: ProgramRun
) -> None:
    switched = run(program_module, "dev", loginMode="accounts", mlflowWorkers="1")
    names = {r.name for r in switched.all(PASSWORD)}
    assert names == {"admin-password", "gateway-kek-passphrase"}
    kek = switched.one(PASSWORD, "gateway-kek-passphrase")
    assert (kek.urn, kek.inputs) == (
        dev.one(PASSWORD, "gateway-kek-passphrase").urn,
        dev.one(PASSWORD, "gateway-kek-passphrase").inputs,
    )
    plain = switched.one(CONFIG_VARS).inputs["vars"]
    assert plain["MLFLOW_HEROKU_LOGIN_MODE"] == "accounts"
    assert json.loads(plain["MLFLOW_HEROKU_PEOPLE"]) == []
    sensitive = reveal(switched.one(CONFIG_VARS).inputs["sensitiveVars"])
    assert json.loads(sensitive["MLFLOW_HEROKU_PEOPLE_PASSWORDS"]) == {}
    assert "MLFLOW_TRACKING_USERNAME" not in plain
    assert set(switched.outputs["clientEnvironment"]) == {"admin"}


def test_accounts_settings_reach_the_config_vars(program_module: ModuleType) -> None:
    program = run(
        program_module,
        "prod",
        adminUsername="mlflow-admin",
        authCacheTtlSeconds="0",
        defaultPermission="NO_PERMISSIONS",
    )
    plain = program.one(CONFIG_VARS).inputs["vars"]
    assert plain["MLFLOW_AUTH_ADMIN_USERNAME"] == "mlflow-admin"
    assert plain["MLFLOW_HEROKU_AUTH_CACHE_TTL_SECONDS"] == "0"
    assert plain["MLFLOW_HEROKU_DEFAULT_PERMISSION"] == "NO_PERMISSIONS"
    assert program.outputs["loginUser"] == "mlflow-admin"
    assert "mlflow-admin" in program.outputs["clientEnvironment"]


def test_the_accounts_store_counts_in_the_budget_before_anything_is_declared(
    program_module: ModuleType,
) -> None:
    """dev's pools fit essential-0 in shared mode, not with the accounts store's pool."""
    monitor = RecordingMonitor(HerokuAwsMocks(preview=True))
    config = base_config("dev") | {f"{PROJECT}:loginMode": "accounts"}
    with pytest.raises(SettingsError, match=r"x 3 pools \(tracking, model registry, accounts\)"):
        run_program("dev", config, preview=True, program=program_module.main, monitor=monitor)
    assert monitor.registrations == []
