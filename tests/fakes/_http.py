"""``FakeServer``: a scriptable HTTP server on 127.0.0.1 (stdlib only), in its own thread.

A test queues the replies (status, headers, JSON body, an optional delay), one per request,
or functions of the request that return one; the server records every request it receives
(method, path, headers, decoded JSON body) so the test can check what was sent. A request
that finds the queue empty is answered 400 in the provider's error format, so a test that
asks more than it scripted fails loudly instead of hanging.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = ["FakeServer", "Received", "Reply"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body``: JSON-encoded, unless it is ``str`` (sent as it is)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering: a slow provider


@dataclass(frozen=True)
class Received:
    """One request as the server saw it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


Script = Reply | Callable[[Received], Reply]


class FakeServer:
    """Serves ``path`` (POST) on 127.0.0.1 at a free port; ``url`` is its root."""

    path: ClassVar[str] = "/"

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._replies: deque[Script] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real providers
            timeout = 30  # seconds a kept-alive connection may idle

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a timeout test) is not an error of the fake

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            # A short poll: shutdown() waits for the loop to notice.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- script and record

    def queue(self, *replies: Script) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def bodies(self) -> list[Any]:
        return [received.body for received in self.requests]

    @property
    def pending(self) -> int:
        """Replies queued and not yet used."""
        return len(self._replies)

    def error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
        """An error in the provider's format (each fake knows its own)."""
        raise NotImplementedError

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        received = Received(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
        )
        routed = handler.command == "POST" and handler.path == self.path
        with self._lock:
            self.requests.append(received)
            script = self._replies.popleft() if routed and self._replies else None
        if not routed:
            reply = self.error(404, f"fake: no route {handler.command} {handler.path}")
        elif script is None:
            reply = self.error(400, f"fake: no reply scripted for request {len(self.requests)}")
        else:
            reply = script(received) if callable(script) else script
        if reply.delay:
            time.sleep(reply.delay)
        payload = (
            reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
        )
        handler.send_response(reply.status)
        headers = {"content-type": "application/json", **reply.headers}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
