"""Bearer tokens of the control plane (HTTP API, web UI): made once, stored hashed.

A token reads ``tt_<id>_<secret>``: the id names it in lists and audit lines, the secret
is 32 random bytes. Only the SHA-256 of the whole token is stored (as GitHub and PyPI do
for theirs: the secret has full entropy, so a slow hash would add nothing), so a copy of
the database does not give anyone a usable token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from .._errors import TetherError
from .._records import ApiToken, Role
from ..storage import Store

__all__ = ["TokenError", "check_token", "create_token", "revoke_token"]

_SHAPE = re.compile(r"^tt_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")
# How stale last_used_at may get before a use writes it again (one write per minute at most).
_TOUCH_EVERY = 60.0


class TokenError(TetherError):
    """A token that cannot be made or found."""

    code = "token"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    store: Store, role: Role | str, *, name: str | None, by: str
) -> tuple[ApiToken, str]:
    try:
        role = Role(role)
    except ValueError:
        raise TokenError(
            f"role {role!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None
    token_id = secrets.token_hex(4)
    secret = f"tt_{token_id}_{secrets.token_urlsafe(32)}"
    name = name if name is not None else f"{role.value} token {token_id}"
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise TokenError("a token's name must be a non-empty string of at most 100 characters")
    token = ApiToken(token_id, name.strip(), role, time.time(), by)
    await store.create_token(token, _hash(secret))
    return token, secret


async def check_token(store: Store, secret: str) -> ApiToken | None:
    if not isinstance(secret, str) or not _SHAPE.match(secret):
        return None
    token = await store.find_token(_hash(secret))
    if token is None or not token.active:
        return None
    now = time.time()
    if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
        await store.touch_token(token.token_id, now)
    return token


async def revoke_token(store: Store, token_id: str) -> ApiToken:
    token = await store.revoke_token(token_id, time.time())
    if token is None:
        raise TokenError(f"no token {token_id!r}; list them with 'tether token list'")
    return token
