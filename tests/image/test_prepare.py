"""What prepare chooses before anything starts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.image.runtime_values import ACCOUNTS_ENV, ACCOUNTS_SECRETS, GOOD_ENV


def test_free_loopback_ports_are_distinct_and_never_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker gets its own port, and none is $PORT, even when the kernel offers it."""
    from types import SimpleNamespace

    from mlflow_heroku_runtime import prepare

    offered = iter([5000, 41000, 41001, 41002])

    class FakeSocket:
        def __init__(self) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def bind(self, _address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(prepare, "socket", SimpleNamespace(socket=FakeSocket))
    assert prepare.free_loopback_ports(3, avoid=5000) == [41000, 41001, 41002]
    monkeypatch.undo()
    real = prepare.free_loopback_ports(16, avoid=5000)
    assert len(set(real)) == 16
    assert 5000 not in real


def test_accounts_mode_writes_mlflows_auth_config_privately(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """basic_auth.ini in the runtime directory (0600): the tracking database (its quoted
    password survives configparser), the default permission and the cache; no admin or
    people (the migration step makes those). MLflow's own reader gets the same values."""
    from mlflow_heroku_runtime import prepare
    from mlflow_heroku_runtime.settings import load_settings

    env = {**ACCOUNTS_ENV, "DATABASE_URL": "postgres://u:p%40ss%25w@db.example.com:5432/d"}
    settings = load_settings({**env, "MLFLOW_HEROKU_DEFAULT_PERMISSION": "NO_PERMISSIONS"})
    written = prepare.write_auth_config(settings, tmp_path)
    path = Path(written.mlflow_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert path.parent == tmp_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for secret in ACCOUNTS_SECRETS[3:]:
        assert secret not in text
    assert "admin" not in text.replace("_admin_", "")  # no admin_username / admin_password
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    from mlflow.server.auth.config import read_auth_config

    config = read_auth_config()
    assert config.database_uri == settings.backend_store_uri
    assert "p%40ss%25w" in config.database_uri
    assert (config.default_permission, config.auth_cache_ttl_seconds) == ("NO_PERMISSIONS", 30)
    assert (config.admin_username, config.admin_password) == (None, None)
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"


def test_accounts_mode_writes_no_htpasswd(tmp_path: Path) -> None:
    from mlflow_heroku_runtime import prepare
    from mlflow_heroku_runtime.settings import load_settings

    prepare.write_nginx_files(load_settings(ACCOUNTS_ENV), tmp_path, [41000, 41001])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["nginx.conf"]
    shared = tmp_path / "shared"
    shared.mkdir()
    prepare.write_nginx_files(load_settings(GOOD_ENV), shared, [41000])
    assert sorted(path.name for path in shared.iterdir()) == ["htpasswd", "nginx.conf"]
