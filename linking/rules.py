"""Allowlist rules, decided without the database.

Each rule answers ALLOW, DENY or ABSTAIN. A rule on verified claims abstains while the person has
no linked account (no claims yet), so a composition that depends on claims asks them to link,
never silently allows or denies. Any-of and all-of combine answers as three-valued logic: any-of
allows when one entry allows, all-of denies when one entry denies, and an undecided entry keeps
the answer open (ABSTAIN) where it could change it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks: every (channel, native id) of the person, and their verified claims (None
    while they have no linked account)."""

    identities: frozenset[tuple[str, str]]
    claims: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NativeId:
    channel: str
    native_id: str

    def decide(self, subject: Subject) -> Decision:
        found = (self.channel, self.native_id) in subject.identities
        return Decision.ALLOW if found else Decision.DENY


def claim_values(claims: Mapping[str, Any], name: str) -> set[str]:
    """The values a verified claim has, compared case-insensitively."""
    if name == "email_domain":
        addresses = (claims.get("email") or "", claims.get("upn") or "")
        return {address.rpartition("@")[2].lower() for address in addresses if "@" in address}
    value = claims.get(name)
    values = value if isinstance(value, list | tuple) else [value]
    return {str(item).lower() for item in values if item not in (None, "")}


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    value: str

    def decide(self, subject: Subject) -> Decision:
        if subject.claims is None:
            return Decision.ABSTAIN
        found = self.value.lower() in claim_values(subject.claims, self.name)
        return Decision.ALLOW if found else Decision.DENY


@dataclass(frozen=True, slots=True)
class AnyOf:
    rules: tuple[Rule, ...]

    def decide(self, subject: Subject) -> Decision:
        decisions = {rule.decide(subject) for rule in self.rules}
        if Decision.ALLOW in decisions:
            return Decision.ALLOW
        return Decision.ABSTAIN if Decision.ABSTAIN in decisions else Decision.DENY


@dataclass(frozen=True, slots=True)
class AllOf:
    rules: tuple[Rule, ...]

    def decide(self, subject: Subject) -> Decision:
        decisions = {rule.decide(subject) for rule in self.rules}
        if Decision.DENY in decisions:
            return Decision.DENY
        return Decision.ABSTAIN if Decision.ABSTAIN in decisions else Decision.ALLOW


Rule = NativeId | Claim | AnyOf | AllOf


def needs_claims(rule: Rule) -> bool:
    """Whether the rule can depend on verified claims (so on a linked account)."""
    if isinstance(rule, Claim):
        return True
    if isinstance(rule, AnyOf | AllOf):
        return any(needs_claims(inner) for inner in rule.rules)
    return False
