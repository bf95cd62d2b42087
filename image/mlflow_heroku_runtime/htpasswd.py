"""The htpasswd file nginx checks the login against, written from Python (no shell)."""

from __future__ import annotations

import os
from pathlib import Path

import bcrypt

# nginx runs crypt() on every request it checks against this file, so the hash cost is paid
# per request (docs/benchmark.md, "Login check"). The plain password already sits in the
# dyno's environment, and online guessing is throttled by nginx's rate limit, so a slow hash
# would buy little and cost latency on every call: cost 5 stays a salted bcrypt hash.
BCRYPT_COST = 5
BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt 5: rejects) anything longer


def htpasswd_line(username: str, password: str, cost: int = BCRYPT_COST) -> str:
    """``user:$2b$...`` for one login. Any password character works; sizes are checked."""
    if not username or ":" in username or any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise ValueError("the user name must be non-empty without ':' or control characters")
    encoded = password.encode("utf-8")
    if not encoded or len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
        raise ValueError(f"the password must be 1 to {BCRYPT_MAX_PASSWORD_BYTES} bytes of UTF-8")
    hashed = bcrypt.hashpw(encoded, bcrypt.gensalt(rounds=cost, prefix=b"2b")).decode("ascii")
    return f"{username}:{hashed}\n"


def write_htpasswd(path: Path, username: str, password: str) -> None:
    """Write the file readable by this user only (created 0600, never world-readable)."""
    line = htpasswd_line(username, password)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(line)
