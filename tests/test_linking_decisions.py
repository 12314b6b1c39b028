"""Authorization decisions: every ALLOW / DENY / ABSTAIN combination, and how a channel policy
turns a decision into Allowed, LinkRequired or Denied (failing closed)."""

import io
import itertools
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from afhost.types import ChannelIdentity
from linking import rules, services
from linking.models import (
    Allowlist,
    AllowlistEntry,
    ChannelPolicy,
    Identity,
    LinkChallenge,
    LinkGrant,
)
from linking.rules import Decision

A, D, X = Decision.ALLOW, Decision.DENY, Decision.ABSTAIN
UNLINKED = rules.Subject(identities=frozenset({("telegram", "1")}))
# Rules that answer each decision for UNLINKED.
RULE = {
    A: rules.NativeId("telegram", "1"),
    D: rules.NativeId("telegram", "2"),
    X: rules.Claim("groups", "g-staff"),
}


def _any_of(decisions):
    if A in decisions:
        return A
    return X if X in decisions else D


def _all_of(decisions):
    if D in decisions:
        return D
    return X if X in decisions else A


@pytest.mark.parametrize("decisions", list(itertools.product([A, D, X], repeat=2)))
def test_any_of_allows_on_one_allow_and_stays_open_on_an_abstention(decisions):
    rule = rules.AnyOf(tuple(RULE[each] for each in decisions))

    assert rule.decide(UNLINKED) is _any_of(decisions)


@pytest.mark.parametrize("decisions", list(itertools.product([A, D, X], repeat=2)))
def test_all_of_denies_on_one_deny_and_stays_open_on_an_abstention(decisions):
    rule = rules.AllOf(tuple(RULE[each] for each in decisions))

    assert rule.decide(UNLINKED) is _all_of(decisions)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (rules.AnyOf(()), D),  # nobody is on an empty any-of
        (rules.AllOf(()), A),
        (rules.AnyOf((rules.AllOf((RULE[A], RULE[X])), RULE[D])), X),
        (rules.AllOf((rules.AnyOf((RULE[A], RULE[X])), RULE[A])), A),
    ],
)
def test_nested_compositions(rule, expected):
    assert rule.decide(UNLINKED) is expected


@pytest.mark.parametrize(
    ("claim", "value", "claims", "expected"),
    [
        ("groups", "G-1", {"groups": ["g-1", "g-2"]}, A),
        ("groups", "g-3", {"groups": ["g-1"]}, D),
        ("groups", "g-1", {}, D),
        ("roles", "Agent.User", {"roles": ["Agent.User"]}, A),
        ("tid", "T", {"tid": "t"}, A),
        ("email_domain", "contoso.com", {"upn": "alice@Contoso.com"}, A),
        ("email_domain", "contoso.com", {"email": "alice@fabrikam.com"}, D),
        ("upn", "alice@contoso.com", {"upn": "ALICE@contoso.com"}, A),
    ],
)
def test_claims_match_case_insensitively_once_there_are_claims(claim, value, claims, expected):
    subject = rules.Subject(identities=frozenset(), claims=claims)

    assert rules.Claim(claim, value).decide(subject) is expected


def test_a_native_id_matches_any_identity_of_the_person():
    person = rules.Subject(identities=frozenset({("api", "entra.o1"), ("telegram", "42")}))

    assert rules.NativeId("telegram", "42").decide(person) is A


# --- outcomes -----------------------------------------------------------------------------------


@pytest.fixture
def person_factory(db):
    def make(*, linked=False, claims=None, blocked=False):
        identity = Identity.objects.create(
            channel="telegram", native_id="1", isolation_key="telegram:1"
        )
        if blocked:
            identity.block(by="admin")
        if linked:
            LinkGrant.objects.create(
                identity=identity,
                tenant_id="t",
                object_id="o",
                claims=claims or {"tid": "t", "oid": "o"},
                source=LinkGrant.Source.CEREMONY,
            )
        return services.person_of(identity)

    return make


def _policy(*, require_link=False, entries=()):
    allowlist = None
    if entries:
        allowlist = Allowlist.objects.create(name="list")
        for kind, value in entries:
            if kind == "native":
                AllowlistEntry.objects.create(
                    allowlist=allowlist, kind="native_id", channel="telegram", value=value
                )
            else:
                AllowlistEntry.objects.create(
                    allowlist=allowlist, kind="claim", claim="groups", value=value
                )
    return ChannelPolicy.objects.create(
        channel="telegram", require_link=require_link, allowlist=allowlist
    )


