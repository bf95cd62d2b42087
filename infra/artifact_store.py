"""The S3 artifact store and the least-privilege IAM user whose key the MLflow server uses."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
from pulumi_aws.s3 import (
    BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs as AbortIncompleteUploads,
)
from pulumi_aws.s3 import (
    BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs as NoncurrentExpiration,
)
from pulumi_aws.s3 import (
    BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs as SseDefault,
)

from infra.settings import Settings

# S3 actions the MLflow server needs on objects under its prefix: read, write (single and
# multipart, which s3:PutObject covers for Create/UploadPart/Complete), delete (artifact deletion,
# `mlflow gc`), and clean-up of multipart uploads that a client abandons.
OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
KMS_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")
# The database backups' prefix in the same bucket (the image's backup command writes there:
# image/mlflow_heroku_runtime/backup.py); the same key reaches it and nothing else.
BACKUP_PREFIX = "backups"
INCOMPLETE_UPLOAD_DAYS = 7


def user_policy_document(bucket_arn: str, prefix: str, kms_key_arn: str | None) -> dict[str, Any]:
    """The IAM user's inline policy: objects under the artifact prefix and the backup prefix,
    listing limited to those."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "MlflowArtifactObjects",
            "Effect": "Allow",
            "Action": list(OBJECT_ACTIONS),
            "Resource": f"{bucket_arn}/{prefix}/*",
        },
        {
            "Sid": "MlflowArtifactListing",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
        },
    ]
    if kms_key_arn is not None:
        statements.append(
            {
                "Sid": "MlflowArtifactEncryption",
                "Effect": "Allow",
                "Action": list(KMS_ACTIONS),
                "Resource": kms_key_arn,
            }
        )
    statements += [
        {
            "Sid": "MlflowBackupObjects",
            "Effect": "Allow",
            "Action": list(OBJECT_ACTIONS),
            "Resource": f"{bucket_arn}/{BACKUP_PREFIX}/*",
        },
        {
            "Sid": "MlflowBackupListing",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{BACKUP_PREFIX}/*"]}},
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def tls_only_policy_document(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy: refuse every request that does not arrive over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def bucket_prefix_for(app_name: str) -> str:
    """Prefix for a Pulumi-named bucket; S3 allows at most 37 characters of prefix."""
    return f"{app_name[:28].rstrip('-')}-mlflow-"


class ArtifactStore(pulumi.ComponentResource):
    """Private, encrypted, TLS-only S3 bucket plus an IAM user allowed only the artifact prefix."""

    bucket_name: pulumi.Output[str]
    s3_uri: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(
        self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-heroku:index:ArtifactStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Prod keeps its artifacts: `pulumi destroy` refuses, and even after `pulumi state
        # unprotect` the bucket stays in AWS. Dev empties and deletes the bucket on destroy.
        # The bucket's settings are kept with it: `destroy --exclude-protected` (the destroy
        # workflow) deletes every resource not itself protected, settings of a kept bucket
        # included, which would leave it without its public access block and TLS-only policy.
        keep = pulumi.ResourceOptions(
            parent=self, protect=settings.protect_data, retain_on_delete=settings.protect_data
        )

        self.bucket = aws.s3.Bucket(
            "bucket",
            bucket=settings.bucket_name,
            bucket_prefix=None if settings.bucket_name else bucket_prefix_for(settings.app_name),
            force_destroy=not settings.protect_data,
            tags={"app": settings.app_name, "stack": settings.stack},
            opts=keep,
        )
        bucket_id = self.bucket.id

        self.ownership = aws.s3.BucketOwnershipControls(
            "ownership",
            bucket=bucket_id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=keep,
        )
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            "public-access-block",
            bucket=bucket_id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=keep,
        )
        by_default = SseDefault(
            sse_algorithm="AES256" if settings.kms_key_arn is None else "aws:kms",
            kms_master_key_id=settings.kms_key_arn,
        )
        self.encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            "encryption",
            bucket=bucket_id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=by_default,
                    # S3 Bucket Keys cut KMS requests (and cost); meaningless for AES256.
                    bucket_key_enabled=settings.kms_key_arn is not None,
                )
            ],
            opts=keep,
        )
        self.versioning = aws.s3.BucketVersioning(
            "versioning",
            bucket=bucket_id,
            versioning_configuration={
                # A never-versioned bucket cannot go back to "Disabled", only to "Suspended".
                "status": "Enabled" if settings.bucket_versioning else "Suspended"
            },
            opts=keep,
        )
        rules = [
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="abort-incomplete-multipart-uploads",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(),
                abort_incomplete_multipart_upload=AbortIncompleteUploads(
                    days_after_initiation=INCOMPLETE_UPLOAD_DAYS
                ),
            )
        ]
        if settings.bucket_versioning:
            rules.append(
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-noncurrent-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(),
                    noncurrent_version_expiration=NoncurrentExpiration(
                        noncurrent_days=settings.noncurrent_version_expiration_days
                    ),
                )
            )
        self.lifecycle = aws.s3.BucketLifecycleConfiguration(
            "lifecycle",
            bucket=bucket_id,
            rules=rules,
            # Lifecycle rules on versions need the versioning state applied first.
            opts=pulumi.ResourceOptions.merge(
                keep, pulumi.ResourceOptions(depends_on=[self.versioning])
            ),
        )
        self.policy = aws.s3.BucketPolicy(
            "tls-only",
            bucket=bucket_id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_policy_document(arn))),
            # S3 rejects policy writes that race a public access block update.
            opts=pulumi.ResourceOptions.merge(
                keep, pulumi.ResourceOptions(depends_on=[self.public_access_block])
            ),
        )

        self.user = aws.iam.User(
            "user",
            name=f"{settings.app_name}-mlflow-artifacts",
            path="/mlflow-heroku/",
            tags={"app": settings.app_name, "stack": settings.stack},
            opts=child,
        )
        prefix = settings.artifact_prefix
        kms_key_arn = settings.kms_key_arn
        self.user_policy = aws.iam.UserPolicy(
            "user-policy",
            user=self.user.name,
            policy=self.bucket.arn.apply(
                lambda arn: json.dumps(user_policy_document(arn, prefix, kms_key_arn))
            ),
            opts=child,
        )
        # Rotation: bumping accessKeyGeneration gives the key a new logical name, so Pulumi creates
        # the new key, updates the Heroku config vars, then deletes the old key.
        self.access_key = aws.iam.AccessKey(
            f"access-key-{settings.access_key_generation}",
            user=self.user.name,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.user_policy],
                additional_secret_outputs=["secret"],
            ),
        )

        self.bucket_name = self.bucket.bucket
        self.s3_uri = self.bucket.bucket.apply(lambda bucket: f"s3://{bucket}/{prefix}")
        self.access_key_id = self.access_key.id
        self.secret_access_key = pulumi.Output.secret(self.access_key.secret)
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "s3_uri": self.s3_uri,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
            }
        )
