"""The control-plane server: one FastAPI application over a :class:`~tether.App`.

``create_app(app)`` serves the JSON API under ``/api/v1`` (:mod:`._api`), the web UI
(:mod:`._web`), its static files under ``/static``, ``/openapi.json`` (for a token) and
``/healthz`` (for anyone). Nothing is loaded from a CDN: FastAPI's ``/docs`` and ``/redoc``
pages are off, since they fetch Swagger UI from one.

The server runs no workflows: its lifespan opens the App with ``worker=False`` and closes
it. It talks to the database only through the App's query and command API.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ... import __version__
from ..._errors import RunNotFoundError, StorageError, TetherError
from ..._records import Role
from ...engine import App
from . import _api, _web
from ._auth import CSRF_COOKIE, Principal, require
from ._errors import ApiError, error_body, status_of
from ._models import Health

__all__ = ["create_app", "is_loopback"]

log = logging.getLogger("tether.http")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"

DESCRIPTION = """The control plane of Tether: runs, their journals and tool calls, what
needs a person, and the commands that act on them (approve, signal, resolve, raise a
budget, cancel), plus API tokens.

Every route but `/healthz` needs `Authorization: Bearer <token>` (make one with
`tether token create --role viewer|approver|admin`). Errors are
`{"error": {"code": ..., "message": ...}}`."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, maybe ``[::1]``) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(app: App, *, dev: bool = False) -> FastAPI:
    """The control-plane server for ``app``.

    ``dev=True`` serves everyone as the admin ``dev`` without a token; it answers only
    requests made to a loopback address (``tether serve --dev`` binds only to one), so
    that neither another machine nor a web page rebinding a DNS name to 127.0.0.1 gets in.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await app.open(worker=False)
        try:
            yield
        finally:
            await app.close()

    server = FastAPI(
        title="Tether control plane",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, for a token
        lifespan=lifespan,
    )
    server.state.tether = app
    server.state.dev = dev

    @server.get(
        "/healthz",
        tags=["overview"],
        summary="Liveness and the database (no token needed)",
        response_model=Health,
        responses={503: {"model": Health, "description": "The database does not answer."}},
    )
    async def healthz() -> JSONResponse:
        """Liveness and the database: 200 ``{"status": "ok"}``, or 503."""
        try:
            await app.list_runs(limit=1)
        except StorageError as exc:
            # Anyone may ask: say that the database is down, not where it is (the server
            # log has the details).
            log.warning("healthz: %s", exc.message)
            message = "the database does not answer; see the server's log"
            return JSONResponse({"status": "unavailable", "message": message}, status_code=503)
        return JSONResponse({"status": "ok"})

    @server.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Annotated[Principal, Depends(require(Role.VIEWER))]) -> JSONResponse:
        return JSONResponse(server.openapi())

    server.include_router(_api.router)
    server.include_router(_web.router)
    server.mount("/static", StaticFiles(directory=STATIC), name="static")

    _install_error_handlers(server)
    server.add_middleware(_Guard, dev=dev)
    return server


# -- errors -------------------------------------------------------------------------------
def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path == "/openapi.json":
        return False
    return "text/html" in request.headers.get("accept", "") or "hx-request" in request.headers


def _install_error_handlers(server: FastAPI) -> None:
    def html(request: Request, status_code: int, code: str, message: str) -> Response:
        return _web.error_page(request, status_code, message)

    def answer(request: Request, status_code: int, code: str, message: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
        if not _wants_html(request):
            return JSONResponse(error_body(code, message), status_code, headers=headers)
        if status_code == 401:
            if "hx-request" in request.headers:  # htmx follows this instead of swapping
                return Response(status_code=401, headers={"HX-Redirect": "/login"})
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
        return html(request, status_code, code, message)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(request, exc.status_code, exc.code, exc.message)

    async def on_tether_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TetherError)
        status_code = status_of(exc)
        message = exc.message
        if isinstance(exc, RunNotFoundError) and not _wants_html(request):
            message = f"no run {getattr(exc, 'run_id', None)!r}; list runs at /api/v1/runs"
        if isinstance(exc, StorageError):
            log.warning("storage error answering %s %s: %s", request.method, request.url, exc)
            message = f"the database is unavailable: {message}; try again shortly"
        return answer(request, status_code, exc.code, message)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(error) for error in exc.errors()]
        message = "; ".join(problems) or "the request is malformed"
        if not _wants_html(request):
            return JSONResponse(
                error_body("invalid_request", message, problems=problems), status_code=422
            )
        return html(request, 422, "invalid_request", message)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's answer to a body that is not UTF-8 text: malformed, like bad JSON.
            return answer(
                request,
                422,
                "invalid_request",
                "the body could not be read; send JSON text (UTF-8) with Content-Type: "
                "application/json",
            )
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page: {request.url.path}"
            if request.url.path.startswith("/api/"):
                message = f"no API route {request.url.path}; see /openapi.json"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            message = f"{request.method} is not allowed on {request.url.path}"
            if allowed:
                message += f"; use {', '.join(allowed)}"
            response = answer(request, 405, code, message)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        response = answer(request, exc.status_code, code, message)
        for key, value in (exc.headers or {}).items():
            response.headers.setdefault(key, value)
        return response

    server.add_exception_handler(ApiError, on_api_error)
    server.add_exception_handler(TetherError, on_tether_error)
    server.add_exception_handler(RequestValidationError, on_validation)
    server.add_exception_handler(StarletteHTTPException, on_http)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only those of
    the first route matching the path)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header"}


def _problem(error: Any) -> str:
    """One validation error as a sentence: where, what is wrong, what was given."""
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "is invalid"))
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', message)})"
    if error.get("type") == "missing" and loc == ["body"]:
        return "the body is missing; send a JSON object"
    where = "the request"
    if loc and loc[0] in _PLACES and len(loc) > 1:
        where = f"{_PLACES[loc[0]]} {loc[1]!r}"
    elif loc and loc[0] == "body":
        where = "body field " + repr(".".join(loc[1:])) if len(loc) > 1 else "the body"
    given = ""
    if error.get("type") != "missing" and "input" in error:
        text = repr(error["input"])
        given = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    return f"{where}: {message}{given}"


# -- middleware ---------------------------------------------------------------------------
# The largest request body read: FastAPI reads and parses a body before any dependency
# (the token check among them) runs, so without a cap anyone could make the server hold
# any amount in memory. A form field is held to 1 MiB by Starlette besides.
MAX_BODY = 4 * 1024 * 1024
TOO_LARGE = (
    f"the request body is larger than {MAX_BODY // (1024 * 1024)} MiB; send less (a tool "
    "call's result or a signal's value this large belongs in a file or a blob store)"
)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body streams past :data:`MAX_BODY`; FastAPI passes an
    HTTPException raised while it reads the body on to the handlers (a 413)."""

    def __init__(self) -> None:
        super().__init__(413, TOO_LARGE)


