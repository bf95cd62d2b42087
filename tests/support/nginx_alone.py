"""A real nginx on the rendered config with no MLflow behind it, for tests of nginx's own work
(the login, the UI's files): a request that passes the login and goes on to MLflow gets 503."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow_heroku_runtime import htpasswd, nginx_config
from mlflow_heroku_runtime.settings import load_settings

from tests.image.runtime_values import GOOD_ENV
from tests.support.services import free_port, wait_for_port

USERNAME = "alice"


@contextlib.contextmanager
def nginx_alone(
    password: str = "s3cret-pw",  # noqa: S107 (test login)
    htpasswd_password: str | None = None,
    **changes: Any,
) -> Iterator[str]:
    """nginx for alice:password (its exact-header fast path), with an htpasswd file for
    alice:htpasswd_password (bcrypt's path; default the same) and ``changes`` to the settings;
    yields its base URL."""
    # Under /tmp, not pytest's private tmp_path: nginx's workers (nobody, as root) must reach
    # the htpasswd file, as in the entrypoint's own runtime directory.
    runtime = Path(tempfile.mkdtemp(prefix="nginx-alone-"))
    try:
        port = free_port()
        settings = dataclasses.replace(
            load_settings(GOOD_ENV),
            **{
                "port": port,
                "username": USERNAME,
                "password": password,
                "listen_address": "127.0.0.1",
                **changes,
            },
        )
        htpasswd_path = runtime / "htpasswd"
        htpasswd.write_htpasswd(htpasswd_path, USERNAME, htpasswd_password or password)
        worker_user = ""
        if os.geteuid() == 0:  # as root, nginx workers run as nobody and must read the file
            nobody = pwd.getpwnam("nobody")
            os.chown(htpasswd_path, nobody.pw_uid, nobody.pw_gid)
            runtime.chmod(0o711)
            worker_user = "nobody nogroup"
        config = runtime / "nginx.conf"
        config.write_text(
            nginx_config.render(
                settings,
                runtime_dir=runtime,
                htpasswd_path=htpasswd_path,
                mlflow_ports=[free_port()],
                worker_user=worker_user,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        process = subprocess.Popen(
            [nginx, "-e", "stderr", "-p", str(runtime), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_for_port(port, 5)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
