"""Who talks to the agent, whether they may, and the link between their identities.

`authorize` is the one place every channel's turns are decided (channels_app.turns calls it).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from afhost.db import unique_or_none
from afhost.registry import channel_names
from afhost.types import ChannelIdentity
from linking import rules
from linking.models import (
    Allowlist,
    AllowlistEntry,
    ChannelPolicy,
    Identity,
    LinkChallenge,
    LinkGrant,
    hash_token,
)
from linking.signals import identity_linked

logger = logging.getLogger(__name__)

DENIED_MESSAGE = "You don't have access to this assistant."
LINK_MESSAGE = "Please link your organisation account to continue."


def linking_enabled() -> bool:
    return bool(
        settings.ENTRA_TENANT_ID and settings.ENTRA_CLIENT_ID and settings.ENTRA_CLIENT_SECRET
    )


# API callers are "api" identities (channels_app.auth), whichever API channel they call.
_IDENTITY_CHANNELS = {"responses": "api", "invocations": "api"}


def identity_channels() -> list[str]:
    """The channels identities belong to (`Identity.channel`, so `ChannelPolicy.channel`)."""
    return sorted({_IDENTITY_CHANNELS.get(name, name) for name in channel_names()})


# An identity's last_seen_at is written at most this often, as API callers' are
# (channels_app.turns.TOUCH_EVERY): a person writing many messages a minute is read, not written.
LAST_SEEN_PRECISION = timedelta(seconds=60)


def touch_identity(
    *, identity: ChannelIdentity, display_name: str = "", username: str = ""
) -> Identity:
    """Upsert the identity a message came from and note when it was last seen (to the minute).

    A message from an identity that was unreachable shows it can be reached again. One
    statement for a known identity seen within the minute, as it was: this runs for every
    message.
    """
    now = timezone.now()
    lookup = {"channel": identity.channel, "native_id": identity.native_id}
    known = {
        "display_name": display_name[:200],
        "username": username[:200],
        "attributes": dict(identity.attributes),
        "isolation_key": identity.isolation_key,
        "unreachable_at": None,
        "unreachable_reason": "",
    }
    row, created = Identity.objects.get_or_create(**lookup, defaults={**known, "last_seen_at": now})
    if created:
        row.is_new = True
        return row
    unchanged = all(getattr(row, name) == value for name, value in known.items())
    if unchanged and row.last_seen_at and row.last_seen_at > now - LAST_SEEN_PRECISION:
        return row
    changes = {**known, "last_seen_at": now, "updated_at": now}
    Identity.objects.filter(pk=row.pk).update(**changes)
    for name, value in changes.items():
        setattr(row, name, value)
    return row


@dataclass(frozen=True, slots=True)
class Principal:
    """An Entra ID principal and the claims of it that count, verified by signature."""

    tenant_id: str
    object_id: str
    upn: str = ""
    name: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        """From a verified id token's or access token's claims."""
        upn = str(
            claims.get("preferred_username") or claims.get("upn") or claims.get("email") or ""
        )
        kept: dict[str, Any] = {
            "tid": str(claims.get("tid", "")),
            "oid": str(claims.get("oid", "")),
            "upn": upn,
            "email": str(claims.get("email") or ""),
            "groups": [str(group) for group in claims.get("groups") or []],
            "roles": [str(role) for role in claims.get("roles") or []],
        }
        return cls(
            tenant_id=kept["tid"],
            object_id=kept["oid"],
            upn=upn,
            name=str(claims.get("name") or ""),
            claims=kept,
        )


@dataclass(frozen=True, slots=True)
class Person:
    """An identity and every identity linked to the same principal (itself included)."""

    identity: Identity
    identities: tuple[Identity, ...]
    grant: LinkGrant | None

    @property
    def subject(self) -> rules.Subject:
        return rules.Subject(
            identities=frozenset((each.channel, each.native_id) for each in self.identities),
            claims=None if self.grant is None else self.grant.claims,
        )


def person_of(identity: Identity) -> Person:
    grant = LinkGrant.objects.held_by(identity)
    if grant is None:
        return Person(identity, (identity,), None)
    linked = LinkGrant.objects.active().filter(
        provider=grant.provider, tenant_id=grant.tenant_id, object_id=grant.object_id
    )
    identities = tuple(Identity.objects.filter(grants__in=linked).distinct().order_by("pk"))
    # The freshest claims of the person count (an access token's are newer than a link's).
    grant = linked.order_by("-updated_at").first() or grant
    return Person(identity, identities, grant)


@dataclass(frozen=True, slots=True)
class Allowed:
    """The identity may start a turn; `claims` are the verified claims it was decided on."""

    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkRequired:
    """The person must link an account first; the channel renders a challenge (`begin_link`)."""

    reason: str
    message: str = LINK_MESSAGE


@dataclass(frozen=True, slots=True)
class Denied:
    """Refused. `reason` is for logs and operators, never shown; `message` is bland."""

    reason: str
    message: str = DENIED_MESSAGE


Outcome = Allowed | LinkRequired | Denied


def load_rule(allowlist: Allowlist) -> rules.Rule:
    """The allowlist's entries as one rule (allowlists within it included)."""
    inner: list[rules.Rule] = []
    for entry in allowlist.entries.select_related("member").order_by("pk"):
        if entry.kind == AllowlistEntry.Kind.NATIVE_ID:
            inner.append(rules.NativeId(entry.channel, entry.value))
        elif entry.kind == AllowlistEntry.Kind.CLAIM:
            inner.append(rules.Claim(entry.claim, entry.value))
        else:
            inner.append(load_rule(entry.member))  # type: ignore[arg-type]  # required (clean)
    combine = rules.AllOf if allowlist.combine == Allowlist.Combine.ALL_OF else rules.AnyOf
    return combine(tuple(inner))


