"""What the roll-up says about a run that needs a person: one short line for people, and
the command that acts on it."""

from __future__ import annotations

from tether import Run, RunStatus
from tether.engine._rollup import attention_for_run


def stopped(status: RunStatus, **error: object) -> Run:
    return Run("r-1", "flow", status, {}, error=dict(error), updated_at=5.0)


def test_a_budget_stop_says_what_was_spent_against_which_limit() -> None:
    item = attention_for_run(
        stopped(
            RunStatus.NEEDS_ATTENTION,
            code="budget_exceeded",
            message="run 'r-1': the agent reached its budget ... raise it with tether budget",
            spent={"tokens": 92, "cost_usd": 0.0003},
            budget={"tokens": 40, "cost_usd": 0.5},
        )
    )
    assert item is not None and (item.kind, item.since) == ("budget", 5.0)
    assert item.title == (
        "the agent reached its budget of 40 tokens and $0.5: it spent 92 tokens and $0.0003"
    )
    assert item.action == "tether budget r-1 --tokens N [--cost-usd X]"


def test_long_messages_are_cut_at_a_word_and_only_their_first_line_is_kept() -> None:
    message = "card declined " * 30 + "\nTraceback (most recent call last): ..."
    item = attention_for_run(stopped(RunStatus.FAILED, code="step_failed", message=message))
    assert item is not None and item.kind == "failed"
    assert len(item.title) <= 200 and item.title.endswith("declined…")
    assert "Traceback" not in item.title


def test_in_doubt_stops_are_left_to_their_effect_and_live_runs_need_nobody() -> None:
    assert attention_for_run(stopped(RunStatus.NEEDS_ATTENTION, code="effect_in_doubt")) is None
    assert attention_for_run(stopped(RunStatus.RUNNING)) is None
    odd = attention_for_run(stopped(RunStatus.NEEDS_ATTENTION, code="nondeterminism", message="x"))
    assert odd is not None and odd.kind == "nondeterminism" and odd.rank < 6
