import pytest
from django.urls import reverse

from afhost.models import ApiKey, Run
from afhost.services import create_api_key


@pytest.fixture
def run_factory(db):
    def make(**fields):
        fields.setdefault("channel", "responses")
        fields.setdefault("isolation_key", "api:key.test")
        fields.setdefault("status", Run.Status.COMPLETED)
        return Run.objects.create(**fields)

    return make


def test_the_run_changelist_renders_and_escapes_user_data(admin_client, run_factory):
    # given
    run_factory(
        isolation_key="api:user.<script>", status=Run.Status.FAILED, error={"code": "server_error"}
    )

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist") + "?has_error=yes")

    # then
    assert page.status_code == 200
    assert b"api:user.&lt;script&gt;" in page.content
    assert b"api:user.<script>" not in page.content


def test_the_run_detail_is_read_only(admin_client, run_factory):
    run = run_factory()
    page = admin_client.get(reverse("admin:afhost_run_change", args=[run.pk]))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content


def test_adding_an_api_key_shows_the_key_once(admin_client, db):
    # when
    page = admin_client.post(
        reverse("admin:afhost_apikey_add"), {"name": "ops backend", "is_trusted": "on"}, follow=True
    )

    # then
    api_key = ApiKey.objects.get()
    message = next(str(m) for m in page.context["messages"] if "New API key" in str(m))
    raw_key = message.split(": ", 1)[1].split(" ")[0]
    assert ApiKey.objects.for_raw_key(raw_key) == api_key
    assert api_key.is_trusted is True


def test_the_revoke_action_revokes_selected_keys(admin_client, db):
    # given
    api_key, raw_key = create_api_key(name="old")

    # when
    page = admin_client.post(
        reverse("admin:afhost_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [api_key.pk]},
    )

    # then
    assert page.status_code == 302
    assert ApiKey.objects.for_raw_key(raw_key) is None
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None


def test_the_conversation_changelist_renders(admin_client, db):
    assert admin_client.get(reverse("admin:afhost_conversation_changelist")).status_code == 200
