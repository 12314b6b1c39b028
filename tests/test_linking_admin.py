from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse
from django.utils import timezone

from linking.models import (
    Allowlist,
    AllowlistEntry,
    ChannelPolicy,
    Identity,
    LinkChallenge,
    LinkGrant,
)


@pytest.fixture
def identity_factory(db):
    def make(channel: str = "telegram", native_id: str = "42", **fields) -> Identity:
        fields.setdefault("isolation_key", f"{channel}:{native_id}")
        return Identity.objects.create(channel=channel, native_id=native_id, **fields)

    return make


@pytest.fixture
def grant_factory(db):
    def make(identity: Identity, **fields) -> LinkGrant:
        fields.setdefault("tenant_id", "11111111-2222-3333-4444-555555555555")
        fields.setdefault("object_id", "oid-ada")
        fields.setdefault("upn", "ada@example.com")
        fields.setdefault("source", LinkGrant.Source.CEREMONY)
        return LinkGrant.objects.create(identity=identity, **fields)

    return make


def _act(admin_client, model: str, action: str, *rows):
    return admin_client.post(
        reverse(f"admin:linking_{model}_changelist"),
        {"action": action, "_selected_action": [row.pk for row in rows]},
    )


def _entries(*entries: dict, initial: int = 0) -> dict:
    data = {
        "entries-TOTAL_FORMS": str(len(entries)),
        "entries-INITIAL_FORMS": str(initial),
        "entries-MIN_NUM_FORMS": "0",
        "entries-MAX_NUM_FORMS": "1000",
    }
    for index, entry in enumerate(entries):
        data.update({f"entries-{index}-{name}": value for name, value in entry.items()})
    return data


def test_the_identity_changelist_shows_links_and_refusals(
    admin_client, identity_factory, grant_factory
):
    # given
    linked = identity_factory(native_id="1", display_name="Ada <Lovelace>")
    grant_factory(linked)
    identity_factory(
        native_id="2",
        display_name="Bob",
        refusals=3,
        last_refused_at=timezone.now(),
        last_refusal="denied: not allowed",
    )

    # when
    page = admin_client.get(reverse("admin:linking_identity_changelist"))
    only_linked = admin_client.get(reverse("admin:linking_identity_changelist") + "?linked=yes")
    only_refused = admin_client.get(reverse("admin:linking_identity_changelist") + "?refused=yes")

    # then
    assert page.status_code == 200
    assert b"Linked as" in page.content
    assert b"Last refused at" in page.content
    assert b"ada@example.com" in page.content
    assert b"Ada &lt;Lovelace&gt;" in page.content
    assert b"Ada <Lovelace>" not in page.content
    assert [row.pk for row in only_linked.context["cl"].result_list] == [linked.pk]
    assert [row.native_id for row in only_refused.context["cl"].result_list] == ["2"]


def test_the_identity_page_shows_its_grants_and_the_same_person(
    admin_client, identity_factory, grant_factory
):
    # given
    telegram = identity_factory(native_id="1", last_refusal="link required: channel requires it")
    api = identity_factory(channel="api", native_id="user.ada")
    grant_factory(telegram)
    grant_factory(api, source=LinkGrant.Source.TOKEN)

    # when
    page = admin_client.get(reverse("admin:linking_identity_change", args=[telegram.pk]))

    # then
    assert page.status_code == 200
    assert b"ada@example.com" in page.content
    assert b"link required: channel requires it" in page.content
    assert reverse("admin:linking_identity_change", args=[api.pk]).encode() in page.content
    assert b'name="_save"' not in page.content


def test_the_block_action_blocks_and_records_the_operator(
    admin_client, admin_user, identity_factory
):
    # given
    identity = identity_factory()

    # when
    response = _act(admin_client, "identity", "block_selected", identity)

    # then
    assert response.status_code == 302
    identity.refresh_from_db()
    assert identity.blocked_at is not None
    assert identity.blocked_by == admin_user.get_username()
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id, entry.action_flag) == (
        admin_user,
        str(identity.pk),
        CHANGE,
    )
    assert entry.get_change_message() == "Blocked"


