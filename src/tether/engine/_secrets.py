"""Secret arguments of tools, stored as keyed hashes (HMAC-SHA256), never in clear.

The key comes from ``App(secret_key=...)``, else ``TETHER_SECRET_KEY``, else the key file
``TETHER_SECRET_KEY_FILE`` (default ``~/.config/tether/secret.key``), created with 32
random bytes and mode 0600 on first use. A hash tells an auditor whether two calls used the
same secret; without the key, it cannot be checked against guesses. Give every worker of
one deployment the same key, so their hashes agree.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError

__all__ = ["SECRET_MARK", "SecretHasher", "is_secret_hash"]

SECRET_MARK = "$secret"
_KEY_ENV = "TETHER_SECRET_KEY"
_FILE_ENV = "TETHER_SECRET_KEY_FILE"


def _default_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tether" / "secret.key"


def _load_or_create(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the secret key file {path} ({exc.strerror}); set "
            f"{_KEY_ENV} or {_FILE_ENV}, or pass App(secret_key=...)"
        ) from None
    key = secrets.token_hex(32).encode()
    try:
        os.write(fd, key + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class SecretHasher:
    """Hashes secret values with the deployment's key, loaded on first use."""

    def __init__(self, key: str | bytes | None = None) -> None:
        self._key = key.encode() if isinstance(key, str) else key

    @property
    def key(self) -> bytes:
        if self._key is None:
            from_env = os.environ.get(_KEY_ENV)
            if from_env:
                self._key = from_env.encode()
            else:
                path = os.environ.get(_FILE_ENV)
                self._key = _load_or_create(Path(path) if path else _default_file())
            if not self._key:
                raise ConfigurationError("the secret key is empty; set a non-empty key")
        return self._key

    def hash(self, value: Any) -> dict[str, str]:
        """``{"$secret": "hmac-sha256:<hex>"}`` for the value's JSON."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        digest = hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()
        return {SECRET_MARK: f"hmac-sha256:{digest}"}


def is_secret_hash(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and SECRET_MARK in value