@pytest.mark.parametrize(
    ("require_link", "entries", "linked", "claims", "expected"),
    [
        # open channel
        (False, (), False, None, services.Allowed),
        # link required on its own
        (True, (), False, None, services.LinkRequired),
        (True, (), True, None, services.Allowed),
        # native ids: decided without a link
        (False, [("native", "1")], False, None, services.Allowed),
        (False, [("native", "2")], False, None, services.Denied),
        (True, [("native", "1")], False, None, services.LinkRequired),
        (True, [("native", "2")], True, None, services.Denied),
        # claims: link first, then decided on the claims
        (False, [("claim", "g")], False, None, services.LinkRequired),
        (False, [("claim", "g")], True, {"groups": ["g"]}, services.Allowed),
        (False, [("claim", "g")], True, {"groups": ["h"]}, services.Denied),
        # native id or claim
        (False, [("native", "1"), ("claim", "g")], False, None, services.Allowed),
        (False, [("native", "2"), ("claim", "g")], False, None, services.LinkRequired),
        (False, [("native", "2"), ("claim", "g")], True, {"groups": []}, services.Denied),
    ],
)
def test_a_policy_turns_decisions_into_outcomes(
    entra, person_factory, require_link, entries, linked, claims, expected
):
    person = person_factory(linked=linked, claims=claims)
    policy = _policy(require_link=require_link, entries=entries)

    assert type(services.decide(person=person, policy=policy)) is expected


def test_all_of_a_native_id_and_a_claim_denies_a_stranger_without_asking_to_link(
    entra, person_factory
):
    allowlist = Allowlist.objects.create(name="both", combine=Allowlist.Combine.ALL_OF)
    AllowlistEntry.objects.create(
        allowlist=allowlist, kind="native_id", channel="telegram", value="2"
    )
    AllowlistEntry.objects.create(allowlist=allowlist, kind="claim", claim="groups", value="g")
    policy = ChannelPolicy.objects.create(channel="telegram", allowlist=allowlist)

    outcome = services.decide(person=person_factory(), policy=policy)

    assert outcome == services.Denied("not allowed by allowlist 'both'")


def test_a_blocked_person_is_denied_whatever_the_policy(person_factory):
    outcome = services.decide(person=person_factory(blocked=True), policy=None)

    assert isinstance(outcome, services.Denied)
    assert "blocked by admin" in outcome.reason


@pytest.mark.parametrize(
    "policy", [{"require_link": True}, {"entries": [("native", "2"), ("claim", "g")]}]
)
def test_claims_and_required_links_fail_closed_while_linking_is_off(person_factory, policy):
    # no `entra` fixture: linking is not configured
    outcome = services.decide(person=person_factory(), policy=_policy(**policy))

    assert outcome == services.Denied(
        "the policy needs linked accounts, but linking is not configured"
    )


def test_a_refusal_is_counted_on_the_identity_with_its_reason(entra, db):
    identity = Identity.objects.create(channel="telegram", native_id="1", isolation_key="t:1")
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    outcome = services.authorize(identity=identity)

    identity.refresh_from_db()
    assert isinstance(outcome, services.LinkRequired)
    assert identity.refusals == 1
    assert identity.last_refusal == "link required: the channel requires a linked account"
    assert identity.last_refused_at is not None


def test_link_identity_prints_a_link_an_operator_can_send(entra, settings, db):
    out, err = io.StringIO(), io.StringIO()

    call_command("link_identity", "telegram", "42", stdout=out, stderr=err)

    url = out.getvalue().strip()
    assert url.startswith(f"{settings.AFHOST_PUBLIC_URL}/link/")
    challenge = LinkChallenge.objects.get()
    assert (challenge.identity.channel, challenge.identity.native_id) == ("telegram", "42")
    assert "works once, in one browser, for 10 minutes" in err.getvalue()


def test_link_identity_refuses_while_linking_is_off(db):
    with pytest.raises(CommandError, match="Linking is off"):
        call_command("link_identity", "telegram", "42", stdout=io.StringIO())


def _touch(**profile):
    who = ChannelIdentity(channel="telegram", native_id="42")
    return services.touch_identity(identity=who, **{"display_name": "Ada", **profile})


def test_an_identity_writing_often_is_written_once_a_minute(db, django_assert_num_queries):
    # given
    first = _touch()

    # when
    with django_assert_num_queries(1):
        again = _touch()
    Identity.objects.update(last_seen_at=first.last_seen_at - timedelta(seconds=61))
    later = _touch()

    # then
    assert again.last_seen_at == first.last_seen_at
    assert later.last_seen_at > first.last_seen_at
    assert Identity.objects.get().last_seen_at == later.last_seen_at


def test_a_new_name_or_reachability_is_written_at_once(db):
    # given
    first = _touch()
    Identity.objects.update(unreachable_at=first.last_seen_at, unreachable_reason="blocked")

    # when
    renamed = _touch(display_name="Ada L.")

    # then
    stored = Identity.objects.get()
    assert (stored.display_name, stored.unreachable_at, stored.unreachable_reason) == (
        "Ada L.",
        None,
        "",
    )
    assert renamed.display_name == "Ada L."