def decide(*, person: Person, policy: ChannelPolicy | None) -> Outcome:
    """The decision for a person under a channel's policy, failing closed."""
    blocked = next((each for each in person.identities if each.blocked_at), None)
    if blocked is not None:
        return Denied(f"{blocked} is blocked by {blocked.blocked_by or 'an operator'}")
    claims = {} if person.grant is None else person.grant.claims
    if policy is None:
        return Allowed(claims)
    rule = None if policy.allowlist is None else load_rule(policy.allowlist)
    if (policy.require_link or (rule is not None and rules.needs_claims(rule))) and not (
        linking_enabled()
    ):
        return Denied("the policy needs linked accounts, but linking is not configured")
    linked = person.grant is not None
    decision = rules.Decision.ALLOW if rule is None else rule.decide(person.subject)
    name = "" if policy.allowlist is None else policy.allowlist.name
    if decision is rules.Decision.DENY:
        return Denied(f"not allowed by allowlist {name!r}")
    if decision is rules.Decision.ALLOW:
        if policy.require_link and not linked:
            return LinkRequired("the channel requires a linked account")
        return Allowed(claims)
    if not linked:
        return LinkRequired(f"allowlist {name!r} needs a linked account")
    return Denied(f"allowlist {name!r} could not decide on the linked claims")


# `authorize`'s policy when the caller has not read it.
UNREAD = object()


def authorize(*, identity: Identity, policy: ChannelPolicy | None | object = UNREAD) -> Outcome:
    """Whether `identity` may start a turn: the one place every channel's turns are decided.

    Decided per message, from the rows (a revoked link or a block counts at once): `policy` is
    the channel's, as the caller read it for this message (`policy_for`), or read here. A
    refusal is counted on the identity, with its reason, and logged.
    """
    if not (policy is None or isinstance(policy, ChannelPolicy)):  # UNREAD
        policy = policy_for(identity.channel)
    outcome = decide(person=person_of(identity), policy=policy)
    if not isinstance(outcome, Allowed):
        label = "link required" if isinstance(outcome, LinkRequired) else "denied"
        identity.record_refusal(f"{label}: {outcome.reason}")
        logger.info("turn of %s refused (%s): %s", identity, label, outcome.reason)
    return outcome


def policy_for(channel: str) -> ChannelPolicy | None:
    return unique_or_none(ChannelPolicy.objects.filter(channel=channel).select_related("allowlist"))


# --- the link ceremony -------------------------------------------------------------------------


class LinkRefused(Exception):
    """The ceremony cannot link; the message is safe to show the person."""


def begin_link(*, identity: Identity, notify: Mapping[str, Any]) -> str:
    """A new one-time link for `identity` to prove who they are; the channel confirms at `notify`.

    Returns the URL to send them. Only its digest is stored; the identity's earlier open links
    stop working.
    """
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    # The newest link alone works: one open challenge per identity, however often it asks.
    LinkChallenge.objects.filter(
        identity=identity, redeemed_at__isnull=True, expires_at__gt=now
    ).update(expires_at=now, updated_at=now)
    LinkChallenge.objects.create(
        token_hash=hash_token(token),
        identity=identity,
        notify=dict(notify),
        expires_at=now + timedelta(minutes=settings.LINK_CHALLENGE_MINUTES),
    )
    return settings.AFHOST_PUBLIC_URL + reverse("linking:open", args=[token])


def claim_challenge(*, token: str, session_key: str) -> LinkChallenge:
    """The open challenge behind `token`, claimed for this browser session.

    The first session to open a link owns it; the link then works in no other browser.
    """
    now = timezone.now()
    open_challenges = LinkChallenge.objects.filter(
        token_hash=hash_token(token), redeemed_at__isnull=True, expires_at__gt=now
    )
    session_hash = hash_token(session_key)
    open_challenges.filter(session_hash="").update(session_hash=session_hash, updated_at=now)
    challenge = open_challenges.filter(session_hash=session_hash).select_related("identity").first()
    if challenge is None:
        raise LinkRefused(
            "This link has expired, was already used, or was opened in another browser. "
            "Ask the bot for a new one with /link."
        )
    return challenge


