"""Conversations stored once, content-addressed.

A model call's journal entry does not copy the conversation it sent: that would store a
50-turn conversation about 50 times over. Each message is stored once, as the SHA-256 of
its JSON; the entry's input names only what is new since the agent's previous model call
(that call's seq, and the hashes of the messages added since), so an entry costs about
what its turn added, whatever the length of the conversation:

    input:  {"after": 7, "messages": ["9f2c...", "41ab..."], "tools": "c0de...",
             "settings": {...}}
    output: {"message": {...}, "message_hash": "77e1...", "usage": {...}, "model": "...",
             "stop_reason": "...", "cost_usd": 0.0012, "latency_ms": 812.4, "tries": 1}

The answer (``message``) is stored inline in the entry's output: the next request refers
to it by ``message_hash``. Every other message (system, user, tool results) and the tool
list are written as blobs in the same transaction as the entry that first sends them; a
blob is shared by every run that sends the same text (a system prompt is stored once).
``load_request`` puts a recorded request back together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import TetherError
from ..storage._rows import blob_hash
from ._messages import Message, ModelRequest, ToolSpec

if TYPE_CHECKING:
    from ..engine import App

__all__ = ["Conversation", "load_request", "tools_blob"]


def tools_blob(specs: Sequence[ToolSpec]) -> tuple[str, str]:
    """(hash, JSON text) of a tool list."""
    text = json.dumps([spec.model_dump(mode="json") for spec in specs], separators=(",", ":"))
    return blob_hash(text), text


class Conversation:
    """The messages of one ``agent.run``, each with its hash, and what has been stored."""

    def __init__(self, tools: tuple[str, str]) -> None:
        self.messages: list[Message] = []
        self.hashes: list[str] = []
        self._texts: list[str | None] = []  # JSON of messages not stored yet
        self._tools = tools
        self._stored: set[str] = set()  # hashes stored (blobs, or an earlier answer)
        self._sent = 0  # messages the previous model call sent (its answer is new)
        self._after: int | None = None  # seq of the previous model call

    def add(self, message: Message) -> None:
        text = message.model_dump_json()
        self.messages.append(message)
        self.hashes.append(blob_hash(text))
        self._texts.append(text)

    def answer(self, message: Message, digest: str) -> None:
        """The model's answer, stored inline in its entry's output under ``digest``."""
        self.messages.append(message)
        self.hashes.append(digest)
        self._texts.append(None)
        self._stored.add(digest)

    def record(
        self, settings: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
        """The input to record for a model call now, and the blobs it needs stored."""
        blobs: list[tuple[str, str]] = []
        tools_hash, tools_text = self._tools
        if tools_hash not in self._stored:
            blobs.append((tools_hash, tools_text))
            self._stored.add(tools_hash)
        for index in range(self._sent, len(self.messages)):
            digest, text = self.hashes[index], self._texts[index]
            if digest not in self._stored and text is not None:
                blobs.append((digest, text))
                self._stored.add(digest)
        record = {
            "after": self._after,
            "messages": self.hashes[self._sent :],
            "tools": tools_hash,
            "settings": dict(settings),
        }
        return record, tuple(blobs)

    def sent(self, seq: int) -> None:
        """The model call at ``seq`` sent every message so far."""
        self._after = seq
        self._sent = len(self.messages)


def _model_input(entry: Any) -> dict[str, Any]:
    args = entry.input.get("args") if isinstance(entry.input, dict) else None
    record = args[0] if isinstance(args, list) and args else None
    if not isinstance(record, dict) or "messages" not in record:
        raise TetherError(
            f"seq {entry.seq} is not a model call recorded by tether.agent", seq=entry.seq
        )
    return record


async def load_request(app: App, run_id: str, seq: int) -> ModelRequest:
    """The request the model call at ``seq`` of ``run_id`` sent, put back together from
    the journal and the blob store."""
    entries = {entry.seq: entry for entry in await app.get_journal(run_id)}
    entry = entries.get(seq)
    if entry is None or entry.kind != "model":
        raise TetherError(f"run {run_id!r} has no model call at seq {seq}", seq=seq)
    record = _model_input(entry)
    chain: list[list[str]] = []
    current: dict[str, Any] | None = record
    while current is not None:
        chain.append(list(current["messages"]))
        after = current.get("after")
        previous = entries.get(after) if after is not None else None
        current = _model_input(previous) if previous is not None else None
    hashes = [digest for part in reversed(chain) for digest in part]
    known: dict[str, Message] = {}
    for other in entries.values():
        output = other.output if other.kind == "model" else None
        if isinstance(output, dict) and "message_hash" in output:
            known[output["message_hash"]] = Message.model_validate(output["message"])
    missing = [digest for digest in {*hashes, record["tools"]} if digest not in known]
    texts = await app.blobs(missing)
    if record["tools"] not in texts:
        raise TetherError(f"run {run_id!r} seq {seq}: its tool list is not stored", seq=seq)
    messages = []
    for digest in hashes:
        if digest in known:
            messages.append(known[digest])
        elif digest in texts:
            messages.append(Message.model_validate_json(texts[digest]))
        else:
            raise TetherError(f"run {run_id!r} seq {seq}: message {digest} is not stored")
    tools = tuple(ToolSpec.model_validate(spec) for spec in json.loads(texts[record["tools"]]))
    return ModelRequest(messages=tuple(messages), tools=tools, settings=record["settings"])