def test_the_unblock_action_unblocks(admin_client, identity_factory):
    # given
    identity = identity_factory()
    identity.block(by="someone")

    # when
    response = _act(admin_client, "identity", "unblock_selected", identity)

    # then
    assert response.status_code == 302
    identity.refresh_from_db()
    assert (identity.blocked_at, identity.blocked_by) == (None, "")
    assert LogEntry.objects.get().get_change_message() == "Unblocked"


def test_the_revoke_links_action_revokes_the_active_grant(
    admin_client, admin_user, identity_factory, grant_factory
):
    # given
    identity = identity_factory()
    grant = grant_factory(identity)
    other = grant_factory(identity_factory(native_id="43"), object_id="oid-bob")

    # when
    response = _act(admin_client, "identity", "revoke_links", identity)

    # then
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert grant.revoked_by == f"operator {admin_user.get_username()}"
    assert LinkGrant.objects.get(pk=other.pk).revoked_at is None
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id) == (admin_user, str(identity.pk))
    assert entry.get_change_message() == "Revoked link to ada@example.com"


def test_the_grant_revoke_action_revokes_selected_grants(
    admin_client, admin_user, identity_factory, grant_factory
):
    # given
    grant = grant_factory(identity_factory())

    # when
    response = _act(admin_client, "linkgrant", "revoke_selected", grant)

    # then
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_by == f"operator {admin_user.get_username()}"
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id) == (admin_user, str(grant.pk))


def test_the_allowlist_inline_rejects_an_entry_missing_its_value(admin_client, db):
    # when
    page = admin_client.post(
        reverse("admin:linking_allowlist_add"),
        {
            "name": "staff",
            "combine": "any_of",
            **_entries({"kind": "native_id", "channel": "telegram", "value": ""}),
        },
    )

    # then
    assert page.status_code == 200
    errors = page.context["inline_admin_formsets"][0].formset.errors
    assert errors == [{"value": ["Required for this kind of entry."]}]
    assert Allowlist.objects.exists() is False


def test_the_allowlist_inline_rejects_an_entry_without_a_kind(admin_client, db):
    # when
    page = admin_client.post(
        reverse("admin:linking_allowlist_add"),
        {"name": "staff", "combine": "any_of", **_entries({"kind": "", "value": "42"})},
    )

    # then
    assert page.status_code == 200
    errors = page.context["inline_admin_formsets"][0].formset.errors
    assert errors == [{"kind": ["This field is required."]}]
    assert Allowlist.objects.exists() is False


def test_the_allowlist_inline_rejects_a_cycle(admin_client, db):
    # given
    outer = Allowlist.objects.create(name="outer")
    inner = Allowlist.objects.create(name="inner")
    AllowlistEntry.objects.create(allowlist=outer, kind="allowlist", member=inner)

    # when
    page = admin_client.post(
        reverse("admin:linking_allowlist_change", args=[inner.pk]),
        {
            "name": "inner",
            "combine": "any_of",
            **_entries({"kind": "allowlist", "member": str(outer.pk)}),
        },
    )

    # then
    assert page.status_code == 200
    errors = page.context["inline_admin_formsets"][0].formset.errors
    assert errors == [{"member": ["An allowlist cannot contain itself."]}]
    assert inner.entries.exists() is False


def test_the_allowlist_inline_saves_valid_entries(admin_client, db):
    # when
    response = admin_client.post(
        reverse("admin:linking_allowlist_add"),
        {
            "name": "staff",
            "combine": "all_of",
            **_entries(
                {"kind": "native_id", "channel": "telegram", "value": "42"},
                {"kind": "claim", "claim": "groups", "value": "g-1"},
            ),
        },
    )

    # then
    assert response.status_code == 302
    allowlist = Allowlist.objects.get()
    assert [str(entry) for entry in allowlist.entries.order_by("pk")] == [
        "telegram user 42",
        "Group object id = g-1",
    ]