def open_challenge(*, pk: int, session_key: str) -> LinkChallenge:
    """The challenge this browser session claimed, while it is still open."""
    challenge = (
        LinkChallenge.objects.filter(
            pk=pk,
            session_hash=hash_token(session_key),
            redeemed_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .select_related("identity")
        .first()
    )
    if challenge is None:
        raise LinkRefused(
            "This link has expired or was already used. Ask for a new one with /link."
        )
    return challenge


def set_relink(*, challenge: LinkChallenge, relink: bool) -> None:
    """Whether redeeming the (still open) challenge replaces the identity's current link."""
    LinkChallenge.objects.filter(pk=challenge.pk, redeemed_at__isnull=True).update(
        relink=relink, updated_at=timezone.now()
    )
    challenge.relink = relink


def redeem_challenge(*, pk: int, session_key: str, principal: Principal) -> LinkGrant:
    """Link the challenge's identity to `principal`, once; refuse a second principal for an
    identity already linked unless the person asked to re-link."""
    if principal.tenant_id.lower() != settings.ENTRA_TENANT_ID.lower() or not principal.object_id:
        raise LinkRefused("That account belongs to another organisation.")
    now = timezone.now()
    with transaction.atomic():
        redeemed = LinkChallenge.objects.filter(
            pk=pk,
            session_hash=hash_token(session_key),
            redeemed_at__isnull=True,
            expires_at__gt=now,
        ).update(redeemed_at=now, updated_at=now)
        if not redeemed:
            raise LinkRefused("This link has expired or was already used. Ask for a new one.")
        challenge = LinkChallenge.objects.select_related("identity").get(pk=pk)
        current = LinkGrant.objects.held_by(challenge.identity)
        refused = (
            current is not None
            and current.object_id != principal.object_id
            and not challenge.relink
        )
        if refused:  # committed with the redemption: the challenge is used up, and says why
            LinkChallenge.objects.filter(pk=pk).update(failure="already linked to another account")
        else:
            grant = _link(challenge=challenge, current=current, principal=principal)
    if refused:
        raise LinkRefused(
            f"This account is already linked to {(current and current.upn) or 'another account'}. "
            "To replace that link, ask for a new link and choose to re-link."
        )
    return grant


def _link(
    *, challenge: LinkChallenge, current: LinkGrant | None, principal: Principal
) -> LinkGrant:
    if current is not None and current.object_id != principal.object_id:
        current.revoke(by="the person, re-linking")
        current = None
    if current is None:
        grant = LinkGrant.objects.create(
            identity=challenge.identity,
            tenant_id=principal.tenant_id,
            object_id=principal.object_id,
            upn=principal.upn,
            name=principal.name,
            claims=dict(principal.claims),
            source=LinkGrant.Source.CEREMONY,
        )
    else:  # the same principal again: fresher claims
        grant = current
        LinkGrant.objects.filter(pk=grant.pk).update(
            upn=principal.upn,
            name=principal.name,
            claims=dict(principal.claims),
            updated_at=timezone.now(),
        )
    LinkChallenge.objects.filter(pk=challenge.pk).update(grant=grant)
    transaction.on_commit(lambda: identity_linked.send(LinkGrant, grant=grant, challenge=challenge))
    return grant


def unlink(*, identity: Identity, by: str) -> LinkGrant | None:
    """Revoke the identity's link, if it has one; the next message is decided without it."""
    grant = LinkGrant.objects.held_by(identity)
    if grant is not None and grant.revoke(by=by):
        return grant
    return None


def record_token_principal(*, identity: Identity, principal: Principal) -> LinkGrant:
    """Keep the link of an identity that authenticates with an Entra access token (an API
    caller) to its principal, with the token's claims, so it is one person with that principal's
    other linked identities."""
    grant = LinkGrant.objects.held_by(identity)
    if grant is not None and grant.object_id == principal.object_id:
        if grant.claims != dict(principal.claims) or grant.upn != principal.upn:
            grant.claims, grant.upn, grant.name = (
                dict(principal.claims),
                principal.upn,
                principal.name,
            )
            grant.save(update_fields=["claims", "upn", "name", "updated_at"])
        return grant
    if grant is not None:
        grant.revoke(by="a token of another principal")
    identity.is_new = False  # it has a link now
    return LinkGrant.objects.create(
        identity=identity,
        tenant_id=principal.tenant_id,
        object_id=principal.object_id,
        upn=principal.upn,
        name=principal.name,
        claims=dict(principal.claims),
        source=LinkGrant.Source.TOKEN,
    )
