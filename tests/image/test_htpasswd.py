"""The htpasswd file nginx checks the shared login against."""

from __future__ import annotations

import stat
from pathlib import Path

import bcrypt
import pytest
from mlflow_heroku_runtime import htpasswd

from tests.image.runtime_values import TRICKY_PASSWORDS


@pytest.mark.parametrize("password", TRICKY_PASSWORDS)
def test_htpasswd_line_verifies_with_bcrypt(password: str) -> None:
    line = htpasswd.htpasswd_line("alice", password)
    user, hashed = line.rstrip("\n").split(":", 1)
    assert user == "alice"
    assert hashed.startswith(f"$2b$0{htpasswd.BCRYPT_COST}$")
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"wrong", hashed.encode())
    assert password not in line


def test_htpasswd_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.write_htpasswd(path, "alice", "some password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("user", "password"), [("a:b", "password"), ("", "password"), ("a", ""), ("a", "x" * 73)]
)
def test_htpasswd_refuses_what_basic_auth_cannot_carry(user: str, password: str) -> None:
    with pytest.raises(ValueError, match=r"user name|password"):
        htpasswd.htpasswd_line(user, password)
