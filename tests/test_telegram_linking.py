"""Telegram and linking: /link, /whoami, /unlink, and turns that the channel policy refuses.

Updates are posted to the real webhook and answered in process; the fake Bot API records what
Telegram would have received.
"""

import re

import pytest

from afhost.models import Run
from channels_app.telegram.models import TelegramUpdate
from linking import services
from linking.models import (
    Allowlist,
    AllowlistEntry,
    ChannelPolicy,
    Identity,
    LinkChallenge,
    LinkGrant,
)

PRIVATE = 1111111
GROUP = -1001234567890
TENANT = "11111111-2222-3333-4444-555555555555"


def _last(api, chat_id=PRIVATE):
    return api.sent_texts(chat_id)[-1]


@pytest.fixture
def command(telegram_update):
    """An update whose text is a bot command, with its entity (private chat by default)."""

    def make(text, fixture="start_command", **fields):
        payload = telegram_update(fixture, text=text, **fields)
        length = len(text.split()[0])
        payload["message"]["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return payload

    return make


@pytest.fixture
def grant_factory(db):
    def make(native_id=str(PRIVATE), *, channel="telegram", oid="oid-alice", **claims):
        identity, _ = Identity.objects.get_or_create(
            channel=channel,
            native_id=native_id,
            defaults={"isolation_key": f"{channel}:{native_id}"},
        )
        return LinkGrant.objects.create(
            identity=identity,
            tenant_id=TENANT,
            object_id=oid,
            upn="alice@contoso.example",
            name="Alice Tester",
            claims={"tid": TENANT, "oid": oid, "upn": "alice@contoso.example", **claims},
            source=LinkGrant.Source.CEREMONY,
        )

    return make


@pytest.fixture
def claim_policy(db):
    """Telegram open only to members of group g-staff, which needs a linked account."""
    staff = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(
        allowlist=staff, kind=AllowlistEntry.Kind.CLAIM, claim="groups", value="g-staff"
    )
    return ChannelPolicy.objects.create(channel="telegram", allowlist=staff)


def test_link_says_so_when_linking_is_off(telegram_inbox, telegram_api, telegram_update, command):
    telegram_inbox.deliver(command("/link"))

    assert _last(telegram_api) == "Account linking is not configured on this bot."
    assert not LinkChallenge.objects.exists()


def test_link_in_a_private_chat_sends_a_one_time_link(
    entra, telegram_inbox, telegram_api, telegram_update, command, settings
):
    # when
    telegram_inbox.deliver(command("/link"))

    # then
    text = _last(telegram_api)
    [url] = re.findall(r'href="([^"]+)"', text)
    assert url.startswith(f"{settings.AFHOST_PUBLIC_URL}/link/")
    assert "works once, in one browser, for 10 minutes" in text
    challenge = LinkChallenge.objects.get()
    assert challenge.identity.native_id == str(PRIVATE)
    assert challenge.notify == {"chat_id": PRIVATE}
    assert challenge.token_hash not in url  # only the digest is stored
    [call] = telegram_api.calls_to("sendMessage")
    assert call.params["link_preview_options"] == {"is_disabled": True}  # a preview would use it


def test_a_new_link_replaces_the_open_one(entra, telegram_inbox, telegram_update, command):
    telegram_inbox.deliver(command("/link"), command("/link"))

    first, second = LinkChallenge.objects.order_by("pk")
    assert not first.is_open
    assert second.is_open


def test_link_in_a_group_points_to_a_private_chat_and_posts_no_link(
    entra, telegram_inbox, telegram_api, telegram_update, command
):
    telegram_inbox.deliver(command("/link@test_bot", "group_mention"))

    assert _last(telegram_api, GROUP) == (
        "To link your organisation account, open a private chat with me: "
        "https://t.me/test_bot?start=link"
    )
    assert not LinkChallenge.objects.exists()


def test_the_private_chat_deep_link_starts_the_link(
    entra, telegram_inbox, telegram_api, telegram_update, command
):
    telegram_inbox.deliver(command("/start link"))

    assert "Link your organisation account" in _last(telegram_api)
    assert LinkChallenge.objects.count() == 1


def test_a_required_link_refuses_the_turn_and_says_how_to_link(
    entra, telegram_inbox, telegram_api, telegram_update
):
    # given
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    # when
    telegram_inbox.deliver(telegram_update("private_text", text="hello"))

    # then
    assert _last(telegram_api) == (
        "Please link your organisation account to continue. Send /link here."
    )
    assert not Run.objects.exists()
    identity = Identity.objects.get(native_id=str(PRIVATE))
    assert (identity.refusals, identity.last_refusal) == (
        1,
        "link required: the channel requires a linked account",
    )
    update = TelegramUpdate.objects.get()
    assert (update.status, update.last_error) == (
        "processed",
        "refused: the channel requires a linked account",
    )


def test_a_refusal_in_a_group_is_bland_and_sends_no_link(
    entra, telegram_inbox, telegram_api, telegram_update
):
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    telegram_inbox.deliver(telegram_update("group_mention"))

    assert _last(telegram_api, GROUP) == (
        "Please link your organisation account to continue. Send /link in a private chat with me."
    )
    assert not LinkChallenge.objects.exists()


def test_a_native_id_allowlist_lets_its_users_in_and_denies_others_blandly(
    telegram_inbox, telegram_api, telegram_update
):
    # given
    friends = Allowlist.objects.create(name="friends")
    AllowlistEntry.objects.create(
        allowlist=friends, kind=AllowlistEntry.Kind.NATIVE_ID, channel="telegram", value="42"
    )
    ChannelPolicy.objects.create(channel="telegram", allowlist=friends)
    stranger = telegram_update("private_text", text="hello")
    friend = telegram_update(
        "private_text",
        update_id=stranger["update_id"] + 1,
        text="hi",
        **{"from": {"id": 42, "is_bot": False, "first_name": "Friend"}},
    )
    friend["message"]["chat"] = {"id": 42, "type": "private", "first_name": "Friend"}

    # when
    telegram_inbox.deliver(stranger, friend)

    # then
    assert _last(telegram_api) == "You don't have access to this assistant."
    assert "hi" in _last(telegram_api, 42)
    assert Run.objects.count() == 1
    refused = Identity.objects.get(native_id=str(PRIVATE))
    assert refused.last_refusal == "denied: not allowed by allowlist 'friends'"


def test_a_claim_allowlist_asks_to_link_then_follows_the_link(
    entra, claim_policy, grant_factory, telegram_inbox, telegram_api, telegram_update
):
    # given: not linked yet
    telegram_inbox.deliver(telegram_update("private_text", text="first"))
    assert "Send /link here." in _last(telegram_api)

    # when: linked, with the group's claim
    grant_factory(groups=["g-staff"])
    telegram_inbox.deliver(telegram_update("private_text", update_id=2, text="second"))

    # then
    assert "second" in _last(telegram_api)
    assert Run.objects.count() == 1


def test_unlink_and_an_operators_revocation_take_effect_on_the_next_message(
    entra, claim_policy, grant_factory, telegram_inbox, telegram_api, telegram_update, command
):
    # given
    grant = grant_factory(groups=["g-staff"])

    # when: the person unlinks
    telegram_inbox.deliver(command("/unlink"))
    telegram_inbox.deliver(telegram_update("private_text", update_id=2, text="after unlink"))

    # then
    assert telegram_api.sent_texts(PRIVATE)[-2] == (
        "Unlinked: you are no longer known here as alice@contoso.example."
    )
    assert "Send /link here." in _last(telegram_api)
    grant.refresh_from_db()
    assert grant.revoked_by == "the person, with /unlink"

    # when: linked again, then revoked by an operator
    again = grant_factory(groups=["g-staff"])
    telegram_inbox.deliver(telegram_update("private_text", update_id=3, text="linked again"))
    assert "linked again" in _last(telegram_api)
    again.revoke(by="operator admin")
    telegram_inbox.deliver(telegram_update("private_text", update_id=4, text="after revoke"))

    # then
    assert "Send /link here." in _last(telegram_api)


def test_a_linked_member_outside_the_group_is_denied(
    entra, claim_policy, grant_factory, telegram_inbox, telegram_api, telegram_update
):
    grant_factory(groups=["g-other"])

    telegram_inbox.deliver(telegram_update("private_text", text="hello"))

    assert _last(telegram_api) == "You don't have access to this assistant."


def test_a_blocked_identity_is_denied_but_may_still_ask_who_it_is(
    telegram_inbox, telegram_api, telegram_update, command
):
    # given
    telegram_inbox.deliver(telegram_update("private_text", text="hello"))
    Identity.objects.get(native_id=str(PRIVATE)).block(by="admin")

    # when
    telegram_inbox.deliver(
        telegram_update("private_text", update_id=2, text="again"),
        command("/whoami", update_id=3),
    )

    # then
    texts = telegram_api.sent_texts(PRIVATE)
    assert texts[-2] == "You don't have access to this assistant."
    assert texts[-1].startswith("You are ")
    assert Run.objects.count() == 1


def test_whoami_shows_the_link_and_the_claims_that_count_in_private(
    entra, grant_factory, telegram_inbox, telegram_api, telegram_update, command
):
    # given: the same person also calls the API with an access token
    grant_factory(groups=["g-staff"], roles=["Agent.User"])
    grant_factory("entra.oid-alice", channel="api", groups=["g-staff"], roles=["Agent.User"])

    # when
    telegram_inbox.deliver(command("/whoami"))

    # then
    text = _last(telegram_api)
    assert "Linked as alice@contoso.example (Alice Tester)." in text
    assert f"Tenant: {TENANT}" in text
    assert "Groups: g-staff" in text
    assert "Roles: Agent.User" in text
    assert "Also you: api:entra.oid-alice" in text


def test_whoami_in_a_group_keeps_the_details_private(
    entra, grant_factory, telegram_inbox, telegram_api, telegram_update, command
):
    grant_factory(groups=["g-staff"])

    telegram_inbox.deliver(command("/whoami@test_bot", "group_mention"))

    text = _last(telegram_api, GROUP)
    assert "ask me /whoami privately" in text
    assert "alice@contoso.example" not in text
    assert "g-staff" not in text


def test_a_link_is_confirmed_in_the_chat_that_asked_for_it(
    entra,
    telegram_inbox,
    telegram_api,
    telegram_update,
    command,
    django_capture_on_commit_callbacks,
):
    # given
    telegram_inbox.deliver(command("/link"))
    challenge = LinkChallenge.objects.get()
    LinkChallenge.objects.filter(pk=challenge.pk).update(session_hash=services.hash_token("s"))

    # when
    with django_capture_on_commit_callbacks(execute=True):
        services.redeem_challenge(
            pk=challenge.pk,
            session_key="s",
            principal=services.Principal.from_claims(
                {"tid": TENANT, "oid": "oid-alice", "preferred_username": "alice@contoso.example"}
            ),
        )
    telegram_inbox.process()

    # then
    assert _last(telegram_api) == (
        "Linked: I know you now as alice@contoso.example. "
        "/whoami shows what counts; /unlink removes it."
    )


def test_the_channel_policy_sets_how_the_bot_listens_in_groups(
    telegram_inbox, telegram_api, telegram_update, settings
):
    # given: the environment says mention only; the policy says every message
    settings.TELEGRAM_ACCEPT_IN_GROUP = "mention_only"
    ChannelPolicy.objects.create(channel="telegram", accept_in_group="all")

    # when
    telegram_inbox.deliver(telegram_update("group_plain"))

    # then
    assert telegram_api.sent_texts(GROUP)
