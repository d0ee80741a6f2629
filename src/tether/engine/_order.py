"""Delivery order: how replay hands recorded results back so that concurrent branches make
their calls, and take their seqs, exactly as they did the first time.

Three facts are recorded with every journal entry:

- ``delivery``: the order in which the run resumed from its completed calls (1, 2, ...).
- ``after_delivery``: how many completions had been handed back when the call was made.
- ``after_seq``: where the seq counter stood when the last of those resumed the run.

On replay a recorded result ``d`` is handed back only when ``d - 1`` has been, and only
once the workflow has again made every call it had made before ``d`` resumed it the first
time (its gate: the ``after_seq`` recorded for ``d``, else the largest recorded seq whose
``after_delivery`` is below ``d``). A live completion waits until every recorded one has
been handed back. A delivery whose waiter was cancelled is skipped, so a cancelled branch
cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable

from .._records import EntryStatus, JournalEntry

__all__ = ["DeliveryOrder"]


class DeliveryOrder:
    def __init__(self, entries: Iterable[JournalEntry], seq: Callable[[], int]) -> None:
        entries = list(entries)
        # Recorded deliveries, renumbered densely (a write lost between two committed
        # ones must not leave a hole that nothing can ever fill): dense d is stored as
        # self._recorded[d - 1].
        self._recorded = sorted(
            e.delivery
            for e in entries
            if e.delivery is not None and e.status is not EntryStatus.WAITING
        )
        self._dense = {old: new for new, old in enumerate(self._recorded, start=1)}
        self.recorded = len(self._recorded)
        self.assigned = self.recorded
        self.released = 0
        # gate[d]: the seq the workflow must have reached before recorded d is handed back:
        # where the seq counter stood when d resumed the run the first time. Every call
        # made after that records it (after_seq), including calls that were in flight at a
        # crash and so left no entry of their own. Without such a record (nothing recorded
        # came after d), the highest recorded call made before d resumed is the bound.
        made: list[tuple[int, int]] = []  # (dense after_delivery, seq)
        resumed_at: dict[int, int] = {}
        for e in entries:
            if e.after_delivery is None:
                continue
            after = bisect.bisect_right(self._recorded, e.after_delivery)
            made.append((after, e.seq))
            if e.after_seq is not None:
                resumed_at[after] = e.after_seq
        made.sort()
        self._gate: dict[int, int] = {}
        highest, i = 0, 0
        for d in range(1, self.recorded + 1):
            while i < len(made) and made[i][0] < d:
                highest = max(highest, made[i][1])
                i += 1
            self._gate[d] = max(highest, resumed_at.get(d, 0))
        self._seq = seq
        # Where the seq counter stood when each delivery (in-memory index) resumed the run.
        self._resumed_at: dict[int, int] = {0: 0}
        self._turns: dict[int, asyncio.Future[None]] = {}
        self._abandoned: set[int] = set()
        self._releasing = False
        self._caught_up: list[asyncio.Future[None]] = []

    def recorded_index(self, delivery: int | None) -> int | None:
        return None if delivery is None else self._dense.get(delivery)

    @property
    def waiting(self) -> bool:
        return bool(self._turns) or bool(self._caught_up)

    @property
    def replaying(self) -> bool:
        return self.released < self.recorded

    def next_live(self) -> int:
        self.assigned += 1
        return self.assigned

    def after_call(self) -> None:
        """The workflow made a call: a recorded result may now be due."""
        if (self.released + 1) in self._turns:
            self._schedule_release()

    def live_next(self, delivery: int) -> bool:
        """The common case, kept cheap: a live result that is next, with nothing waiting.
        Returns False when the caller must go through :meth:`turn`."""
        if delivery != self.released + 1 or self._turns or self._caught_up or self._abandoned:
            return False
        self.released = delivery
        self._resumed_at[delivery] = self._seq()
        return True

    async def turn(self, delivery: int, *, recorded: bool) -> None:
        if recorded or delivery != self.released + 1 or self._turns or not self._due(delivery):
            future = asyncio.get_running_loop().create_future()
            self._turns[delivery] = future
            self._schedule_release()
            try:
                await future
            except BaseException:
                self.give_up(delivery)
                raise
            finally:
                self._turns.pop(delivery, None)
        self._advance(delivery)

    def give_up(self, delivery: int | None) -> None:
        """The waiter of ``delivery`` is gone (cancelled): skip it in the order."""
        if delivery is None or delivery <= self.released:
            return
        self._abandoned.add(delivery)
        self._advance(self.released)

    def _advance(self, delivery: int) -> None:
        self.released = max(self.released, delivery)
        while self.released + 1 in self._abandoned:
            self._abandoned.discard(self.released + 1)
            self.released += 1
        self._resumed_at.setdefault(self.released, self._seq())
        if not self.replaying and self._caught_up:
            # Not at once: the branch just resumed may cancel the waiting live work (a
            # timer that won a race), as it did the first time; give it a few rounds.
            asyncio.get_running_loop().call_soon(self._wake_caught_up, 3)
        if (self.released + 1) in self._turns:
            self._schedule_release()

    def _due(self, delivery: int) -> bool:
        return self._seq() >= self._gate.get(delivery, 0)

    def _schedule_release(self) -> None:
        # From a callback, never synchronously: the branches that are ready (the other
        # arms of a gather) make their calls first, as they did when results were live.
        if not self._releasing:
            self._releasing = True
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        """Hand back, in one callback and in order, every result that is next and due, as
        one commit of the store hands back the completions it sealed together: their
        branches resume one after another before anything they start gets to run."""
        self._releasing = False
        delivery = self.released + 1
        while True:
            if delivery in self._abandoned:
                delivery += 1
                continue
            future = self._turns.get(delivery)
            if future is None or not self._due(delivery):
                return
            if not future.done():
                future.set_result(None)
            delivery += 1

    def _wake_caught_up(self, rounds: int) -> None:
        if rounds > 0:
            asyncio.get_running_loop().call_soon(self._wake_caught_up, rounds - 1)
            return
        waiters, self._caught_up = self._caught_up, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def catch_up(self) -> None:
        """Wait until every recorded result has been handed back (before live work)."""
        if not self.replaying:
            return
        future = asyncio.get_running_loop().create_future()
        self._caught_up.append(future)
        try:
            await future
        finally:
            if future in self._caught_up:
                self._caught_up.remove(future)

    def missing(self) -> int:
        """The first delivery nothing has handed back (for the nondeterminism report)."""
        return self.released + 1

    def resumed_at(self, dense: int) -> int:
        """The seq counter when delivery ``dense`` resumed the run (0 before any)."""
        return self._resumed_at.get(dense, 0)

    def stored(self, dense: int) -> int:
        """The number written to the journal for in-memory index ``dense`` (live ones are
        numbered after every stored one, so they never collide)."""
        if dense > self.recorded:
            last = self._recorded[-1] if self._recorded else 0
            return last + (dense - self.recorded)
        return self._recorded[dense - 1] if dense > 0 else 0
