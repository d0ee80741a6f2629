"""The lineage logic on hand-built records: where two journals diverge and what differs
after it, and the branch tree of forks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tether import RunNotFoundError
from tether._records import (
    Effect,
    EffectRecord,
    EffectState,
    EntryStatus,
    JournalEntry,
    Run,
    RunStatus,
)
from tether.interfaces._lineage import (
    diff_journals,
    diff_view,
    entry_summary,
    fork_tree,
    is_replaced,
    tree_view,
)

DONE = EntryStatus.COMPLETED


def run(run_id: str, **fields: Any) -> Run:
    fields.setdefault("status", RunStatus.SUCCEEDED)
    fields.setdefault("created_at", 100.0)
    return Run(run_id, "plan", args={"args": [], "kwargs": {}}, **fields)


def entry(owner: str, seq: int, kind: str, name: str, output: Any = None, **fields: Any) -> Any:
    fields.setdefault("status", DONE)
    fields.setdefault("started_at", 200.0 + seq)
    fields.setdefault("finished_at", 200.5 + seq)
    return JournalEntry(owner, seq, kind, name, output=output, **fields)


def answer(text: str | None = None, *calls: tuple[str, dict[str, Any]], **extra: Any) -> Any:
    message = {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": f"c{i}", "name": name, "arguments": args} for i, (name, args) in enumerate(calls)
        ],
    }
    return {
        "message": message,
        "message_hash": "h",
        "usage": {"input_tokens": 10, "output_tokens": 5},
        "model": "scripted",
        "stop_reason": "end_turn",
        "cost_usd": 0.001,
        "latency_ms": 12.0,
        "tries": 1,
    } | extra


def effect(owner: str, seq: int, tool: str, args: Any, result: Any, **fields: Any) -> Any:
    fields.setdefault("state", EffectState.COMPLETED)
    return EffectRecord(
        owner,
        seq,
        tool,
        Effect.READ,
        idempotency_key=f"{owner}-{seq}",
        args=args,
        result=result,
        **fields,
    )


def prefix(owner: str) -> list[JournalEntry]:
    """Three entries of ``owner``: a model call, a tool call, a step."""
    return [
        entry(
            owner,
            1,
            "model",
            "scripted",
            answer(None, ("price", {"item": "train"})),
            input={"after": None, "messages": ["m1"]},
        ),
        entry(owner, 2, "tool", "price", 120, input={"item": "train"}),
        entry(owner, 3, "step", "note", "ok"),
    ]


# -- diff_journals -------------------------------------------------------------------------
def test_shared_rows_are_the_same_and_the_first_divergent_seq_is_the_fork_point() -> None:
    origin, fork = run("o"), run("f", forked_from="o", fork_seq=4, result="other")
    a = [*prefix("o"), entry("o", 4, "model", "scripted", answer("615 euros"))]
    b = [*prefix("o"), entry("f", 4, "model", "scripted", answer("655 euros"))]
    diff = diff_journals(origin, a, fork, b)
    assert (diff.shared, diff.same_before, diff.first_divergent) == (3, 3, 4)
    assert [(c.seq, c.what, c.differs) for c in diff.changes] == [(4, "model", ("text",))]
    assert diff.first is diff.changes[0]
    assert diff.outcome == ("result",)
    assert not diff.same


def test_equal_calls_in_different_rows_are_the_same_whatever_they_cost() -> None:
    # Two runs that did the same thing: same calls, same answers, other usage and latency,
    # another wake-up time for the same sleep, another traceback for the same error.
    a = [*prefix("a"), entry("a", 4, "sleep", "sleep", 1000.0, input={"seconds": 60})]
    b = [*prefix("b"), entry("b", 4, "sleep", "sleep", 2000.0, input={"seconds": 60})]
    b[0] = entry(
        "b",
        1,
        "model",
        "scripted",
        answer(None, ("price", {"item": "train"}), latency_ms=99.0, tries=3),
        input={"after": None, "messages": ["m1"]},
    )
    one = run("a", status=RunStatus.FAILED, error={"type": "E", "message": "m", "traceback": "1"})
    two = run("b", status=RunStatus.FAILED, error={"type": "E", "message": "m", "traceback": "2"})
    diff = diff_journals(one, a, two, b)
    assert diff.first_divergent is None and diff.changes == ()
    assert diff.shared == 0 and diff.same_before == 4
    assert diff.same and diff.first is None


def test_model_answers_differ_by_text_tool_calls_and_request_not_by_call_ids() -> None:
    a = [
        entry("a", 1, "model", "m", answer("hi", ("add", {"x": [1, 2]})), input={"m": 1}),
        entry("a", 2, "model", "m", answer(None, ("add", {"x": [1, 2]}))),
    ]
    same_calls = answer(None, ("add", {"x": [1, 2]}))
    same_calls["message"]["tool_calls"][0]["id"] = "another-id"
    b = [
        entry("b", 1, "model", "m", answer("hello", ("add", {"x": [1, 2, 3]})), input={"m": 2}),
        entry("b", 2, "model", "m", same_calls),
    ]
    diff = diff_journals(run("a"), a, run("b"), b)
    assert diff.first_divergent == 1
    assert [(c.seq, c.differs) for c in diff.changes] == [(1, ("text", "tool_calls", "request"))]


def test_tool_calls_differ_by_args_result_and_effect_state() -> None:
    a = [entry("a", 1, "tool", "send", {"id": 1}, input={"to": "ada"})]
    b = [entry("b", 1, "tool", "send", None, input={"to": "bob"}, status=EntryStatus.INTENT)]
    fx_a = [effect("a", 1, "send", {"to": "ada"}, {"id": 1})]
    fx_b = [effect("b", 1, "send", {"to": "bob"}, None, state=EffectState.IN_DOUBT)]
    diff = diff_journals(run("a"), a, run("b"), b, fx_a, fx_b)
    (change,) = diff.changes
    assert change.what == "tool"
    assert change.differs == ("args", "result", "state", "status")
    assert change.a_effect is fx_a[0] and change.b_effect is fx_b[0]
    # Another tool at the same seq is named as such.
    c = [entry("c", 1, "tool", "lookup", {"id": 1}, input={"to": "ada"})]
    assert diff_journals(run("a"), a, run("c"), c).changes[0].differs == ("tool",)


def test_effects_are_found_by_the_row_owner() -> None:
    # A fork's shared row is its origin's: so is the effect shown with it.
    a = [entry("o", 1, "tool", "send", 1, input={"to": "x"})]
    b = [entry("f", 1, "tool", "send", 2, input={"to": "x"})]
    fx = [effect("o", 1, "send", {"to": "x"}, 1), effect("f", 1, "send", {"to": "x"}, 2)]
    (change,) = diff_journals(run("o"), a, run("f"), b, fx, fx).changes
    assert (change.a_effect, change.b_effect) == (fx[0], fx[1])


def test_waits_steps_missing_entries_and_other_kinds() -> None:
    a = [
        entry("a", 1, "signal", "go", {"ok": True}),
        entry(
            "a",
            2,
            "step",
            "s",
            None,
            status=EntryStatus.FAILED,
            error={"type": "ValueError", "message": "bad"},
        ),
        entry("a", 3, "step", "s", 1),
        entry("a", 4, "child", "kid", "done", input={"run_id": "k1"}),
    ]
    b = [
        entry("b", 1, "signal", "go", {"ok": False}),
        entry("b", 2, "step", "s", 2),
        entry("b", 3, "tool", "t", 1),
        entry("b", 4, "child", "kid", "done", input={"run_id": "k2"}),
        entry("b", 5, "step", "extra", 5),
        entry("b", 6, "sleep", "sleep", 1.0, input={"seconds": 30}),
    ]
    a += [entry("a", 6, "sleep", "sleep", 2.0, input={"seconds": 60})]
    diff = diff_journals(run("a"), a, run("b"), b)
    assert diff.first_divergent == 1
    assert [(c.seq, c.what, c.differs) for c in diff.changes] == [
        (1, "wait", ("output",)),
        (2, "step", ("output", "status", "error")),
        (3, "mixed", ("kind",)),
        (4, "wait", ("input",)),
        (5, "step", ("missing",)),
        (6, "wait", ("input",)),  # a sleep's length, never the time it woke at
    ]
    assert diff.changes[4].a is None and diff.changes[4].b is not None


def test_a_difference_is_always_named() -> None:
    # Same effect arguments, other journal inputs: the input differs.
    a = [entry("a", 1, "tool", "t", 1, input={"x": "secret-hash-1"})]
    b = [entry("b", 1, "tool", "t", 1, input={"x": "secret-hash-2"})]
    fx = [effect("a", 1, "t", {"x": "h"}, 1), effect("b", 1, "t", {"x": "h"}, 1)]
    (change,) = diff_journals(run("a"), a, run("b"), b, fx, fx).changes
    assert change.differs == ("input",)


def test_a_shared_row_is_never_reported_as_different() -> None:
    # One row read by reference is the same entry, whatever the copies in hand say.
    a = [entry("a", 1, "step", "s", 1), entry("o", 2, "step", "t", "x")]
    b = [entry("b", 1, "step", "s", 2), entry("o", 2, "step", "t", "y")]
    diff = diff_journals(run("a"), a, run("b"), b)
    assert [c.seq for c in diff.changes] == [1]
    assert diff.shared == 1 and diff.same_before == 0


def test_outcome_status_result_and_error() -> None:
    one = run("a", result=1)
    two = run("b", status=RunStatus.FAILED, error={"type": "E", "message": "boom"})
    diff = diff_journals(one, [], two, [])
    assert diff.first_divergent is None
    assert diff.outcome == ("status", "result", "error")
    assert not diff.same


def test_diff_view_is_json_with_both_sides() -> None:
    origin = run("o")
    fork = run("f", forked_from="o", fork_seq=2, fork_replaced=True, created_at=300.0)
    replaced = answer("fixed", replaced=True)
    a = [
        entry("o", 1, "step", "s", 1),
        entry("o", 2, "model", "m", answer("wrong")),
        entry("o", 3, "tool", "t", 5, input={"x": 1}),
    ]
    b = [
        entry("o", 1, "step", "s", 1),
        entry("f", 2, "model", "m", replaced, started_at=299.0, finished_at=299.0),
    ]
    fx = [effect("o", 3, "t", {"x": 1}, 5)]
    view = diff_view(diff_journals(origin, a, fork, b, fx, fx))
    assert json.loads(json.dumps(view)) == view
    assert (view["first_divergent_seq"], view["shared_entries"], view["same_before"]) == (2, 1, 1)
    assert view["a"]["run_id"] == "o" and view["b"]["forked_from"] == "o"
    first, second = view["changes"]
    assert first["what"] == "model" and first["differs"] == ["text"]
    assert first["a"]["model"] == {"text": "wrong", "tool_calls": [], "replaced": False}
    assert first["b"]["model"]["replaced"] is True and first["b"]["replaced"] is True
    assert first["b"]["run_id"] == "f" and first["b"]["shared"] is False
    assert first["a"]["summary"] == 'says "wrong"'
    assert second["b"] is None and second["differs"] == ["missing"]
    assert (
        second["a"]["effect"]["args"] == {"x": 1} and second["a"]["effect"]["state"] == "completed"
    )
    assert view["outcome"]["differs"] == []
    assert view["same"] is False


def test_is_replaced_and_entry_summary() -> None:
    fork = run("f", forked_from="o", fork_seq=2, fork_replaced=True, created_at=300.0)
    plain = run("g", forked_from="o", fork_seq=2, created_at=300.0)
    made_with = entry("f", 2, "step", "s", 7, started_at=299.0, finished_at=299.0)
    assert is_replaced(fork, made_with)
    assert not is_replaced(plain, entry("g", 2, "step", "s", 7))  # it ran in the fork
    assert not is_replaced(fork, entry("f", 3, "step", "s", 7))
    assert not is_replaced(fork, entry("o", 1, "step", "s", 7, started_at=1.0, finished_at=1.0))
    assert not is_replaced(run("o"), made_with)

    model = entry("f", 2, "model", "m", answer("hi", ("add", {"x": 1}), replaced=True))
    assert entry_summary(model) == 'says "hi"; calls add({"x": 1}) (replaced)'
    tool = entry("f", 3, "tool", "add", 3, input={"x": 1})
    assert entry_summary(tool) == 'add({"x": 1}) → 3'
    assert (
        entry_summary(tool, effect("f", 3, "add", {"x": 1}, 3)) == 'add({"x": 1}) → 3 [completed]'
    )
    failed = entry(
        "f",
        4,
        "step",
        "s",
        None,
        status=EntryStatus.FAILED,
        error={"type": "ValueError", "message": "bad"},
    )
    assert entry_summary(failed) == "s failed: ValueError: bad"
    waiting = entry("f", 5, "signal", "go", None, status=EntryStatus.WAITING)
    assert entry_summary(waiting) == "signal go: waiting"
    assert entry_summary(entry("f", 6, "signal", "go", {"ok": 1})) == 'signal go → {"ok": 1}'
    assert entry_summary(entry("f", 7, "sleep", "sleep", 5.0)) == "slept"


# -- fork_tree -----------------------------------------------------------------------------
class Runs:
    """What fork_tree asks of an App: get_run and list_runs(forked_from=...), newest first."""

    def __init__(self, *runs: Run) -> None:
        self.runs = {r.run_id: r for r in runs}

    async def get_run(self, run_id: str) -> Run:
        if run_id not in self.runs:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return self.runs[run_id]

    async def list_runs(self, *, forked_from: str, limit: int, offset: int) -> list[Run]:
        found = [r for r in self.runs.values() if r.forked_from == forked_from]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[offset : offset + limit]


def tree_of(runs: Runs, run_id: str, **options: Any) -> Any:
    return asyncio.run(fork_tree(runs, run_id, **options))  # type: ignore[arg-type]


FAMILY = Runs(
    run("root", created_at=1.0),
    run("late", forked_from="root", fork_seq=9, created_at=2.0),
    run("early", forked_from="root", fork_seq=3, created_at=3.0, status=RunStatus.FAILED),
    run("grandchild", forked_from="early", fork_seq=5, created_at=4.0),
    run("other", created_at=5.0),
)


def test_the_tree_holds_the_whole_family_from_any_of_its_runs() -> None:
    for asked in ("root", "early", "grandchild"):
        tree = tree_of(FAMILY, asked)
        assert tree.root.run.run_id == "root" and tree.run_id == asked
        assert [(d, n.run.run_id) for d, n in tree.walk()] == [
            (0, "root"),
            (1, "early"),  # forks in fork-point order, not newest first
            (2, "grandchild"),
            (1, "late"),
        ]
        assert len(tree) == 4 and not tree.truncated
    view = tree_view(tree_of(FAMILY, "early"))
    assert view["root_run_id"] == "root" and view["run_id"] == "early"
    rows = {r["run_id"]: r for r in view["runs"]}
    assert rows["root"]["forks"] == ["early", "late"]
    assert rows["early"]["current"] and not rows["root"]["current"]
    assert (rows["grandchild"]["depth"], rows["grandchild"]["fork_seq"]) == (2, 5)
    assert rows["early"]["status"] == "failed"
    assert json.loads(json.dumps(view)) == view


def test_a_run_without_forks_is_a_tree_of_one() -> None:
    tree = tree_of(FAMILY, "other")
    assert [n.run.run_id for _, n in tree.walk()] == ["other"]


def test_a_tree_past_its_limit_is_truncated() -> None:
    tree = tree_of(FAMILY, "root", limit=2)
    assert tree.truncated and len(tree) == 2
    assert tree_view(tree)["truncated"] is True


def test_a_missing_origin_makes_the_highest_run_found_the_root() -> None:
    runs = Runs(run("orphan", forked_from="gone", fork_seq=2), run("kid", forked_from="orphan"))
    tree = tree_of(runs, "kid")
    assert tree.root.run.run_id == "orphan"
    assert [n.run.run_id for _, n in tree.walk()] == ["orphan", "kid"]


def test_an_unknown_run_is_not_found() -> None:
    with pytest.raises(RunNotFoundError):
        tree_of(FAMILY, "nope")


def test_a_long_chain_of_forks_of_forks_is_walked_without_recursion() -> None:
    chain = [run("r0", created_at=0.0)]
    chain += [
        run(f"r{i}", forked_from=f"r{i - 1}", fork_seq=2, created_at=float(i))
        for i in range(1, 1500)
    ]
    tree = tree_of(Runs(*chain), "r700", limit=5000)
    assert len(tree) == 1500
    assert [d for d, _ in tree.walk()][-1] == 1499
    assert len(tree_view(tree)["runs"]) == 1500
