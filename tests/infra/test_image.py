"""The image component under Pulumi's mocks: one build, pushed for the web and the release
process types (tests/infra/conftest.py holds the mocks), and the content tag."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from infra.image import PROJECT_DIR, HerokuImage, content_tag

from .conftest import API_KEY, ProgramRun, base_config, is_secret, reveal, run_program

IMAGE = "docker:index/image:Image"
TAG = "docker:index/tag:Tag"
REGISTRY_IMAGE = "docker:index/registryImage:RegistryImage"
APP = "acme-mlflow"


def image_alone(preview: bool = False) -> ProgramRun:
    def program() -> dict[str, pulumi.Output[str]]:
        image = HerokuImage("image", app_name=APP, api_key=pulumi.Output.secret(API_KEY))
        return {"web": image.repo_digest, "release": image.release_repo_digest}

    return run_program("dev", base_config("dev"), preview=preview, program=program)


@pytest.fixture(scope="module")
def pushed() -> ProgramRun:
    return image_alone()


def test_one_build_for_amd64_pushed_to_the_web_repository(pushed: ProgramRun) -> None:
    tag = content_tag(PROJECT_DIR / "image")
    (image,) = pushed.all(IMAGE)  # one build, whatever else is pushed
    assert image.inputs["imageName"] == f"registry.heroku.com/{APP}/web:{tag}"
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


def test_the_same_local_image_is_tagged_and_pushed_for_the_release_process(
    pushed: ProgramRun,
) -> None:
    tag = content_tag(PROJECT_DIR / "image")
    image = pushed.one(IMAGE)
    release_tag = pushed.one(TAG)
    # Tagged from the built image (no second build), under the release process type's name.
    assert release_tag.inputs["sourceImage"] == image.outputs["imageName"]
    assert release_tag.inputs["targetImage"] == f"registry.heroku.com/{APP}/release:{tag}"
    # A rebuilt web image (a new manifest digest) re-tags and re-pushes it.
    assert release_tag.inputs["tagTriggers"] == [image.outputs["repoDigest"]]
    push = pushed.one(REGISTRY_IMAGE)
    assert push.inputs["name"] == release_tag.outputs["targetImage"]
    assert push.inputs["triggers"] == {"web_repo_digest": image.outputs["repoDigest"]}
    assert push.inputs["keepRemotely"] is True  # a release Heroku rolls back to may run it
    assert is_secret(push.inputs["authConfig"])
    assert reveal(push.inputs["authConfig"]) == {
        "address": "registry.heroku.com",
        "username": "_",
        "password": API_KEY,
    }
    for registration in (release_tag, push):
        assert pushed.parent_of(registration).type == "mlflow-heroku:index:HerokuImage"


def test_the_component_gives_each_process_types_manifest_reference(pushed: ProgramRun) -> None:
    assert pushed.resolved == 2
    web = pushed.one(IMAGE).outputs["repoDigest"]
    assert pushed.outputs["web"] == web
    digest = pushed.one(REGISTRY_IMAGE).outputs["sha256Digest"]
    assert pushed.outputs["release"] == f"registry.heroku.com/{APP}/release@{digest}"
    assert pushed.outputs["release"].startswith(f"registry.heroku.com/{APP}/release@sha256:")


def test_a_preview_of_a_new_image_leaves_both_references_unknown() -> None:
    preview = image_alone(preview=True)
    assert preview.unknown_outputs == {"web", "release"}


def test_the_content_tag_follows_every_file_and_needs_a_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "entrypoint.py").write_text("print('hi')\n")
    with pytest.raises(pulumi.RunError, match="has no Dockerfile"):
        content_tag(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    first = content_tag(tmp_path)
    assert first == content_tag(tmp_path)
    (tmp_path / "entrypoint.py").write_text("print('changed')\n")
    changed = content_tag(tmp_path)
    assert changed != first
    # Caches are not part of the image's content.
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "entrypoint.cpython-311.pyc").write_bytes(b"\0")
    assert content_tag(tmp_path) == changed
