"""A cheaper wait for the connection the PostgreSQL store writes through.

psycopg's async connection waits for each reply with ``loop.add_reader``, a timer and
``loop.remove_reader``. On the write path of a step (one statement, one commit) that costs
about as much as the rest of psycopg's client work. The store writes through one connection
write after write (see ``PostgresStore._on_writer``), so :class:`WatchedConnection` keeps
that connection's socket registered with the event loop for as long as the store holds it,
and waits for a reply on a bare future:

- **Read on arrival.** When the reply arrives, the loop's callback reads it into libpq's
  buffer before it wakes the waiting task. The socket is then empty when the loop next
  polls, so the loop does not wake the task a second time for data it has already read.
- **Nobody waiting.** Data that arrives while nobody waits (a notice, the server closing
  the connection) stops the watch until the next wait, so a readable socket nobody reads
  never spins the loop.
- **Cancelled mid-statement.** The statement was sent and may commit. The wait sees it
  through, so the caller's write either committed or did not, and the connection is left
  clean. Then it raises the cancellation, even if the statement failed. A second
  cancellation, or no reply within 5 s, abandons the statement; the connection then goes
  back to the pool, which closes it.

Every other connection, and this one once given back, waits as psycopg does.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.abc import RV, PQGen
from psycopg.pq.abc import PGconn
from psycopg.waiting import READY_NONE, READY_R, READY_W, WAIT_R, WAIT_W, Wait

__all__ = ["WatchedConnection"]

# How long a cancelled caller waits for the reply to its statement (psycopg's own wait
# gives a cancelled statement as long).
_SEE_THROUGH = 5.0

_POLL_MASKS = {
    Wait.R: select.POLLIN,
    Wait.W: select.POLLOUT,
    Wait.RW: select.POLLIN | select.POLLOUT,
}


class _Watch:
    """One connection's socket, registered with one loop for reading."""

    __slots__ = ("fileno", "loop", "pgconn", "registered", "took", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, pgconn: PGconn) -> None:
        self.loop = loop
        self.pgconn = pgconn
        self.fileno = pgconn.socket
        self.registered = False
        self.took = False  # the last wait's callback read input (the socket may be dry now)
        self.waiter: asyncio.Future[None] | None = None

    def _on_readable(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None:  # nobody waits: stop watching until someone does
            self.stop()
            return
        try:
            self.pgconn.consume_input()  # see "Read on arrival"
        except psycopg.OperationalError:
            # libpq has closed the socket: let go of its number at once (another
            # connection may be given it), and let the generator find the error.
            self.stop()
        self.took = True
        if not waiter.done():
            waiter.set_result(None)

    def _on_writable(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def until(self, s: int) -> None:
        """Until the socket may be ready for ``s`` (a ``Wait``)."""
        waiter = self.waiter = self.loop.create_future()
        self.took = False
        if not self.registered:
            self.loop.add_reader(self.fileno, self._on_readable)
            self.registered = True
        if s & WAIT_W:
            self.loop.add_writer(self.fileno, self._on_writable)
        try:
            await waiter
        finally:
            self.waiter = None
            if s & WAIT_W:
                self.loop.remove_writer(self.fileno)

    def stop(self) -> None:
        if self.registered:
            self.registered = False
            self.loop.remove_reader(self.fileno)


def _ready(fileno: int, s: int) -> int:
    """The socket's readiness for ``s`` now, without waiting."""
    poll = select.poll()
    poll.register(fileno, _POLL_MASKS[Wait(s)])
    ready: int = READY_NONE
    for _, event in poll.poll(0):
        if event & select.POLLIN:
            ready |= READY_R
        if event & select.POLLOUT:
            ready |= READY_W
        if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            ready |= READY_R | READY_W  # let libpq find the error
    return ready


class WatchedConnection(AsyncConnection[tuple[Any, ...]]):
    """An async connection whose socket can stay registered with the loop between
    statements (:meth:`watch`), for a connection that runs statement after statement."""

    _watch: _Watch | None = None
    _cursor: AsyncCursor[tuple[Any, ...]] | None = None
    _cancelled: asyncio.CancelledError | None = None  # during wait: the first cancellation

    async def write(self, query: bytes, params: Sequence[Any]) -> int:
        """Run one statement on a cursor kept for the purpose; return its row count. For
        the one task that writes through this connection (not for concurrent use)."""
        cur = self._cursor
        if cur is None or cur.closed:
            cur = self._cursor = self.cursor()
        await cur.execute(query, params)
        return cur.rowcount

    def watch(self) -> None:
        """Wait on a socket kept registered with the running loop, until :meth:`unwatch`."""
        if self._watch is None:
            self._watch = _Watch(asyncio.get_running_loop(), self.pgconn)

    def unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    @property
    def watched(self) -> bool:
        return self._watch is not None

    async def close(self) -> None:
        self.unwatch()
        await super().close()

    async def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        watch = self._watch
        if watch is None or timeout is not None:
            if watch is not None:
                watch.stop()  # psycopg's wait registers the socket itself, then removes it
            return await super().wait(gen, interval, timeout)
        self._cancelled = None
        try:
            s = next(gen)
            while True:
                if s == WAIT_R:
                    await self._until(watch, s)
                    # Also after a cancellation: the reply may be read already (the socket
                    # is dry), and a READY_R too many only makes the generator look again.
                    s = gen.send(READY_R)
                    continue
                ready = _ready(watch.fileno, s)  # writable is nearly always at once
                while not ready:
                    await self._until(watch, s)
                    ready = _ready(watch.fileno, s)
                    if s & WAIT_R and (watch.took or self._cancelled is not None):
                        ready |= READY_R  # read on arrival: the socket may be dry
                s = gen.send(ready)
        except StopIteration as done:
            if self._cancelled is not None:
                raise self._cancelled from None
            result: RV = done.value
            return result
        except BaseException as exc:
            # An error or a second cancellation: the store gives this connection back to
            # the pool (which checks it); until then it waits as psycopg does.
            self.unwatch()
            if self._cancelled is not None and exc is not self._cancelled:
                raise self._cancelled from exc  # an error must not swallow the cancel
            if isinstance(exc, OSError):
                raise psycopg.OperationalError("connection socket closed") from exc
            raise

    async def _until(self, watch: _Watch, s: int) -> None:
        """Wait on ``watch``. The first cancellation is kept (see "Cancelled
        mid-statement") and the statement seen through for up to _SEE_THROUGH seconds;
        a second one, or that long, abandons it."""
        if self._cancelled is None:
            try:
                await watch.until(s)
            except asyncio.CancelledError as exc:
                self._cancelled = exc
            return
        try:
            async with asyncio.timeout(_SEE_THROUGH):
                await watch.until(s)
        except TimeoutError:
            raise self._cancelled from None
