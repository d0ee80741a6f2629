"""Running a step body: off-loop for sync bodies, timeouts, retries with backoff and jitter."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

from ._registry import StepDef

__all__ = ["CallTimeout", "backoff_delay", "call_step"]

log = logging.getLogger("tether.engine")


class CallTimeout(TimeoutError):
    """One attempt of a step or tool body ran past its ``timeout`` and was cancelled."""


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries of
    many runs spread out but never retry sooner than half the nominal delay."""
    nominal = min(cap, base * (2.0 ** (attempt - 1)))
    return float(nominal / 2 + random.uniform(0, nominal / 2))


async def _attempt(
    step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any], finish_threads: bool
) -> Any:
    if step.is_async:
        body: Any = step.fn(*args, **kwargs)
        thread = None
    else:
        # Sync bodies run on the default thread pool so they never block the event loop.
        loop = asyncio.get_running_loop()
        thread = loop.run_in_executor(None, functools.partial(step.fn, *args, **kwargs))
        body = asyncio.shield(thread) if finish_threads else thread
    try:
        if step.timeout is None:
            return await body
        try:
            return await asyncio.wait_for(body, step.timeout)
        except TimeoutError:
            raise CallTimeout(f"{step.name!r} timed out after {step.timeout} s") from None
    except BaseException:
        if finish_threads and thread is not None:
            await _outlive(thread)
        raise


async def _outlive(thread: asyncio.Future[Any]) -> None:
    """Wait for a body's thread to end, whatever it does and even if cancelled: a thread
    cannot be stopped, and until it ends nobody may decide whether its call happened."""
    cancelled = False
    while not thread.done():
        try:
            await asyncio.wait({thread})
        except asyncio.CancelledError:
            cancelled = True
    if not thread.cancelled():
        thread.exception()  # retrieved: it is not this caller's answer any more
    if cancelled:
        raise asyncio.CancelledError()


async def call_step(
    step: StepDef,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry_if: Callable[[Exception], bool] | None = None,
    *,
    finish_threads: bool = False,
    scrub: Callable[[str], str] = str,
) -> tuple[Any, int]:
    """Run the body, retrying on exceptions (those ``retry_if`` accepts); return (value,
    attempts) or raise the last exception (with ``attempts`` set on it).
    ``finish_threads``: a sync body's thread is waited for when the attempt times out or
    is cancelled (an irreversible call must not be decided while it may still act).
    ``scrub`` cleans the text of an error before it is logged (secrets)."""
    attempt = 1
    plain = step.is_async and step.timeout is None  # the body itself is the attempt
    while True:
        try:
            if plain:
                return await step.fn(*args, **kwargs), attempt
            return await _attempt(step, args, kwargs, finish_threads), attempt
        except Exception as exc:
            if attempt > step.retries or (retry_if is not None and not retry_if(exc)):
                exc.tether_attempts = attempt  # type: ignore[attr-defined]
                raise
            delay = backoff_delay(attempt, step.backoff, step.backoff_max)
            log.info(
                "%s attempt %d failed (%s: %s); retrying in %.3f s",
                step.name,
                attempt,
                type(exc).__name__,
                scrub(str(exc)),
                delay,
            )
            attempt += 1
            await asyncio.sleep(delay)
