import pytest
from agent_framework import Content, Message
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from afhost.models import ApiKey, Conversation, Run
from afhost.services import create_api_key
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from linking.models import Identity


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
        isolation_key="api:acme:user.<script>",
        model="<b>model</b>",
        status=Run.Status.FAILED,
        error={"code": "server_error", "message": "<i>failed</i>"},
    )

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist") + "?has_error=yes")

    # then
    assert page.status_code == 200
    assert b"&lt;script&gt; (acme)" in page.content
    assert b"&lt;b&gt;model&lt;/b&gt;" in page.content
    assert b"&lt;i&gt;failed&lt;/i&gt;" in page.content
    assert b"<script>" not in page.content
    assert b"<i>failed" not in page.content


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


def test_an_operator_puts_a_key_into_a_named_partition(admin_client, db):
    # given
    api_key, _ = create_api_key(name="backend", is_trusted=True)

    # when
    page = admin_client.post(
        reverse("admin:afhost_apikey_change", args=[api_key.pk]),
        {"name": "backend", "is_trusted": "on", "partition": "acme"},
    )

    # then
    assert page.status_code == 302
    api_key.refresh_from_db()
    assert api_key.partition == "acme"
    assert api_key.effective_partition == "acme"


def test_the_admin_refuses_a_partition_that_is_not_a_slug(admin_client, db):
    # given
    api_key, _ = create_api_key(name="backend", is_trusted=True)

    # when
    page = admin_client.post(
        reverse("admin:afhost_apikey_change", args=[api_key.pk]),
        {"name": "backend", "is_trusted": "on", "partition": "acme:user.bob"},
    )

    # then
    assert page.status_code == 200
    assert "partition" in page.context["adminform"].form.errors
    api_key.refresh_from_db()
    assert api_key.partition == ""


def test_adding_an_api_key_in_a_named_partition(admin_client, db):
    # when
    admin_client.post(
        reverse("admin:afhost_apikey_add"),
        {"name": "second backend", "is_trusted": "on", "partition": "acme"},
    )

    # then
    assert ApiKey.objects.get().partition == "acme"


def test_the_key_changelist_filters_and_searches_by_partition(admin_client, db):
    # given
    create_api_key(name="alone")
    create_api_key(name="shared", partition="acme")
    changelist = reverse("admin:afhost_apikey_changelist")

    # when
    own = admin_client.get(changelist, {"partition": "(own)"})
    named = admin_client.get(changelist, {"partition": "acme"})
    searched = admin_client.get(changelist, {"q": "acme"})

    # then
    assert [k.name for k in own.context["cl"].result_list] == ["alone"]
    assert [k.name for k in named.context["cl"].result_list] == ["shared"]
    assert [k.name for k in searched.context["cl"].result_list] == ["shared"]


@pytest.fixture
def one_of_everything(run_factory):
    """A row of each model the operator reads, related as they are in use."""
    api_key, _ = create_api_key(name="backend")
    identity = Identity.objects.create(
        channel="telegram", native_id="42", username="ada", isolation_key="telegram:42"
    )
    conversation = Conversation.objects.create(
        channel="telegram", isolation_key="telegram:42", key="user"
    )
    run = run_factory(
        channel="telegram",
        isolation_key="telegram:42",
        conversation=conversation,
        input_messages=[Message("user", [Content.from_text("hello")]).to_dict()],
        output_messages=[Message("assistant", [Content.from_text("hi")]).to_dict()],
        attributes={"api_key": str(api_key.public_id)},
    )
    conversation.head_run = run
    conversation.save()
    chat = TelegramChat.objects.create(chat_id=42, kind="private", title="Ada")
    TelegramChatMember.objects.create(chat=chat, identity=identity, message_count=1)
    update = TelegramUpdate.objects.create(
        update_id=1, chat=chat, payload={"update_id": 1, "message": {"text": "hello"}}, run=run
    )
    update.finish(status=TelegramUpdate.Status.PROCESSED)
    return {
        "run": run,
        "conversation": conversation,
        "identity": identity,
        "chat": chat,
        "update": update,
    }


def test_every_admin_page_renders(admin_client, one_of_everything):
    for model in apps.get_models():
        if not admin.site.is_registered(model):
            continue
        info = (model._meta.app_label, model._meta.model_name)

        # when
        listing = admin_client.get(reverse("admin:{}_{}_changelist".format(*info)))
        details = [
            admin_client.get(reverse("admin:{}_{}_change".format(*info), args=[pk]))
            for pk in model._default_manager.values_list("pk", flat=True)[:3]
        ]

        # then
        assert (info, listing.status_code) == (info, 200)
        assert [(info, page.status_code) for page in details] == [(info, 200)] * len(details)


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("run", "admin:afhost_run_change"),
        ("conversation", "admin:afhost_conversation_change"),
        ("identity", "admin:linking_identity_change"),
        ("chat", "admin:channels_app_telegramchat_change"),
        ("update", "admin:channels_app_telegramupdate_change"),
    ],
)
def test_records_the_system_owns_are_view_only(admin_client, one_of_everything, name, url):
    # when
    page = admin_client.get(reverse(url, args=[one_of_everything[name].pk]))

    # then
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b'name="_continue"' not in page.content


_CHANGELISTS = [
    f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
    for model in apps.get_models()
    if admin.site.is_registered(model)
]


@pytest.mark.parametrize("changelist", _CHANGELISTS)
def test_a_nul_in_any_changelist_parameter_is_a_bad_request(admin_client, changelist):
    # given: every parameter the changelist's filters read, its search and its ordering
    url = reverse(changelist)
    filters = admin_client.get(url).context["cl"].filter_specs
    parameters = {"q", "o", "p"} | {name for spec in filters for name in spec.expected_parameters()}

    for name in sorted(parameters):
        # when
        page = admin_client.get(url, {name: "a\x00b"})

        # then
        assert (name, page.status_code) == (name, 400)


def test_a_nul_in_an_admin_path_is_a_bad_request(admin_client):
    # given: a model whose primary key is text
    url = reverse("admin:django_q_success_change", args=["a\x00b"])

    # when
    page = admin_client.get(url)

    # then
    assert page.status_code == 400
