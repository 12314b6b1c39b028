from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.db import ProgrammingError

from linking import checks
from linking.models import Allowlist, AllowlistEntry, ChannelPolicy

TENANT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def linking_on(settings):
    settings.ENTRA_TENANT_ID = TENANT
    settings.ENTRA_CLIENT_ID = "client"
    settings.ENTRA_CLIENT_SECRET = "secret"


def _ids(messages) -> list[str]:
    return [message.id for message in messages]


def test_a_tenant_id_that_is_not_a_guid_is_an_error(linking_on, settings):
    settings.ENTRA_TENANT_ID = "contoso.onmicrosoft.com"
    assert _ids(checks.check_entra_settings(None)) == ["linking.E001"]


def test_complete_linking_settings_pass(linking_on):
    assert checks.check_entra_settings(None) == []


def test_no_linking_settings_pass(settings):
    settings.ENTRA_TENANT_ID = settings.ENTRA_CLIENT_ID = settings.ENTRA_CLIENT_SECRET = ""
    assert checks.check_entra_settings(None) == []


def test_partly_configured_linking_is_a_warning(linking_on, settings):
    # given
    settings.ENTRA_CLIENT_SECRET = ""

    # when
    messages = checks.check_entra_settings(None)

    # then
    assert _ids(messages) == ["linking.W001"]
    assert "ENTRA_CLIENT_SECRET" in messages[0].msg


def test_a_policy_requiring_links_while_linking_is_off_is_an_error(db):
    # given
    policy = ChannelPolicy.objects.create(channel="telegram", require_link=True)

    # when
    messages = checks.check_channel_policies(None)

    # then
    assert _ids(messages) == ["linking.E002"]
    assert messages[0].obj == policy
    assert "telegram policy" in messages[0].msg


def test_a_policy_whose_allowlist_checks_claims_deep_down_while_linking_is_off_is_an_error(db):
    # given
    outer, inner = Allowlist.objects.create(name="outer"), Allowlist.objects.create(name="inner")
    AllowlistEntry.objects.create(allowlist=outer, kind="native_id", channel="api", value="x")
    AllowlistEntry.objects.create(allowlist=outer, kind="allowlist", member=inner)
    AllowlistEntry.objects.create(allowlist=inner, kind="claim", claim="groups", value="g-1")
    ChannelPolicy.objects.create(channel="api", allowlist=outer)

    # when
    messages = checks.check_channel_policies(None)

    # then
    assert _ids(messages) == ["linking.E002"]
    assert "'outer'" in messages[0].msg


def test_policies_needing_links_pass_while_linking_is_on(linking_on, db):
    # given
    allowlist = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(allowlist=allowlist, kind="claim", claim="tid", value=TENANT)
    ChannelPolicy.objects.create(channel="telegram", require_link=True, allowlist=allowlist)

    # then
    assert checks.check_channel_policies(None) == []


def test_a_policy_naming_an_unknown_channel_is_an_error(db):
    # given
    ChannelPolicy.objects.create(channel="responses")

    # when
    messages = checks.check_channel_policies(None)

    # then
    assert _ids(messages) == ["linking.E003"]
    assert "api, telegram" in messages[0].hint


@pytest.mark.parametrize(
    ("combine", "verdict"), [("any_of", "denies everyone"), ("all_of", "allows everyone")]
)
def test_an_empty_allowlist_on_a_policy_is_a_warning(db, combine, verdict):
    # given
    allowlist = Allowlist.objects.create(name="nobody", combine=combine)
    ChannelPolicy.objects.create(channel="telegram", allowlist=allowlist)

    # when
    messages = checks.check_channel_policies(None)

    # then
    assert _ids(messages) == ["linking.W002"]
    assert verdict in messages[0].msg


def test_an_allowlist_with_entries_passes(db):
    # given
    allowlist = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(allowlist=allowlist, kind="native_id", channel="api", value="x")
    ChannelPolicy.objects.create(channel="api", allowlist=allowlist)

    # then
    assert checks.check_channel_policies(None) == []


def test_the_policy_checks_skip_a_database_without_tables(db, monkeypatch):
    # given
    def missing_table(*args, **kwargs):
        raise ProgrammingError('relation "linking_channelpolicy" does not exist')

    monkeypatch.setattr(ChannelPolicy.objects, "select_related", missing_table)

    # then
    assert checks.check_channel_policies(None) == []


def test_the_checks_run_with_django_checks(db, settings):
    # given
    settings.ENTRA_TENANT_ID = "contoso"
    ChannelPolicy.objects.create(channel="telegram", require_link=True)

    # when
    messages = run_checks(tags=["linking"])

    # then
    # Django keeps the registered checks in a set: their order varies.
    assert sorted(_ids(messages)) == ["linking.E001", "linking.E002", "linking.W001"]
    assert sorted(_ids(checks.problems())) == sorted(_ids(messages))
