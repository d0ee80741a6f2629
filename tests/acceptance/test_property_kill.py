"""A run SIGKILLed at arbitrary points ends like an uninterrupted run (hypothesis).

Each example kills the process running one run of ``prop`` (thirteen steps, three
``asyncio.gather`` groups, one of them of branches with two calls each, sync steps, a
recorded ``ctx.uuid()``) at up to three points, each a step and a phase: inside the body
before its side effect, inside the body after it, or after the body returned but before the
commit that seals its entry. After each kill a new process resumes the run. Every life is
audited against the journal as it stood before and after it: a step committed before a
life began must not run in it, and the only steps that may run again are those a kill
caught in flight.

The same property runs on PostgreSQL (fewer examples: each gets its own database), where
the commit-phase kill dies inside an open transaction that the server rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from crashapp import (
    FAULTS,
    PHASES,
    PROP_LABELS,
    build_app,
    children,
    count_effects,
    snapshot,
    spawn,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SERVER_URL, with_database
from conftest import _admin as admin

KILL_POINT = st.tuples(st.sampled_from(PROP_LABELS), st.sampled_from(PHASES))


@cache
def uninterrupted(seed: int) -> Any:
    """The result of the same run without faults, in this process."""

    async def run(db_url: str) -> Any:
        app = build_app(db_url)
        async with app:
            handle = await app.start("prop", seed, run_id="p")
            return await handle.result(timeout=60)

    with tempfile.TemporaryDirectory() as tmp:
        effects = Path(tmp) / "effects.jsonl"
        FAULTS.effects = effects
        try:
            result = asyncio.run(run(f"sqlite:///{tmp}/baseline.db"))
        finally:
            FAULTS.effects = None
        assert count_effects(effects) == dict.fromkeys(PROP_LABELS, 1)
    return result


def committed(db_url: str) -> set[str]:
    if db_url.startswith("sqlite:") and not Path(db_url.removeprefix("sqlite:///")).exists():
        return set()
    return set(snapshot(db_url, "p").steps)


_examples = itertools.count(1)


@contextlib.contextmanager
def postgres_database(template: str) -> Iterator[str]:
    name = f"tether_t{os.getpid()}_prop{next(_examples)}"
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    try:
        yield with_database(SERVER_URL, name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.timeout(300)
@settings(
    max_examples=15,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 1_000_000),
    kills=st.lists(KILL_POINT, min_size=1, max_size=3, unique=True),
)
def test_killed_at_arbitrary_points_ends_like_an_uninterrupted_run(
    seed: int, kills: list[tuple[str, str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_kill_plan(Path(tmp), f"sqlite:///{tmp}/tether.db", seed, kills)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 1_000_000),
    kills=st.lists(KILL_POINT, min_size=1, max_size=3, unique=True),
)
def test_killed_at_arbitrary_points_ends_like_an_uninterrupted_run_on_postgres(
    postgres_template: str, seed: int, kills: list[tuple[str, str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp, postgres_database(postgres_template) as url:
        check_kill_plan(Path(tmp), url, seed, kills)


def check_kill_plan(workdir: Path, db_url: str, seed: int, kills: list[tuple[str, str]]) -> None:
    expected = uninterrupted(seed)
    # In the order a run reaches them, so that most of them are reached.
    plan: list[tuple[str, str] | None] = sorted(
        kills, key=lambda k: (PROP_LABELS.index(k[0]), PHASES.index(k[1]))
    )
    plan.append(None)  # the last life runs without faults
    effects = workdir / "effects.jsonl"
    in_flight: Counter[str] = Counter()
    result = None
    for life, kill in enumerate(plan):
        before = committed(db_url)
        argv = ["--start", "prop", "p", f"[{seed}]", "--wait", "p"]
        argv += ["--effects", str(effects)]
        if kill is not None:
            argv += ["--kill", f"{kill[0]}:{kill[1]}"]
        with children() as spawned:
            child = spawn(workdir, db_url, *argv, name=f"life{life}")
            spawned.append(child)
            code = child.wait(60)
        after = committed(db_url)
        ran = count_effects(effects, child.pid)
        context = f"life {life} kill={kill} plan={plan}\n{child.describe()}"
        assert all(n == 1 for n in ran.values()), context
        assert not set(ran) & before, f"completed steps ran again: {context}"
        assert before <= after, context
        if code == 0:
            assert after == set(PROP_LABELS), context
            result = child.event("result")["result"]
            break
        assert code == -9 and kill is not None, context
        label, phase = kill
        # The kill happened where it was asked to.
        assert label not in after, context
        assert (label in ran) == (phase != "before"), context
        in_flight.update(set(ran) - after)
    print(f"plan={plan} lives={life + 1} in_flight={dict(in_flight)}")
    assert result == expected

    counts = count_effects(effects)
    for label in PROP_LABELS:
        assert counts[label] == 1 + in_flight[label], (label, counts, in_flight, plan)
    final = snapshot(db_url, "p")
    assert final.run is not None and final.run.status == "succeeded"
    assert [e.seq for e in final.entries] == list(range(1, 15))
    assert all(e.status == "completed" for e in final.entries)
    assert [e.kind for e in final.entries].count("uuid") == 1
