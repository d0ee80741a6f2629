"""The policy file: rules parsed with their line numbers, matched in order, explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether import App, Decision, Effect
from tether.engine._policy import CallFacts
from tether.guard import PolicyError, load, parse
from tether.guard._policy import parse_duration

POLICY = """\
# payments need a person; reads of the web are fine
[[rule]]
tool = "issue_*"
kind = "irreversible"
decision = "approve"
reason = "money leaves the company"

[[rule]]
kind = ["read", "idempotent"]
decision = "auto"

[[rule]]
blast_radius = "prod-*"
tainted = true
decision = "deny"
"""


def facts(tool: str, kind: Effect, *, tainted: bool = False, radius: str | None = None,
          declared: Decision = Decision.AUTO, tags: tuple[str, ...] = (),
          timeout: float | None = None) -> CallFacts:  # fmt: skip
    return CallFacts(tool, kind, radius, declared, tainted, frozenset(tags), timeout)


def test_tag_rules_match_runs_carrying_every_listed_tag() -> None:
    policy = parse(
        '[[rule]]\ntags = ["prod", "tenant:*"]\ndecision = "approve"\n'
        '[[rule]]\ntags = "prod"\ndecision = "notify"\n'
    )
    both = facts("send", Effect.IRREVERSIBLE, tags=("tenant:acme", "prod"))
    assert policy.explain(both).decision is Decision.APPROVE
    assert "tags 'prod', 'tenant:*'" in policy.explain(both).reason
    assert policy.decide(facts("send", Effect.READ, tags=("prod",))) is Decision.NOTIFY
    assert policy.decide(facts("send", Effect.READ, tags=("dev",))) is Decision.AUTO


def test_deadlines_come_from_the_rule_else_from_the_tool() -> None:
    policy = parse(
        '[[rule]]\ntool = "wire"\ndecision = "approve"\ntimeout = "4h"\n'
        'on_timeout = "approve"\n[[rule]]\ntool = "refund"\ndecision = "approve"\n'
    )
    wire = policy.explain(facts("wire", Effect.IRREVERSIBLE, timeout=60))
    assert (wire.timeout, wire.on_timeout) == (4 * 3600, "approve")
    assert str(wire).endswith("(deadline 14400 s, then approve)")
    refund = policy.explain(facts("refund", Effect.IRREVERSIBLE, timeout=60))
    assert (refund.timeout, refund.on_timeout) == (60, "reject")  # the tool's own
    none = policy.explain(facts("refund", Effect.IRREVERSIBLE))
    assert none.timeout is None
    for text, seconds in (("90s", 90), ("30m", 1800), ("1.5h", 5400), ("2d", 172800), (7, 7)):
        assert parse_duration(text) == seconds


def test_the_first_matching_rule_decides_and_says_where_it_is() -> None:
    policy = parse(POLICY, Path("policy.toml"))
    explained = policy.explain(facts("issue_refund", Effect.IRREVERSIBLE))
    assert explained.decision is Decision.APPROVE
    assert explained.source == "rule at policy.toml:2"
    assert explained.reason == "money leaves the company"
    read = policy.explain(facts("issue_lookup", Effect.READ, declared=Decision.DENY))
    assert read.decision is Decision.AUTO and read.source == "rule at policy.toml:8"
    assert policy.decide(facts("drop_db", Effect.IRREVERSIBLE, radius="prod-eu", tainted=True)) \
        is Decision.DENY  # fmt: skip
    # Untainted, it matches no rule: the tool's declaration decides.
    explained = policy.explain(
        facts("drop_db", Effect.IRREVERSIBLE, radius="prod-eu", declared=Decision.NOTIFY)
    )
    assert (explained.decision, explained.source) == (Decision.NOTIFY, "the tool's declaration")


def test_the_taint_rule_holds_irreversible_calls_of_tainted_runs_for_a_person() -> None:
    policy = load(None)
    assert policy.decide(facts("send", Effect.IRREVERSIBLE, tainted=True)) is Decision.APPROVE
    notify = facts("send", Effect.IRREVERSIBLE, tainted=True, declared=Decision.NOTIFY)
    assert policy.explain(notify).source == "the taint rule"
    deny = facts("send", Effect.IRREVERSIBLE, tainted=True, declared=Decision.DENY)
    assert policy.decide(deny) is Decision.DENY  # never weaker than the declaration
    assert policy.decide(facts("send", Effect.IRREVERSIBLE)) is Decision.AUTO
    assert policy.decide(facts("put", Effect.IDEMPOTENT, tainted=True)) is Decision.AUTO
    # A deployment that trusts a tool says so in a rule, which decides alone.
    trusting = parse('[[rule]]\ntool = "send"\ndecision = "auto"\n')
    assert trusting.decide(facts("send", Effect.IRREVERSIBLE, tainted=True)) is Decision.AUTO


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[rule]]\ndecision = "maybe"\n', 'policy.toml:1: decision \'maybe\' is not one of'),
        ('# c\n\n[[rule]]\ntool = "x"\n', "policy.toml:3: the rule has no decision"),
        ('[[rule]]\ndecision = "auto"\n\n[[rule]]\nkind = "write"\ndecision = "auto"\n',
         "policy.toml:4: kind 'write' is not one of 'read', 'idempotent', 'irreversible'"),
        ('[[rule]]\ndecision = "auto"\ntools = "x"\n', "policy.toml:1: unknown key 'tools'"),
        ('[[rule]]\ndecision = "auto"\ntainted = "yes"\n', "tainted must be true or false"),
        ('[[rule]]\ndecision = "auto"\ntool = 3\n', "tool must be a string"),
        ('[rules]\ndecision = "auto"\n', "unknown section 'rules'"),
        ('[[rule]\ndecision = "auto"\n', "policy.toml:1: not valid TOML"),
        ('rule = 3\n', "'rule' must be an array of tables"),
        ('[[rule]]\ndecision = "auto"\ntags = [1]\n', "tags must be a list of strings"),
        ('[[rule]]\ndecision = "approve"\ntimeout = "soon"\n',
         'policy.toml:1: timeout must be seconds or a duration like "90s"'),
        ('[[rule]]\ndecision = "approve"\ntimeout = -5\n', "must be more than zero seconds"),
        ('[[rule]]\ndecision = "approve"\non_timeout = "escalate"\n',
         "on_timeout 'escalate' is not one of 'reject', 'approve'"),
        ('[[rule]]\ndecision = "auto"\ntimeout = "1h"\n',
         'timeout goes only with decision = "approve"'),
    ],
)  # fmt: skip
def test_a_malformed_policy_is_rejected_with_its_line_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        App(f"sqlite:///{tmp_path / 't.db'}", policy=path)
    assert problem in str(info.value).replace(str(tmp_path) + "/", "")


def test_a_missing_policy_file_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_POLICY", str(tmp_path / "nope.toml"))
    with pytest.raises(PolicyError, match=r"nope\.toml: cannot read it"):
        App(f"sqlite:///{tmp_path / 't.db'}")
    good = tmp_path / "good.toml"
    good.write_text(POLICY)
    monkeypatch.setenv("TETHER_POLICY", str(good))
    assert len(App(f"sqlite:///{tmp_path / 't.db'}").policy.rules) == 3  # type: ignore[attr-defined]
