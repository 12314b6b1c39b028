from django.urls import reverse

from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from linking.models import Identity


def _chat(**fields):
    fields.setdefault("chat_id", -100123)
    fields.setdefault("kind", "supergroup")
    return TelegramChat.objects.create(**fields)


def test_the_inbox_changelist_shows_errors_escaped(admin_client):
    # given
    chat = _chat(title="<b>Team</b>")
    TelegramUpdate.objects.create(
        update_id=1, chat=chat, payload={}, status="failed", last_error="<script>x</script>"
    )

    # when
    page = admin_client.get(
        reverse("admin:channels_app_telegramupdate_changelist") + "?has_error=yes"
    )

    # then
    assert page.status_code == 200
    assert b"&lt;script&gt;x&lt;/script&gt;" in page.content
    assert b"<script>x</script>" not in page.content


def test_the_reprocess_action_queues_failed_updates_again(
    admin_client, django_capture_on_commit_callbacks, monkeypatch
):
    # given
    chat = _chat()
    failed = TelegramUpdate.objects.create(
        update_id=2, chat=chat, payload={}, status="failed", attempts=5, last_error="boom"
    )
    done = TelegramUpdate.objects.create(update_id=3, chat=chat, payload={}, status="processed")
    queued = []
    monkeypatch.setattr(
        "channels_app.telegram.services.async_task", lambda func, pk, **kw: queued.append(pk)
    )

    # when
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(
            reverse("admin:channels_app_telegramupdate_changelist"),
            {"action": "reprocess_selected", "_selected_action": [failed.pk, done.pk]},
        )

    # then
    assert page.status_code == 302
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("pending", 0)
    assert TelegramUpdate.objects.get(pk=done.pk).status == "processed"
    assert queued == [chat.pk]


def test_the_chat_page_lists_who_talks_to_the_bot(admin_client):
    # given
    chat = _chat(title="Team chat")
    identity = Identity.objects.create(
        channel="telegram",
        native_id="42",
        display_name="Ada <Lovelace>",
        isolation_key="telegram:42",
    )
    TelegramChatMember.objects.create(chat=chat, identity=identity, message_count=3)

    # when
    listing = admin_client.get(reverse("admin:channels_app_telegramchat_changelist"))
    detail = admin_client.get(reverse("admin:channels_app_telegramchat_change", args=[chat.pk]))

    # then
    assert listing.status_code == 200
    assert b"Team chat" in listing.content
    assert detail.status_code == 200
    assert b"Ada &lt;Lovelace&gt;" in detail.content


def test_the_identity_changelist_renders(admin_client):
    Identity.objects.create(
        channel="telegram", native_id="7", username="ada", isolation_key="telegram:7"
    )
    page = admin_client.get(reverse("admin:linking_identity_changelist"))
    assert page.status_code == 200
    assert b"@ada" in page.content
