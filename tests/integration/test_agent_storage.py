"""How model calls are stored: content-addressed conversations (an entry costs what its
turn added), the request put back together exactly, the answer replayed byte for byte,
and each entry's usage, cost and latency."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether import App, Context, Effect
from tether.agent import Agent, ModelRequest, ScriptedModel, ToolCall, load_request

POLL = 0.05
NOTE = "x" * 400  # what each tool result adds to the conversation


def long_script(turns: int) -> list[Any]:
    """``turns - 1`` tool calls, then a final answer."""
    calls: list[Any] = [
        ToolCall(id=f"c{i}", name="note", arguments={"i": i}) for i in range(1, turns)
    ]
    return [*calls, "done"]


def build(db_url: str, model: ScriptedModel, turns: int) -> App:
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def note(i: int) -> str:
        """Read note i."""
        return f"{i}:{NOTE}"

    agent: Agent[str] = Agent(
        model, [note], "You read notes. " * 20, max_turns=turns, settings={"temperature": 0}
    )

    @app.workflow
    async def reader(ctx: Context) -> list[str]:
        result = await agent.run(ctx, "read the notes")
        await ctx.sleep(0.05)  # parks the run: what follows is a replay of the agent
        return [m.model_dump_json() for m in result.messages]

    return app


async def stored_bytes(app: App, run_id: str) -> list[int]:
    """Bytes each model entry stored: its input and output JSON, plus the blobs first
    written for it (the messages its input names that no earlier answer holds)."""
    entries = [e for e in await app.get_journal(run_id) if e.kind == "model"]
    answers = {e.output["message_hash"] for e in entries}
    sizes = []
    for entry in entries:
        record = entry.input["args"][0]
        new = [h for h in record["messages"] if h not in answers]
        if record["after"] is None:
            new.append(record["tools"])
        blobs = await app.blobs(new)
        assert set(blobs) == set(new), "a message the entry names is not stored"
        own = len(json.dumps(entry.input)) + len(json.dumps(entry.output))
        sizes.append(own + sum(len(text) for text in blobs.values()))
    return sizes


async def test_each_entry_stores_what_its_turn_added_not_the_whole_conversation(
    db_url: str,
) -> None:
    model = ScriptedModel(long_script(50))
    app = build(db_url, model, 50)
    async with app:
        await (await app.start("reader", run_id="long")).result(timeout=60)
        sizes = await stored_bytes(app, "long")
    assert len(sizes) == 50 and model.calls == 50
    full = [len(r.model_dump_json()) for r in model.requests]  # what a copy would store
    # The request grows ~25x from turn 2 to turn 50; what its entry stores does not.
    assert full[49] > 20 * full[1]
    assert max(sizes[1:]) < 1.3 * min(sizes[1:]), sizes
    assert sum(sizes) < sum(full) / 10


async def test_bytes_per_turn_grow_linearly_in_new_content(db_url: str) -> None:
    totals = {}
    for turns in (1, 10, 50):
        model = ScriptedModel(long_script(turns))
        app = build(db_url, model, turns)
        async with app:
            await (await app.start("reader", run_id=f"t{turns}")).result(timeout=60)
            totals[turns] = sum(await stored_bytes(app, f"t{turns}"))
    # Linear: 40 more turns (each adding the same content) cost ~4x what 9 more did.
    per_turn_10 = (totals[10] - totals[1]) / 9
    per_turn_50 = (totals[50] - totals[10]) / 40
    assert 0.8 < per_turn_50 / per_turn_10 < 1.25, totals


async def test_the_stored_request_is_put_back_exactly(db_url: str) -> None:
    model = ScriptedModel(long_script(4))
    app = build(db_url, model, 4)
    async with app:
        await (await app.start("reader", run_id="r")).result(timeout=30)
        seqs = [e.seq for e in await app.get_journal("r") if e.kind == "model"]
        rebuilt = [await load_request(app, "r", seq) for seq in seqs]
    assert [r.model_dump_json() for r in rebuilt] == [r.model_dump_json() for r in model.requests]
    assert rebuilt[0].settings == {"temperature": 0} and rebuilt[0].tools[0].name == "note"


async def test_replay_returns_the_recorded_answers_byte_for_byte(db_url: str) -> None:
    # Each answer embeds something the model made up on the spot; a second call of the
    # model would answer differently, so a replay that asked again could not match.
    answers: list[str] = []

    def fresh(request: ModelRequest) -> str:
        answers.append(f"answer {len(answers)} {id(request)}")
        return answers[-1]

    model = ScriptedModel([ToolCall(id="c1", name="note", arguments={"i": 1}), fresh])
    app = build(db_url, model, 4)
    async with app:
        messages = await (await app.start("reader", run_id="r")).result(timeout=30)
        journal = [e for e in await app.get_journal("r") if e.kind == "model"]
    assert model.calls == 2 and len(answers) == 1  # the replay after the sleep asked nothing
    # The workflow's result was computed by the replay: its answers are the recorded ones.
    recorded = [json.dumps(e.output["message"], separators=(",", ":")) for e in journal]
    assert messages[2] == recorded[0] and messages[4] == recorded[1]
    assert answers[0] in messages[4]


async def test_each_model_entry_records_usage_cost_and_latency(db_url: str) -> None:
    model = ScriptedModel(long_script(2), price_per_token=0.001)
    app = build(db_url, model, 2)
    async with app:
        await (await app.start("reader", run_id="r")).result(timeout=30)
        journal = [e for e in await app.get_journal("r") if e.kind == "model"]
    assert [e.name for e in journal] == ["scripted", "scripted"]
    for entry in journal:
        usage = entry.output["usage"]
        tokens = usage["input_tokens"] + usage["output_tokens"]
        assert tokens > 0
        assert entry.output["cost_usd"] == pytest.approx(tokens * 0.001)
        assert entry.output["latency_ms"] >= 0 and entry.output["tries"] == 1
        assert entry.output["model"] == "scripted"
    assert journal[0].output["stop_reason"] == "tool_calls"
    assert journal[1].output["stop_reason"] == "end_turn"


async def test_runs_sending_the_same_instructions_store_them_once(db_url: str) -> None:
    app = build(db_url, ScriptedModel(["a"]), 1)
    async with app:
        for run_id in ("a", "b"):
            await (await app.start("reader", run_id=run_id)).result(timeout=30)
        inputs = [
            next(e for e in await app.get_journal(r) if e.kind == "model").input["args"][0]
            for r in ("a", "b")
        ]
    # Same system prompt, same user prompt, same tools: the same blobs.
    assert inputs[0]["messages"] == inputs[1]["messages"]
    assert inputs[0]["tools"] == inputs[1]["tools"]
