"""Lineage: the branch tree of forks around a run, and what differs between two runs.

Pure functions over the App's query API (``get_run``, ``list_runs(forked_from=)``,
``get_journal``, ``list_effects``), shared by ``tether tree``/``tether diff`` and the HTTP
API and web UI, so every interface tells the same story.

Two entries at one seq are *the same* when they are one row shared by reference (the same
``run_id`` and ``seq``: a fork reads its origin's prefix, never a copy) or when they
recorded the same call with the same outcome: equal kind, name, input, output, error and
status. What a call cost is not its outcome: a model answer is compared by its message
(text and tool calls, not usage, latency or cost), a sleep by its length (not the clock
time it woke at), an error by its type, message and code (not its traceback). The first
seq at which two journals are not the same is where they *diverge*; after it, every seq
whose entries differ is a :class:`Change`. A shared row is never one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import RunNotFoundError
from .._records import EffectRecord, EntryStatus, JournalEntry, Run
from ._views import effect_view, entry_view, run_summary

if TYPE_CHECKING:
    from ..engine import App

__all__ = [
    "Change",
    "Diff",
    "Tree",
    "TreeNode",
    "diff_journals",
    "diff_runs",
    "diff_view",
    "entry_summary",
    "fork_tree",
    "is_replaced",
    "tree_view",
]

MAX_TREE = 1000  # runs a tree shows at most; past it, Tree.truncated
_PAGE = 500
_EVERY = 1_000_000_000  # a limit that means all of a run's effects
WAITS = ("sleep", "signal", "child")


# -- the tree ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TreeNode:
    """A run and the forks made from it (oldest fork point first)."""

    run: Run
    forks: tuple[TreeNode, ...] = ()


@dataclass(frozen=True, slots=True)
class Tree:
    """The branch tree that holds ``run_id``: from the root (the run it descends from by
    forks, which was itself forked from nothing) down to every fork of a fork."""

    root: TreeNode
    run_id: str  # the run asked about
    truncated: bool = False  # more than MAX_TREE runs: some forks are left out

    def walk(self) -> Iterator[tuple[int, TreeNode]]:
        """Every node with its depth, depth first, a run before its forks."""
        stack = [(0, self.root)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, fork) for fork in reversed(node.forks))

    def __len__(self) -> int:
        return sum(1 for _ in self.walk())


async def fork_tree(app: App, run_id: str, *, limit: int = MAX_TREE) -> Tree:
    """The branch tree of ``run_id`` (raises RunNotFoundError if there is no such run)."""
    run = await app.get_run(run_id)
    seen = {run.run_id}
    while run.forked_from is not None and run.forked_from not in seen:
        try:
            origin = await app.get_run(run.forked_from)
        except RunNotFoundError:  # the origin is gone: the highest run found is the root
            break
        seen.add(origin.run_id)
        run = origin
    root = run
    forks: dict[str, list[Run]] = {}
    queue, count, truncated = [root], 1, False
    while queue and not truncated:
        parent = queue.pop(0)
        found: list[Run] = []
        offset = 0
        while True:
            page = await app.list_runs(forked_from=parent.run_id, limit=_PAGE, offset=offset)
            found += page
            if len(page) < _PAGE:
                break
            offset += _PAGE
        # The newest comes first from list_runs; a tree reads better by fork point.
        found.sort(key=lambda r: (r.fork_seq or 0, r.created_at, r.run_id))
        if count + len(found) > limit:
            found, truncated = found[: max(0, limit - count)], True
        count += len(found)
        forks[parent.run_id] = found
        queue += found
    return Tree(_build(root, forks), run_id, truncated)


def _build(root: Run, forks: dict[str, list[Run]]) -> TreeNode:
    # Bottom up without recursion: a chain of forks of forks may be deeper than the stack.
    order: list[Run] = []
    stack = [root]
    while stack:
        run = stack.pop()
        order.append(run)
        stack.extend(forks.get(run.run_id, ()))
    nodes: dict[str, TreeNode] = {}
    for run in reversed(order):
        children = tuple(nodes[f.run_id] for f in forks.get(run.run_id, ()))
        nodes[run.run_id] = TreeNode(run, children)
    return nodes[root.run_id]


def tree_view(tree: Tree) -> dict[str, Any]:
    """The tree as JSON: its runs depth first (a run before its forks), each a run
    summary with its ``depth``, the ids of its ``forks`` and whether it is the run
    asked about (``current``)."""
    return {
        "run_id": tree.run_id,
        "root_run_id": tree.root.run.run_id,
        "truncated": tree.truncated,
        "runs": [
            run_summary(node.run)
            | {
                "depth": depth,
                "forks": [fork.run.run_id for fork in node.forks],
                "current": node.run.run_id == tree.run_id,
            }
            for depth, node in tree.walk()
        ],
    }


# -- the diff ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Change:
    """One seq at which two runs' journals differ, after they diverged.

    ``what`` is ``model``, ``tool``, ``wait`` or ``step`` when both entries are of that
    sort (a missing entry takes the other's), else ``mixed``. ``differs`` names what
    differs: ``missing`` (only one run has an entry here), ``kind``, ``name`` (``tool``
    for a tool call), ``status``, ``error``, and by sort ``text``, ``tool_calls``,
    ``request`` (a model answer: what it said, the calls it asked for, the conversation it
    was sent), ``args``, ``result``, ``state`` (a tool call: its arguments, its result, its
    state in the effect log), ``input``, ``output`` (anything else: a wait's value, a
    step's output).
    """

    seq: int
    what: str
    differs: tuple[str, ...]
    a: JournalEntry | None
    b: JournalEntry | None
    a_effect: EffectRecord | None = None
    b_effect: EffectRecord | None = None


@dataclass(frozen=True, slots=True)
class Diff:
    """Two runs compared: where their journals diverge, what differs after it, and
    whether they ended differently (``outcome``: of ``status``, ``result``, ``error``)."""

    a: Run
    b: Run
    shared: int  # entries that are one row shared by reference
    same_before: int  # entries before the first divergent seq (shared or equal)
    first_divergent: int | None  # None: the journals are the same
    changes: tuple[Change, ...]
    outcome: tuple[str, ...] = field(default=())
    a_effects: dict[tuple[str, int], EffectRecord] = field(default_factory=dict)
    b_effects: dict[tuple[str, int], EffectRecord] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return self.first_divergent is None and not self.outcome

    @property
    def first(self) -> Change | None:
        """The change at the first divergent seq."""
        if self.first_divergent is None or not self.changes:
            return None
        return self.changes[0]


def _sort(kind: str) -> str:
    if kind in ("model", "tool"):
        return kind
    return "wait" if kind in WAITS else "step"


def _error(error: dict[str, Any] | None) -> Any:
    if not error:
        return None
    return (error.get("type"), error.get("message"), error.get("code"))


def _message(entry: JournalEntry) -> dict[str, Any]:
    output = entry.output if isinstance(entry.output, dict) else {}
    message = output.get("message")
    return message if isinstance(message, dict) else {}


def _replaced(entry: JournalEntry) -> bool:
    """A fork's edited entry (``app.fork(..., replace=)``) says so in its output."""
    return isinstance(entry.output, dict) and entry.output.get("replaced") is True


def is_replaced(run: Run, entry: JournalEntry) -> bool:
    """Whether ``entry`` of ``run``'s journal is the output the fork was made with
    (``app.fork(..., replace=)``): the fork's own entry at its fork point."""
    return run.fork_replaced and entry.run_id == run.run_id and entry.seq == run.fork_seq


def _calls(message: dict[str, Any]) -> list[tuple[Any, str]]:
    # A call's id is the model's label for it, not what it asked: compare name and args.
    return [
        (call.get("name"), json.dumps(call.get("arguments"), sort_keys=True, default=str))
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict)
    ]


def _outcome(entry: JournalEntry) -> Any:
    """What an entry's output means, for comparing (see the module docstring)."""
    if entry.kind == "model":
        message = _message(entry)
        return (message.get("content"), _calls(message))
    if entry.kind == "sleep":
        return None  # the clock time it woke at, which no two runs share
    return entry.output


def _same(a: JournalEntry, b: JournalEntry) -> bool:
    if (a.run_id, a.seq) == (b.run_id, b.seq):
        return True
    return (
        a.kind == b.kind
        and a.name == b.name
        and a.status is b.status
        and a.input == b.input
        and _outcome(a) == _outcome(b)
        and _error(a.error) == _error(b.error)
    )


def _differs(
    a: JournalEntry | None,
    b: JournalEntry | None,
    a_effect: EffectRecord | None,
    b_effect: EffectRecord | None,
) -> tuple[str, tuple[str, ...]]:
    if a is None or b is None:
        present = a or b
        assert present is not None
        return _sort(present.kind), ("missing",)
    if a.kind != b.kind:
        return "mixed", ("kind",)
    what = _sort(a.kind)
    found: list[str] = []
    if a.name != b.name:
        found.append("tool" if what == "tool" else "name")
    if what == "model":
        one, two = _message(a), _message(b)
        if one.get("content") != two.get("content"):
            found.append("text")
        if _calls(one) != _calls(two):
            found.append("tool_calls")
        if a.input != b.input:
            found.append("request")
    elif what == "tool":
        args = (a_effect.args if a_effect else a.input, b_effect.args if b_effect else b.input)
        if args[0] != args[1]:
            found.append("args")
        if a.output != b.output:
            found.append("result")
        if a_effect is not None and b_effect is not None and a_effect.state != b_effect.state:
            found.append("state")
    else:
        if a.input != b.input:
            found.append("input")
        if _outcome(a) != _outcome(b):
            found.append("output")
    if a.status is not b.status:
        found.append("status")
    if _error(a.error) != _error(b.error):
        found.append("error")
    if not found:  # e.g. a tool call whose arguments differ only in the journal's record
        found.append("input" if a.input != b.input else "output")
    return what, tuple(found)


def _index(effects: Iterable[EffectRecord]) -> dict[tuple[str, int], EffectRecord]:
    return {(effect.run_id, effect.seq): effect for effect in effects}


def diff_journals(
    a_run: Run,
    a_entries: Iterable[JournalEntry],
    b_run: Run,
    b_entries: Iterable[JournalEntry],
    a_effects: Iterable[EffectRecord] = (),
    b_effects: Iterable[EffectRecord] = (),
) -> Diff:
    """Compare two runs' journals (as ``app.get_journal`` returns them: each entry's
    ``run_id`` says whose row it is) and their ends. The effects are looked up by the
    row's owner and seq, so pass the effects of every run whose rows a journal holds
    (:func:`diff_runs` does)."""
    a_by_seq = {entry.seq: entry for entry in a_entries}
    b_by_seq = {entry.seq: entry for entry in b_entries}
    a_fx, b_fx = _index(a_effects), _index(b_effects)
    seqs = sorted(a_by_seq.keys() | b_by_seq.keys())
    shared = sum(
        1
        for seq in seqs
        if seq in a_by_seq
        and seq in b_by_seq
        and (a_by_seq[seq].run_id, seq) == (b_by_seq[seq].run_id, seq)
    )
    first: int | None = None
    changes: list[Change] = []
    same_before = 0
    for seq in seqs:
        a, b = a_by_seq.get(seq), b_by_seq.get(seq)
        if a is not None and b is not None and _same(a, b):
            if first is None:
                same_before += 1
            continue
        if first is None:
            first = seq
        a_effect = None if a is None else a_fx.get((a.run_id, a.seq))
        b_effect = None if b is None else b_fx.get((b.run_id, b.seq))
        what, differs = _differs(a, b, a_effect, b_effect)
        changes.append(Change(seq, what, differs, a, b, a_effect, b_effect))
    outcome = tuple(
        name
        for name, one, two in (
            ("status", a_run.status, b_run.status),
            ("result", a_run.result, b_run.result),
            ("error", _error(a_run.error), _error(b_run.error)),
        )
        if one != two
    )
    return Diff(a_run, b_run, shared, same_before, first, tuple(changes), outcome, a_fx, b_fx)


async def diff_runs(app: App, a_id: str, b_id: str) -> Diff:
    """Read both runs, their journals and the effects of every run whose rows they hold
    (a fork's prefix is its origin's), and compare them."""
    a_run, b_run = await app.get_run(a_id), await app.get_run(b_id)
    a_entries, b_entries = await app.get_journal(a_id), await app.get_journal(b_id)
    owners = {entry.run_id for entry in (*a_entries, *b_entries) if entry.kind == "tool"}
    effects: list[EffectRecord] = []
    for owner in sorted(owners | {a_id, b_id}):
        try:
            effects += await app.list_effects(owner, limit=_EVERY)
        except RunNotFoundError:  # an origin that is gone: its calls show without effects
            continue
    return diff_journals(a_run, a_entries, b_run, b_entries, effects, effects)


# -- views ---------------------------------------------------------------------------------
def _preview(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def entry_summary(entry: JournalEntry, effect: EffectRecord | None = None) -> str:
    """One line on what an entry did, for a side-by-side list."""
    if entry.status is EntryStatus.FAILED:
        error = entry.error or {}
        return f"{entry.name} failed: {error.get('type')}: {error.get('message')}"
    if entry.kind == "model":
        message = _message(entry)
        text = message.get("content")
        said = [f"says {_preview(json.dumps(text, ensure_ascii=False), 60)}"] if text else []
        said += [
            f"calls {call.get('name')}({_preview(call.get('arguments') or {}, 50)})"
            for call in message.get("tool_calls") or ()
            if isinstance(call, dict)
        ]
        replaced = " (replaced)" if _replaced(entry) else ""
        return ("; ".join(said) or "answers nothing") + replaced
    if entry.kind == "tool":
        args = effect.args if effect is not None else entry.input
        call = f"{entry.name}({_preview(args or {}, 50)})"
        if entry.status is EntryStatus.COMPLETED:
            state = f" [{effect.state.value}]" if effect is not None else ""
            return f"{call} → {_preview(entry.output, 50)}{state}"
        return f"{call} {effect.state.value if effect is not None else entry.status.value}"
    if entry.status is EntryStatus.WAITING:
        return f"{entry.kind} {entry.name}: waiting"
    if entry.kind == "sleep":
        return "slept"
    if entry.kind == "signal":
        return f"signal {entry.name} → {_preview(entry.output, 60)}"
    if entry.kind == "child":
        return f"child {entry.name} → {_preview(entry.output, 60)}"
    return f"{entry.name} → {_preview(entry.output, 60)}"


def _side(
    run: Run, entry: JournalEntry | None, effect: EffectRecord | None
) -> dict[str, Any] | None:
    if entry is None:
        return None
    view: dict[str, Any] = entry_view(entry) | {
        "run_id": entry.run_id,
        "shared": entry.run_id != run.run_id,  # a row of the run's origin
        "summary": entry_summary(entry, effect),
        "replaced": is_replaced(run, entry),
    }
    if entry.kind == "model":
        message = _message(entry)
        view["model"] = {
            "text": message.get("content"),
            "tool_calls": [
                {"name": call.get("name"), "arguments": call.get("arguments")}
                for call in message.get("tool_calls") or ()
                if isinstance(call, dict)
            ],
            "replaced": _replaced(entry),
        }
    if entry.kind == "tool":
        effect_json = None if effect is None else effect_view(effect)
        view["effect"] = None
        if effect_json is not None:
            view["effect"] = {
                key: effect_json[key]
                for key in ("kind", "state", "idempotency_key", "args", "result", "error")
            }
    return view


def diff_view(diff: Diff) -> dict[str, Any]:
    """The diff as JSON (``tether diff --json``, the HTTP API)."""

    def outcome(run: Run) -> dict[str, Any]:
        return {"status": run.status.value, "result": run.result, "error": run.error}

    return {
        "a": run_summary(diff.a),
        "b": run_summary(diff.b),
        "same": diff.same,
        "shared_entries": diff.shared,
        "same_before": diff.same_before,
        "first_divergent_seq": diff.first_divergent,
        "changes": [
            {
                "seq": change.seq,
                "what": change.what,
                "differs": list(change.differs),
                "a": _side(diff.a, change.a, change.a_effect),
                "b": _side(diff.b, change.b, change.b_effect),
            }
            for change in diff.changes
        ],
        "outcome": {"differs": list(diff.outcome), "a": outcome(diff.a), "b": outcome(diff.b)},
    }
