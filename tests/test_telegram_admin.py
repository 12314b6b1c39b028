from unittest import mock

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from afhost.models import Run
from afhost.types import HostedRunResult
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


PRIVATE = 1111111
APOLOGY = "Sorry, I could not answer that. Please try again."


def _reprocess(admin_client, update, capture_on_commit):
    with capture_on_commit(execute=True):
        return admin_client.post(
            reverse("admin:channels_app_telegramupdate_changelist"),
            {"action": "reprocess_selected", "_selected_action": [update.pk]},
        )


async def _overloaded(*, run, messages):
    return HostedRunResult.failure("The agent failed.", detail="RuntimeError: model overloaded")


def test_an_update_whose_run_failed_ends_failed_with_the_runs_error(
    telegram_inbox, telegram_api, telegram_update
):
    # when
    telegram_inbox.deliver(telegram_update("private_text", text="fail"))

    # then: the person is told, and the inbox shows the failure
    assert telegram_api.sent_texts(PRIVATE) == [APOLOGY]
    update = TelegramUpdate.objects.get()
    assert update.status == "failed"
    assert update.last_error == "the agent's run failed: RuntimeError: scripted failure"
    assert update.run.status == Run.Status.FAILED
    [attempt] = update.attempt_history
    assert (attempt["attempt"], attempt["outcome"], attempt["run"]) == (1, "failed", update.run.pk)


def test_reprocessing_answers_afresh_and_keeps_the_earlier_attempts_error(
    admin_client, telegram_inbox, telegram_api, telegram_update, django_capture_on_commit_callbacks
):
    # given: an update whose first run failed
    with mock.patch("afhost.execution.invoke", side_effect=_overloaded):
        telegram_inbox.deliver(telegram_update("private_text", text="hello bot"))
    update = TelegramUpdate.objects.get()
    failed_run = update.run
    assert update.status == "failed"

    # when
    page = _reprocess(admin_client, update, django_capture_on_commit_callbacks)
    telegram_inbox.process()

    # then: a new run answered it, and the failed attempt is still on record
    assert page.status_code == 302
    update.refresh_from_db()
    assert (update.status, update.last_error) == ("processed", "")
    assert update.run != failed_run
    assert telegram_api.sent_texts(PRIVATE)[0] == APOLOGY
    assert telegram_api.sent_texts(PRIVATE)[1].startswith("You said:")
    assert [(a["outcome"], a["run"]) for a in update.attempt_history] == [
        ("failed", failed_run.pk),
        ("processed", update.run.pk),
    ]
    assert LogEntry.objects.get().change_message == "Re-processed"
    detail = admin_client.get(
        reverse("admin:channels_app_telegramupdate_change", args=[update.pk])
    ).content.decode()
    assert "the agent&#x27;s run failed: RuntimeError: model overloaded" in detail
    assert f"resp_{failed_run.public_id.hex}" in detail
    assert f"resp_{update.run.public_id.hex}" in detail


def test_reprocessing_an_undelivered_reply_sends_it_without_running_the_agent_again(
    admin_client, telegram_inbox, telegram_api, telegram_update, django_capture_on_commit_callbacks
):
    # given: a reply Telegram refused on every attempt
    telegram_inbox.post(telegram_update("private_text", text="hello bot"))
    TelegramUpdate.objects.update(attempts=TelegramUpdate.MAX_ATTEMPTS - 1)
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=4)
    telegram_inbox.process()
    update = TelegramUpdate.objects.get()
    assert update.status == "failed"

    # when
    _reprocess(admin_client, update, django_capture_on_commit_callbacks)
    telegram_inbox.process()

    # then
    update.refresh_from_db()
    assert update.status == "processed"
    assert Run.objects.count() == 1
    assert len(telegram_api.sent_texts(PRIVATE)) == 1
    assert [a["outcome"] for a in update.attempt_history] == ["failed", "processed"]


def test_a_message_is_counted_once_however_many_attempts_answer_it(
    admin_client, telegram_inbox, telegram_api, telegram_update
):
    # given: the first attempt fails to send, after its author was counted
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=4)
    telegram_inbox.deliver(telegram_update("private_text", text="count me"))
    update = TelegramUpdate.objects.get()
    assert (update.status, update.attempts) == ("pending", 1)

    # when: the retry answers it
    TelegramUpdate.objects.update(next_attempt_at=update.created_at)
    telegram_inbox.sweep()
    telegram_inbox.process()

    # then
    update.refresh_from_db()
    assert update.status == "processed"
    assert [a["outcome"] for a in update.attempt_history] == ["retry", "processed"]
    member = TelegramChatMember.objects.get()
    assert member.message_count == 1
    assert update.counted_at is not None


def test_an_operator_who_may_only_view_cannot_reprocess(django_user_model):
    # given
    client = Client()
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_telegramupdate"))
    client.force_login(viewer)
    update = TelegramUpdate.objects.create(
        update_id=4, chat=_chat(), payload={}, status="failed", attempts=5, last_error="boom"
    )

    # when
    listing = client.get(reverse("admin:channels_app_telegramupdate_changelist"))
    client.post(
        reverse("admin:channels_app_telegramupdate_changelist"),
        {"action": "reprocess_selected", "_selected_action": [update.pk]},
    )

    # then
    assert listing.status_code == 200
    assert b"reprocess_selected" not in listing.content
    update.refresh_from_db()
    assert (update.status, update.attempts) == ("failed", 5)
