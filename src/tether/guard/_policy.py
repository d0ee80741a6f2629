"""The policy file: ordered rules that turn the agency dial per deployment (DESIGN 6).

::

    # policy.toml: the first rule that matches a call decides
    [[rule]]
    tool = "issue_*"            # a glob over tool names (default "*")
    kind = "irreversible"       # read | idempotent | irreversible, or a list of them
    blast_radius = "money"      # a glob over the tool's blast radius
    tainted = true              # only calls in a tainted run (false: only untainted)
    tags = ["prod"]             # only runs carrying every one of these tags (globs)
    decision = "approve"        # auto | notify | approve | deny
    timeout = "4h"              # approve only: a person has this long (s, m, h, d) ...
    on_timeout = "reject"       # ... then the call is rejected (or "approve"d)
    reason = "refunds need a person"

A call no rule matches gets its tool's declaration (``approval=``, default ``auto``). Then
one built-in rule applies: an IRREVERSIBLE call in a tainted run (untrusted content has
flowed into it) that would run without a person (auto or notify) waits for approval
instead, so a prompt injection cannot silently cause damage. A file rule that matches
decides alone, so a deployment can still say otherwise for a tool it trusts.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from .._records import Decision, Effect
from ..engine._policy import ON_TIMEOUT, CallFacts, Ruling

__all__ = ["Explanation", "PolicyError", "PolicyFile", "Rule", "load", "parse", "parse_duration"]

_KEYS = {
    "tool",
    "kind",
    "blast_radius",
    "tainted",
    "tags",
    "decision",
    "timeout",
    "on_timeout",
    "reason",
}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# What the policy decides for a call, and why (the engine's Ruling).
Explanation = Ruling


class PolicyError(ConfigurationError):
    """A policy file that cannot be used: its path, the line and the problem."""

    code = "policy"


@dataclass(frozen=True, slots=True)
class Rule:
    decision: Decision
    tool: str = "*"
    kinds: frozenset[Effect] | None = None
    blast_radius: str | None = None
    tainted: bool | None = None
    tags: tuple[str, ...] = ()
    timeout: float | None = None
    on_timeout: str | None = None
    reason: str = ""
    line: int = 0

    def matches(self, facts: CallFacts) -> bool:
        if not fnmatch.fnmatchcase(facts.tool, self.tool):
            return False
        if self.kinds is not None and facts.kind not in self.kinds:
            return False
        if self.blast_radius is not None and not fnmatch.fnmatchcase(
            facts.blast_radius or "", self.blast_radius
        ):
            return False
        if self.tainted is not None and self.tainted != facts.tainted:
            return False
        return all(any(fnmatch.fnmatchcase(t, want) for t in facts.tags) for want in self.tags)

    def describe(self) -> str:
        parts = [f"tool {self.tool!r}"]
        if self.kinds is not None:
            parts.append("kind " + "|".join(sorted(k.value for k in self.kinds)))
        if self.blast_radius is not None:
            parts.append(f"blast radius {self.blast_radius!r}")
        if self.tainted is not None:
            parts.append("tainted" if self.tainted else "untainted")
        if self.tags:
            parts.append("tags " + ", ".join(repr(t) for t in self.tags))
        return ", ".join(parts)


class PolicyFile:
    """Rules read from a file (or none: the default policy)."""

    def __init__(self, rules: list[Rule] | None = None, path: Path | None = None) -> None:
        self.rules = list(rules or [])
        self.path = path

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "default"
        return f"<PolicyFile {where}: {len(self.rules)} rules>"

    def decide(self, facts: CallFacts) -> Decision:
        return self.explain(facts).decision

    def explain(self, facts: CallFacts) -> Ruling:
        timeout, on_timeout = facts.declared_timeout, facts.declared_on_timeout
        for rule in self.rules:
            if rule.matches(facts):
                where = f"rule at {self.path}:{rule.line}" if self.path else f"rule {rule.line}"
                why = rule.reason or f"it matches {rule.describe()}"
                if rule.timeout is not None:
                    timeout = rule.timeout
                return Ruling(rule.decision, where, why, timeout, rule.on_timeout or on_timeout)
        if (
            facts.kind is Effect.IRREVERSIBLE
            and facts.tainted
            and facts.declared in (Decision.AUTO, Decision.NOTIFY)
        ):
            return Ruling(
                Decision.APPROVE,
                "the taint rule",
                "an irreversible call in a run that has read untrusted content waits for a "
                f"person (the tool declares {facts.declared.value})",
                timeout,
                on_timeout,
            )
        return Ruling(
            facts.declared,
            "the tool's declaration",
            f"no rule matches; {facts.tool!r} declares approval={facts.declared.value!r}",
            timeout,
            on_timeout,
        )


def load(path: Path | str | None) -> PolicyFile:
    """The policy in the TOML file ``path``; the default policy with ``None``."""
    if path is None:
        return PolicyFile()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(
            f"policy file {file}: cannot read it ({exc.strerror or exc}); check the path "
            "given as App(policy=...) or TETHER_POLICY"
        ) from None
    return parse(text, file)


def parse(text: str, path: Path | None = None) -> PolicyFile:
    where = str(path) if path else "policy"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = f":{match.group(1)}" if match else ""
        raise PolicyError(f"{where}{line}: not valid TOML: {exc}") from None
    lines = _rule_lines(text)
    unknown = set(data) - {"rule"}
    if unknown:
        raise PolicyError(
            f"{where}: unknown section {sorted(unknown)[0]!r}; a policy file holds only "
            "[[rule]] tables"
        )
    raw = data.get("rule", [])
    if not isinstance(raw, list):
        raise PolicyError(f"{where}: 'rule' must be an array of tables: write [[rule]]")
    rules = []
    for index, entry in enumerate(raw):
        number = lines[index] if index < len(lines) else 0
        rules.append(_rule(entry, f"{where}:{number}", number))
    return PolicyFile(rules, path)


def _rule_lines(text: str) -> list[int]:
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if re.match(r"\s*\[\[\s*rule\s*\]\]", line)
    ]


def _rule(entry: Any, where: str, line: int) -> Rule:
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: a rule must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise PolicyError(
            f"{where}: unknown key {sorted(unknown)[0]!r} in a rule; the keys are "
            + ", ".join(sorted(_KEYS))
        )
    if "decision" not in entry:
        raise PolicyError(
            f'{where}: the rule has no decision; add decision = "auto", '
            '"notify", "approve" or "deny"'
        )
    decision = _choice(entry["decision"], Decision, "decision", where)
    kinds = None
    if "kind" in entry:
        values = entry["kind"] if isinstance(entry["kind"], list) else [entry["kind"]]
        kinds = frozenset(_choice(v, Effect, "kind", where) for v in values)
    for key in ("tool", "blast_radius", "reason"):
        if key in entry and not isinstance(entry[key], str):
            raise PolicyError(f"{where}: {key} must be a string, not {entry[key]!r}")
    if "tainted" in entry and not isinstance(entry["tainted"], bool):
        raise PolicyError(f"{where}: tainted must be true or false, not {entry['tainted']!r}")
    tags = entry.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise PolicyError(f'{where}: tags must be a list of strings, e.g. tags = ["prod"]')
    timeout = None
    if "timeout" in entry:
        try:
            timeout = parse_duration(entry["timeout"])
        except ValueError as exc:
            raise PolicyError(f"{where}: timeout {exc}") from None
    on_timeout = entry.get("on_timeout")
    if on_timeout is not None and on_timeout not in ON_TIMEOUT:
        raise PolicyError(f"{where}: on_timeout {on_timeout!r} is not one of 'reject', 'approve'")
    if (timeout is not None or on_timeout is not None) and decision is not Decision.APPROVE:
        key = "timeout" if timeout is not None else "on_timeout"
        raise PolicyError(
            f'{where}: {key} goes only with decision = "approve" (a deadline for a person), '
            f"not with {decision.value!r}"
        )
    return Rule(
        decision=decision,
        tool=entry.get("tool", "*"),
        kinds=kinds,
        blast_radius=entry.get("blast_radius"),
        tainted=entry.get("tainted"),
        tags=tuple(tags),
        timeout=timeout,
        on_timeout=on_timeout,
        reason=entry.get("reason", ""),
        line=line,
    )


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "90s", "30m", "4h", "2d" (ValueError if not)."""
    if isinstance(value, bool):
        raise ValueError(f'must be seconds or a duration like "30m", not {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (
        match := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    ):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        raise ValueError(
            f'must be seconds or a duration like "90s", "30m", "4h", "2d", not {value!r}'
        )
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be more than zero seconds, not {value!r}")
    return seconds


def _choice(value: Any, kind: Any, key: str, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in kind)
        raise PolicyError(f"{where}: {key} {value!r} is not one of {allowed}") from None