def test_the_allowlist_changelist_shows_the_policies_using_it(admin_client, db):
    # given
    allowlist = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(allowlist=allowlist, kind="native_id", channel="api", value="x")
    ChannelPolicy.objects.create(channel="telegram", allowlist=allowlist)

    # when
    page = admin_client.get(reverse("admin:linking_allowlist_changelist"))

    # then
    assert page.status_code == 200
    assert b"telegram policy" in page.content


def test_the_policy_form_offers_the_identity_channels(admin_client, db):
    # when
    page = admin_client.get(reverse("admin:linking_channelpolicy_add"))
    response = admin_client.post(
        reverse("admin:linking_channelpolicy_add"), {"channel": "api", "require_link": "on"}
    )

    # then
    assert page.status_code == 200
    assert page.context["adminform"].form.fields["channel"].choices == [
        ("api", "api"),
        ("telegram", "telegram"),
    ]
    assert b"Telegram only" in page.content
    assert response.status_code == 302
    assert ChannelPolicy.objects.get().channel == "api"


def test_the_policy_form_refuses_an_unknown_channel(admin_client, db):
    # when
    page = admin_client.post(reverse("admin:linking_channelpolicy_add"), {"channel": "responses"})

    # then
    assert page.status_code == 200
    assert "channel" in page.context["adminform"].form.errors
    assert ChannelPolicy.objects.exists() is False


def test_the_policy_changelist_warns_about_problems(admin_client, db):
    # given
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    # when
    page = admin_client.get(reverse("admin:linking_channelpolicy_changelist"))

    # then
    assert page.status_code == 200
    assert any("(linking.E002)" in str(message) for message in page.context["messages"])


def test_the_admin_index_shows_problems(admin_client, db):
    # given
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    # when
    page = admin_client.get(reverse("admin:index"))

    # then
    assert page.status_code == 200
    assert b'id="linking-problems"' in page.content
    assert b"(linking.E002)" in page.content


def test_the_admin_index_shows_no_problem_box_without_problems(admin_client, db):
    page = admin_client.get(reverse("admin:index"))
    assert page.status_code == 200
    assert b'id="linking-problems"' not in page.content


def test_the_change_history_lists_an_action(admin_client, admin_user, identity_factory):
    # given
    identity = identity_factory(username="ada")
    _act(admin_client, "identity", "block_selected", identity)

    # when
    page = admin_client.get(reverse("admin:admin_logentry_changelist"))
    detail = admin_client.get(
        reverse("admin:admin_logentry_change", args=[LogEntry.objects.get().pk])
    )

    # then
    assert page.status_code == 200
    assert b"Change history" in page.content
    assert b"telegram:@ada" in page.content
    assert b"Blocked" in page.content
    assert admin_user.get_username().encode() in page.content
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content


@pytest.mark.parametrize(
    "model",
    ["identity", "linkgrant", "linkchallenge", "allowlist", "channelpolicy", "logentry"],
)
def test_every_page_opens_for_a_superuser(admin_client, identity_factory, grant_factory, model):
    # given
    identity = identity_factory()
    grant = grant_factory(identity)
    challenge = LinkChallenge.objects.create(
        token_hash="0" * 64, identity=identity, expires_at=timezone.now(), grant=grant
    )
    allowlist = Allowlist.objects.create(name="staff")
    policy = ChannelPolicy.objects.create(channel="telegram", allowlist=allowlist)
    _act(admin_client, "identity", "block_selected", identity)
    rows = {
        "identity": identity,
        "linkgrant": grant,
        "linkchallenge": challenge,
        "allowlist": allowlist,
        "channelpolicy": policy,
        "logentry": LogEntry.objects.get(),
    }
    app = "admin" if model == "logentry" else "linking"

    # when
    listing = admin_client.get(reverse(f"admin:{app}_{model}_changelist"))
    detail = admin_client.get(reverse(f"admin:{app}_{model}_change", args=[rows[model].pk]))

    # then
    assert listing.status_code == 200
    assert detail.status_code == 200