class _Guard:
    """Headers for every response (no framing, no sniffing; no caching of the API), the
    CSRF cookie when a page made one, the cap on request bodies, and in dev mode the
    loopback-only rule."""

    def __init__(self, app: ASGIApp, *, dev: bool) -> None:
        self.app = app
        self.dev = dev

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.dev and not self._local(scope):
            response = JSONResponse(
                error_body(
                    "forbidden",
                    "this server runs with --dev (no tokens) and answers only requests to "
                    "localhost or 127.0.0.1",
                ),
                status_code=403,
            )
            await response(scope, receive, send)
            return
        path: str = scope.get("path", "")
        declared = self._content_length(scope)
        if declared is not None and declared > MAX_BODY:
            await JSONResponse(error_body("too_large", TOO_LARGE), status_code=413)(
                scope, receive, send
            )
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:
                    raise _BodyTooLarge()
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if path.startswith("/api/") or path == "/openapi.json":
                    headers.append((b"cache-control", b"no-store"))
                state = scope.get("state") or {}
                if state.get("csrf_token_new"):
                    secure = "; Secure" if scope.get("scheme") == "https" else ""
                    # Lax, not Strict: a page opened from a link on another site (a chat
                    # message) must see the cookie, or it makes a new token and every
                    # other open tab's actions fail the CSRF check. The token is no
                    # credential: a cross-site post neither carries it nor can read it.
                    cookie = (
                        f"{CSRF_COOKIE}={state['csrf_token']}; Path=/; HttpOnly; "
                        f"SameSite=Lax{secure}"
                    )
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, capped_receive, send_with_headers)

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                text = value.decode("latin-1").strip()
                return int(text) if text.isdigit() else None
        return None

    @staticmethod
    def _local(scope: Scope) -> bool:
        client = scope.get("client")
        if client and not is_loopback(str(client[0])):
            return False
        for key, value in scope.get("headers", []):
            if key == b"host":
                name = value.decode("latin-1")
                host = name.rsplit(":", 1)[0] if not name.endswith("]") else name
                return is_loopback(host)
        return True
