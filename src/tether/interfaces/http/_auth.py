"""Who is asking, what they may do, and whether the browser really meant it.

Every request but ``/healthz``, the static files and the login and logout pages carries a
bearer token made with ``tether token create``: in the ``Authorization: Bearer <secret>``
header (API clients) or in the HttpOnly cookie ``tether_token`` that the web login form
sets. The token's :class:`~tether.Role` decides what the request may do (:func:`require`);
each role may do all the one before it may (viewer, approver, admin).

In dev mode (``tether serve --dev``, loopback only) nobody logs in: every request is the
principal ``dev`` with the admin role.

CSRF: a browser attaches cookies to requests that other sites make, so a state-changing
request (any method but GET, HEAD, OPTIONS) authenticated by the cookie, or by nothing in
dev mode, must prove it comes from our own pages: it is refused when ``Sec-Fetch-Site`` is
``cross-site`` or ``Origin`` names another origin, and it must carry the double-submit
token, the value of the ``tether_csrf`` cookie, in the form field ``csrf_token`` or the
header ``X-CSRF-Token`` (:func:`csrf_token` gives it to templates). A request that sends an
``Authorization`` header is exempt: browsers never attach one by themselves, and another
site cannot add one without a CORS preflight, which this server never grants.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..._records import ApiToken, Role
from ...engine import App
from ._errors import ApiError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "AuthError",
    "Principal",
    "clear_token_cookie",
    "csrf_token",
    "principal",
    "require",
    "set_token_cookie",
    "tether_app",
    "verify_csrf",
]

TOKEN_COOKIE = "tether_token"
CSRF_COOKIE = "tether_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Longer than any secret app.create_token makes; a longer one is refused unhashed.
MAX_SECRET = 512
# What secrets.token_urlsafe(32) makes, with room to spare.
_CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")
MAKE_TOKEN = "make one with 'tether token create --role viewer' (or approver, admin)"

Via = Literal["header", "cookie", "dev"]
# Only for /openapi.json, which then documents the scheme: principal() reads the header.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A token made with 'tether token create --role viewer|approver|admin'.",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: ``name`` is what approvals, resolutions and budget raises
    record as ``by`` (``"alice (token 3f2a)"``, or ``"dev"``)."""

    name: str
    role: Role
    token_id: str | None = None
    # How the request was authenticated; "cookie" and "dev" requests need the CSRF check.
    via: Via = "header"


class AuthError(ApiError):
    """A request refused for who sent it: 401 (no valid token), 403 (a role that may not,
    or a failed CSRF check). The app's handler answers JSON for the API and a redirect to
    the login page (401) or a short page (403) for the web UI."""


def tether_app(request: Request) -> App:
    """The :class:`~tether.App` this server answers for (set by ``create_app``)."""
    app: App = request.app.state.tether
    return app


def is_dev(request: Request) -> bool:
    return bool(getattr(request.app.state, "dev", False))


def principal_name(token: ApiToken) -> str:
    return f"{token.name} (token {token.token_id})"


def _bearer(request: Request) -> str | None:
    """The secret of an ``Authorization: Bearer`` header; ``None`` without the header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthError(
            401,
            "unauthenticated",
            "the Authorization header must be 'Bearer <token>'; " + MAKE_TOKEN,
        )
    return secret


async def principal(request: Request) -> Principal:
    """FastAPI dependency: who sent the request (401 :class:`AuthError` if nobody valid).

    The ``Authorization`` header wins over the cookie. The answer is kept on
    ``request.state.principal`` for the rest of the request (templates show it)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    if is_dev(request):
        via: Via = "header" if request.headers.get("authorization") is not None else "dev"
        found = Principal("dev", Role.ADMIN, None, via)
    else:
        secret = _bearer(request)
        via = "header"
        if secret is None:
            secret = request.cookies.get(TOKEN_COOKIE) or None
            via = "cookie"
        if secret is None:
            raise AuthError(
                401,
                "unauthenticated",
                "no token: send 'Authorization: Bearer <token>' or log in; " + MAKE_TOKEN,
            )
        token = None if len(secret) > MAX_SECRET else await tether_app(request).check_token(secret)
        if token is None:
            where = "the cookie's token" if via == "cookie" else "the token"
            raise AuthError(
                401,
                "invalid_token",
                f"{where} is unknown or revoked; log in again or " + MAKE_TOKEN,
            )
        found = Principal(principal_name(token), token.role, token.token_id, via)
    request.state.principal = found
    return found


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that admits principals whose role allows ``role`` (else 403)
    and, for a state-changing request from a browser, checks CSRF (:func:`verify_csrf`)."""

    async def dependency(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> Principal:
        who = await principal(request)
        if request.method not in SAFE_METHODS:
            await verify_csrf(request, who)
        if not who.role.allows(role):
            raise AuthError(
                403,
                "forbidden",
                f"{who.name} has the {who.role.value} role; this needs {role.value} or "
                f"above (ask an admin for a token with 'tether token create --role "
                f"{role.value}')",
            )
        return who

    dependency.__name__ = f"require_{role.value}"
    return dependency


# -- CSRF ---------------------------------------------------------------------------------
def csrf_token(request: Request) -> str:
    """The double-submit token for this browser: the ``tether_csrf`` cookie's value, or a
    new one that the response sets as that cookie. Put it in forms as the hidden field
    ``csrf_token`` and in htmx requests as the header ``X-CSRF-Token``."""
    token: str | None = getattr(request.state, "csrf_token", None)
    if token is None:
        token = _csrf_cookie(request)
        if token is None:
            token = secrets.token_urlsafe(32)
            request.state.csrf_token_new = True
        request.state.csrf_token = token
    return token


def _csrf_cookie(request: Request) -> str | None:
    """The ``tether_csrf`` cookie if it has the shape of the tokens we make. Another one (a
    page on another port of this host may set cookies for it) is never used: its value
    goes into the pages' ``hx-headers`` JSON, where a quote would break every action."""
    token = request.cookies.get(CSRF_COOKIE)
    return token if token is not None and _CSRF_SHAPE.fullmatch(token) else None


def _same_origin(origin: str, request: Request) -> bool:
    host = request.headers.get("host")
    if not host or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


async def verify_csrf(request: Request, who: Principal | None = None) -> None:
    """Refuse (403 :class:`AuthError`) a state-changing browser request that another site
    may have made: see the module docstring. Requests authenticated by an
    ``Authorization`` header pass. ``who=None`` checks as for a cookie (a login form)."""
    if who is not None and who.via == "header":
        return

    def refuse(why: str) -> AuthError:
        return AuthError(403, "csrf", f"{why}; reload the page and try again")

    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise refuse("refused a cross-site request")
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        raise refuse(f"refused a request from another origin ({origin})")
    expected = _csrf_cookie(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
    if not expected or not given:
        raise refuse(
            f"missing CSRF token (the {CSRF_FIELD} form field or the {CSRF_HEADER} header, "
            f"equal to the {CSRF_COOKIE} cookie; API clients send an Authorization header)"
        )
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise refuse("the CSRF token does not match")


# -- the login cookie ---------------------------------------------------------------------
def set_token_cookie(response: Response, request: Request, secret: str) -> None:
    """Log the browser in: the token in an HttpOnly cookie (SameSite=Lax, Secure on
    https), for the session."""
    response.set_cookie(
        TOKEN_COOKIE,
        secret,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def clear_token_cookie(response: Response) -> None:
    """Log the browser out."""
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="lax")
