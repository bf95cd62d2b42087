"""The container image: built from image/ for linux/amd64, pushed to Heroku's registry as the
web process type's image and, the same image again, as the release process type's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pulumi
import pulumi_docker as docker

REGISTRY = "registry.heroku.com"
PLATFORM = "linux/amd64"
# Heroku's process types the image is pushed for (`registry.heroku.com/<app>/<type>`).
WEB_REPOSITORY = "web"
RELEASE_REPOSITORY = "release"
# Where `pulumi up` runs: the project directory (the one holding Pulumi.yaml).
PROJECT_DIR = Path(__file__).resolve().parent.parent
# Relative, so the build context recorded in the state is the same on every machine.
CONTEXT = "image"
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def content_tag(context: Path) -> str:
    """A tag derived from every file in the build context (paths and bytes), so an unchanged
    context gives the same tag and a changed one a new tag."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in context.rglob("*")
        if path.is_file()
        and not _SKIPPED_PARTS.intersection(path.relative_to(context).parts)
        and path.suffix != ".pyc"
    )
    if not (context / "Dockerfile").is_file():
        raise pulumi.RunError(
            f"the image build context {context} has no Dockerfile: run Pulumi from a full "
            "checkout of the repository (the directory holding Pulumi.yaml and image/)"
        )
    for path in files:
        relative = path.relative_to(context).as_posix().encode()
        digest.update(len(relative).to_bytes(4, "big") + relative)
        content = path.read_bytes()
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()[:20]


class HerokuImage(pulumi.ComponentResource):
    """Builds and pushes `registry.heroku.com/<app>/web:<content tag>`, then tags that same
    local image as `registry.heroku.com/<app>/release:<content tag>` and pushes it too.

    The second push follows `heroku container:release web release` and the Dev Center's release
    phase instructions ("push a Docker image named release"): the CLI reads each process type's
    manifest from its own repository. Its layers are already in the registry; no second build.

    pulumi-docker 5.2.0's Image sends the build to the Docker Engine's own build API (BuildKit,
    no buildx client). Provenance and SBOM attestations are something the buildx client adds, so
    this build makes none, and the Engine pushes a single-platform image manifest. Heroku wants
    that manifest in Docker v2 schema 2 media types; an Engine using the containerd image store
    may push OCI media types instead. The release step reads the pushed manifest and refuses
    anything but schema 2 with a message saying how to fix the Engine's setting.
    """

    repo_digest: pulumi.Output[str]
    image_name: pulumi.Output[str]
    release_repo_digest: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        app_name: pulumi.Input[str],
        api_key: pulumi.Input[str],
        context: Path | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-heroku:index:HerokuImage", name, None, opts)
        context_dir = PROJECT_DIR / CONTEXT if context is None else context
        tag = content_tag(context_dir)
        registry_password = pulumi.Output.secret(api_key)
        self.image = docker.Image(
            "image",
            image_name=pulumi.Output.concat(REGISTRY, "/", app_name, f"/{WEB_REPOSITORY}:", tag),
            build=docker.DockerBuildArgs(
                context=CONTEXT,
                dockerfile=f"{CONTEXT}/Dockerfile",
                platform=PLATFORM,
                builder_version=docker.BuilderVersion.BUILDER_BUILD_KIT,
            ),
            registry=docker.RegistryArgs(server=REGISTRY, username="_", password=registry_password),
            skip_push=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # A new web image (a new manifest digest) re-tags and re-pushes the release image; an
        # unchanged one leaves both alone. Tagging needs the web image in the local Docker
        # Engine, which it is after a build (docs/operations.md: "No such image").
        rebuilt = self.image.repo_digest
        self.release_tag = docker.Tag(
            "release-tag",
            source_image=self.image.image_name,
            target_image=pulumi.Output.concat(
                REGISTRY, "/", app_name, f"/{RELEASE_REPOSITORY}:", tag
            ),
            tag_triggers=[rebuilt],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.release_image = docker.RegistryImage(
            "release-image",
            name=self.release_tag.target_image,
            auth_config=docker.RegistryImageAuthConfigArgs(
                address=REGISTRY, username="_", password=registry_password
            ),
            triggers={"web_repo_digest": rebuilt},
            # Like the web image: a replaced or destroyed resource leaves the pushed image alone
            # (a release Heroku may roll back to runs it).
            keep_remotely=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.tag = tag
        self.repo_digest = self.image.repo_digest
        self.image_name = self.image.image_name
        self.release_repo_digest = pulumi.Output.concat(
            REGISTRY, "/", app_name, f"/{RELEASE_REPOSITORY}@", self.release_image.sha256_digest
        )
        self.register_outputs(
            {
                "image_name": self.image_name,
                "repo_digest": self.repo_digest,
                "release_repo_digest": self.release_repo_digest,
            }
        )
