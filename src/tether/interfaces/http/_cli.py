"""``tether serve``: the HTTP API and web UI over uvicorn, until SIGINT or SIGTERM.

Registered in :mod:`tether.interfaces.cli`; FastAPI and uvicorn are imported only when the
command runs, so that the other commands start as fast as before.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType
from typing import Annotated

import typer

__all__ = ["serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8181
USAGE = 2  # Keep in sync with USAGE in cli.py.


def _say(message: str) -> None:
    print(message, flush=True)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before uvicorn starts so that a port in
    use is one clear line, not a log record."""
    from ..cli import CommandError

    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host!r}: {exc.strerror}", USAGE) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port" if exc.errno == 98 else ""
        raise CommandError(
            f"cannot listen on {_url(host, port)}: {exc.strerror or exc}{hint}"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="The address to listen on.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", "-p", metavar="PORT", help="The port to listen on.")
    ] = DEFAULT_PORT,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev", help="No tokens: everyone is admin. Only on a loopback host (127.0.0.1)."
        ),
    ] = False,
) -> None:
    """Serve the control plane: the HTTP API (/api/v1) and the web UI, until SIGINT or
    SIGTERM.

    Every request needs a token (make one with 'tether token create --role admin') unless
    --dev, which lets anyone on this machine in as admin and so refuses any host but a
    loopback one. The server runs no workflows: workers do ('tether worker MODULE:APP').
    """
    import uvicorn

    from ...engine import App
    from ...storage import redact_url
    from ..cli import CommandError, _settings
    from ._app import create_app, is_loopback

    if dev and not is_loopback(host):
        raise CommandError(
            f"--dev serves everyone as admin without a token, so it listens only on a "
            f"loopback host such as 127.0.0.1 or localhost, not {host!r}; drop --dev and "
            "make tokens with 'tether token create --role admin'",
            USAGE,
        )
    if not 1 <= port <= 65535:
        raise CommandError(f"--port must be between 1 and 65535, not {port}", USAGE)
    url = _settings(ctx).database_url

    async def check() -> int:
        """Whether the database is there (never create one here), and its active tokens."""
        app = App(url)
        await app.open(worker=False, create=False)
        try:
            return sum(1 for token in await app.list_tokens() if token.active)
        finally:
            await app.close()

    tokens = asyncio.run(check())
    sock = _bind(host, port)
    config = uvicorn.Config(
        create_app(App(url), dev=dev),
        log_level="info",
        timeout_graceful_shutdown=5,
        lifespan="on",
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                _say(f"{signal.Signals(sig).name}: stopping (requests in flight finish)")
            super().handle_exit(sig, frame)

    server = Server(config)
    where = _url(host, port)
    _say(f"tether serve: listening on {where} (web UI {where}/, API {where}/api/v1)")
    _say(f"database: {redact_url(url)}")
    if dev:
        _say("dev mode: no tokens, everyone on this machine is admin")
    elif tokens:
        _say(f"{tokens} active token(s); make another with 'tether token create --role admin'")
    else:
        _say(
            "no tokens yet: make one with 'tether token create --role admin' and log in "
            "with it (or send 'Authorization: Bearer <token>')"
        )
    if not is_loopback(host):
        _say("note: this is plain HTTP; put it behind a TLS proxy to reach it from elsewhere")

    # uvicorn handles SIGINT and SIGTERM (a graceful shutdown), then raises the signal
    # again under the handlers it found; with these no-ops there, the exit code stays 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise CommandError("the server did not start; see the log above")
    _say("tether serve stopped")


def _ignore(sig: int, frame: FrameType | None) -> None:
    pass
