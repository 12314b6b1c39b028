"""Answering updates: updates are posted to the real webhook, chat tasks run in process, and the
fake Bot API on loopback records what Telegram would have received."""

import asyncio
import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from agent_framework import Message
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from afhost.models import Conversation, Run
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from channels_app.telegram.processing import _take_next_update, make_bot
from linking.models import Identity

PRIVATE = 1111111
GROUP = -1001234567890


def _command(telegram_update, command: str) -> dict:
    """A private chat's update holding `command` (e.g. "/help")."""
    entities = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    return telegram_update("start_command", text=command, entities=entities)


def _sent(api, chat_id=None):
    return [
        call
        for call in api.calls_to("sendMessage")
        if not call.failed and (chat_id is None or call.params["chat_id"] == chat_id)
    ]


def test_a_private_message_is_answered_by_the_agent(telegram_inbox, telegram_api, telegram_update):
    # when
    telegram_inbox.deliver(telegram_update("private_text", text="hello bot"))

    # then
    [call] = _sent(telegram_api)
    assert call.params["chat_id"] == PRIVATE
    assert call.params["parse_mode"] == "HTML"
    assert call.params["text"].startswith('You said: "hello bot".')
    assert "reply_parameters" not in call.params
    assert telegram_api.calls_to("sendChatAction")[0].params == {
        "chat_id": PRIVATE,
        "action": "typing",
    }
    update = TelegramUpdate.objects.get()
    assert (update.status, update.sent_parts, update.run.status) == (
        "processed",
        1,
        Run.Status.COMPLETED,
    )


def test_the_agent_remembers_a_private_conversation_until_new(
    telegram_inbox, telegram_api, telegram_update
):
    # when
    telegram_inbox.deliver(
        telegram_update("private_text", text="my name is Ada"),
        telegram_update("private_text", text="who am I?"),
        _command(telegram_update, "/new"),
        telegram_update("private_text", text="and now?"),
    )

    # then
    texts = telegram_api.sent_texts(PRIVATE)
    assert len(texts) == 4
    assert 'Before that you said: "my name is Ada".' in texts[1]
    assert texts[2].startswith("Started a new conversation.")
    assert "That is the first thing you told me." in texts[3]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/start", "Hello Test! I am an AI assistant."),
        ("/help", "I am an AI assistant."),
        ("/whoami", "You are Test User (@testuser), Telegram user 1111111."),
        ("/link", "Account linking is not configured on this bot."),
        ("/unlink", "Account linking is not configured on this bot."),
        ("/frobnicate", "I don't know /frobnicate."),
    ],
)
def test_commands_are_answered_without_the_agent(
    telegram_inbox, telegram_api, telegram_update, command, expected
):
    # when
    telegram_inbox.deliver(_command(telegram_update, command))

    # then
    [text] = telegram_api.sent_texts(PRIVATE)
    assert text.startswith(expected)
    assert Run.objects.exists() is False


def test_a_group_mention_is_answered_in_reply_without_the_mention(
    telegram_inbox, telegram_api, telegram_update
):
    # when
    telegram_inbox.deliver(telegram_update("group_mention"))

    # then
    [call] = _sent(telegram_api, GROUP)
    assert "what is the status?" in call.params["text"]
    assert "@test_bot" not in call.params["text"]
    assert call.params["reply_parameters"]["message_id"] == 501
    assert TelegramChatMember.objects.get().identity.native_id == str(PRIVATE)


def test_turns_and_commands_are_each_counted_once_in_the_chat_members(
    telegram_inbox, telegram_update
):
    # when
    telegram_inbox.deliver(
        telegram_update("private_text", text="hello"),
        _command(telegram_update, "/help"),
        telegram_update("private_text", text="again"),
    )

    # then
    member = TelegramChatMember.objects.get()
    assert member.message_count == 3
    assert TelegramUpdate.objects.filter(counted_at__isnull=True).exists() is False
    assert Run.objects.count() == 2


def _statements_answering(telegram_inbox, payload) -> list[str]:
    telegram_inbox.post(payload)
    with CaptureQueriesContext(connection) as captured:
        telegram_inbox.process()
    return [query["sql"] for query in captured.captured_queries]


def test_a_first_message_looks_up_no_link_and_no_membership_of_its_new_author(
    telegram_inbox, telegram_update
):
    # when: a person's first message, then their second
    first = _statements_answering(telegram_inbox, telegram_update("private_text", text="hi"))
    second = _statements_answering(telegram_inbox, telegram_update("private_text", text="again"))

    # then: only the second looks for their link and their membership of the chat
    def touching(statements: list[str], table: str) -> list[str]:
        return [sql for sql in statements if f'"{table}"' in sql]

    assert touching(first, "linking_linkgrant") == []
    assert [sql.split()[0] for sql in touching(first, "channels_app_telegramchatmember")] == [
        "INSERT"
    ]
    assert [sql.split()[0] for sql in touching(second, "linking_linkgrant")] == ["SELECT"]
    assert [sql.split()[0] for sql in touching(second, "channels_app_telegramchatmember")] == [
        "UPDATE"
    ]
    assert TelegramChatMember.objects.get().message_count == 2


def test_an_answer_follows_a_group_that_became_a_supergroup(
    telegram_inbox, telegram_api, telegram_update
):
    # given
    telegram_api.fail_next(
        "sendMessage",
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        parameters={"migrate_to_chat_id": -1009876},
    )

    # when
    telegram_inbox.deliver(telegram_update("group_mention"))

    # then: answered in the supergroup, not as a reply (its message ids are its own)
    assert _sent(telegram_api, GROUP) == []
    [call] = _sent(telegram_api, -1009876)
    assert "what is the status?" in call.params["text"]
    assert "reply_parameters" not in call.params
    assert TelegramUpdate.objects.get().status == "processed"


@pytest.mark.parametrize(
    ("fixture", "accept", "answered"),
    [
        ("group_plain", "mention_only", False),
        ("group_plain", "all", True),
        ("group_ask_command", "mention_only", False),
        ("group_ask_command", "command_only", True),
        ("group_ask_command", "mention_or_command", True),
        ("group_mention", "command_only", False),
        ("group_mention", "mention_or_command", True),
        ("group_other_bot_command", "all", False),
    ],
)
def test_groups_are_answered_only_when_addressed(
    telegram_inbox, telegram_api, telegram_update, settings, fixture, accept, answered
):
    # given
    settings.TELEGRAM_ACCEPT_IN_GROUP = accept

    # when
    telegram_inbox.deliver(telegram_update(fixture))

    # then
    assert bool(_sent(telegram_api)) is answered
    assert TelegramUpdate.objects.get().status == ("processed" if answered else "ignored")


def test_the_ask_command_passes_its_question(
    telegram_inbox, telegram_api, telegram_update, settings
):
    settings.TELEGRAM_ACCEPT_IN_GROUP = "command_only"
    telegram_inbox.deliver(telegram_update("group_ask_command"))
    assert "deploy?" in telegram_api.sent_texts(GROUP)[0]


def test_a_forum_topic_is_answered_in_its_thread(telegram_inbox, telegram_api, telegram_update):
    # when
    telegram_inbox.deliver(telegram_update("forum_topic"))

    # then
    [call] = _sent(telegram_api)
    assert call.params["message_thread_id"] == 42
    assert "help in this topic" in call.params["text"]
    assert telegram_api.calls_to("sendChatAction")[0].params["message_thread_id"] == 42


def _answers(api, chat_id):
    return api.sent_texts(chat_id)


@pytest.mark.parametrize(
    ("scope", "group_sees_private", "users_share_group"),
    [
        ("per_user_per_conversation", False, False),
        ("per_user", True, False),
        ("per_conversation", False, True),
    ],
)
def test_conversation_scopes(
    telegram_inbox,
    telegram_api,
    telegram_update,
    settings,
    scope,
    group_sees_private,
    users_share_group,
):
    # given
    settings.TELEGRAM_CONVERSATION_SCOPE = scope
    settings.TELEGRAM_ACCEPT_IN_GROUP = "all"
    other_user = {"id": 2222222, "is_bot": False, "first_name": "Other"}
    telegram_inbox.deliver(telegram_update("private_text", text="private secret"))
    telegram_inbox.deliver(
        telegram_update("group_plain", text="first in group", **{"from": other_user})
    )

    # when
    telegram_inbox.deliver(telegram_update("group_mention", text="second in group"))

    # then
    answer = _answers(telegram_api, GROUP)[-1]
    assert ("private secret" in answer) is group_sees_private
    assert ("first in group" in answer) is users_share_group


def test_edited_messages_and_callback_queries_are_acknowledged_and_ignored(
    telegram_inbox, telegram_api, telegram_update
):
    # when
    telegram_inbox.deliver(telegram_update("edited_message"), telegram_update("callback_query"))

    # then
    assert _sent(telegram_api) == []
    assert (
        telegram_api.calls_to("answerCallbackQuery")[0].params["callback_query_id"]
        == "4382bfdwdsb323b2d9"
    )
    assert sorted(TelegramUpdate.objects.values_list("status", "last_error")) == [
        ("ignored", "callback queries are not used"),
        ("ignored", "unsupported update type: edited_message"),
    ]


def test_a_photo_is_downloaded_and_given_to_the_agent_as_bytes(
    telegram_inbox, telegram_api, telegram_update
):
    # given
    telegram_api.add_file("photo-large", b"\xff\xd8\xff jpeg bytes")

    # when
    telegram_inbox.deliver(telegram_update("photo_caption"))

    # then
    [text] = telegram_api.sent_texts(PRIVATE)
    assert "You attached an image (image/jpeg)." in text
    assert "what is in this picture?" in text
    assert telegram_api.calls_to("getFile")[0].params["file_id"] == "photo-large"
    [content] = [
        c
        for c in Message.from_dict(Run.objects.get().input_messages[0]).contents
        if c.type != "text"
    ]
    assert content.type == "data"
    assert "TEST-TOKEN" not in str(Run.objects.get().input_messages)


def test_a_photo_over_the_size_cap_is_not_downloaded(
    telegram_inbox, telegram_api, telegram_update, settings
):
    # given
    settings.TELEGRAM_MAX_FILE_BYTES = 1000

    # when
    telegram_inbox.deliver(telegram_update("photo_caption"))

    # then
    assert "too large" in telegram_api.sent_texts(PRIVATE)[0]
    assert telegram_api.calls_to("getFile") == []


def test_a_long_answer_is_split_in_order(telegram_inbox, telegram_api, telegram_update):
    # given
    long_text = "\n\n".join(f"Paragraph {i}: " + "word " * 150 for i in range(12))

    # when
    telegram_inbox.deliver(telegram_update("private_text", text=long_text))

    # then
    texts = telegram_api.sent_texts(PRIVATE)
    assert len(texts) == 3
    assert all(len(text) <= 4096 for text in texts)
    assert "Paragraph 0" in texts[0]
    assert "Paragraph 11" in texts[-1]
    assert TelegramUpdate.objects.get().sent_parts == 3


def test_rejected_formatting_is_resent_as_plain_text(telegram_inbox, telegram_api, telegram_update):
    # given
    telegram_api.fail_next(
        "sendMessage", 400, "Bad Request: can't parse entities: unsupported start tag"
    )

    # when
    telegram_inbox.deliver(telegram_update("private_text", text="**bold** move"))

    # then
    failed, sent = telegram_api.calls_to("sendMessage")
    assert failed.failed is True
    assert failed.params["parse_mode"] == "HTML"
    assert "parse_mode" not in sent.params
    assert "<b>" not in sent.params["text"]
    assert TelegramUpdate.objects.get().status == "processed"


def test_429_waits_as_telegram_asks_and_sends_once(telegram_inbox, telegram_api, telegram_update):
    # given
    telegram_api.fail_next(
        "sendMessage", 429, "Too Many Requests: retry after 1", parameters={"retry_after": 1}
    )

    # when
    telegram_inbox.deliver(telegram_update("private_text"))

    # then
    refused, sent = telegram_api.calls_to("sendMessage")
    assert sent.at - refused.at >= 1
    assert len(telegram_api.sent_texts(PRIVATE)) == 1


def test_a_server_error_is_retried_with_backoff(telegram_inbox, telegram_api, telegram_update):
    # given
    telegram_api.fail_next("sendMessage", 502, "Bad Gateway", times=2)

    # when
    telegram_inbox.deliver(telegram_update("private_text"))

    # then
    assert [call.failed for call in telegram_api.calls_to("sendMessage")] == [True, True, False]
    assert TelegramUpdate.objects.get().status == "processed"


def test_a_blocked_bot_is_recorded_and_not_retried(telegram_inbox, telegram_api, telegram_update):
    # given
    telegram_api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")

    # when
    telegram_inbox.deliver(telegram_update("private_text"))
    telegram_inbox.sweep()
    telegram_inbox.process()

    # then
    assert len(telegram_api.calls_to("sendMessage")) == 1
    update = TelegramUpdate.objects.get()
    assert update.status == "failed"
    assert "blocked" in update.last_error
    identity = Identity.objects.get(native_id=str(PRIVATE))
    assert identity.unreachable_at is not None
    assert TelegramChat.objects.get().blocked_at is not None


def test_a_failed_attempt_is_retried_later_and_answered_exactly_once(
    telegram_inbox, telegram_api, telegram_update
):
    # given: every send of the first attempt fails
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=4)
    telegram_inbox.deliver(telegram_update("private_text", text="try me"))
    update = TelegramUpdate.objects.get()
    assert (update.status, update.attempts) == ("pending", 1)
    assert "NetworkError" in update.last_error

    # when: the retry is due and the sweeper queues the chat again
    TelegramUpdate.objects.update(next_attempt_at=update.created_at)
    assert telegram_inbox.sweep() == 1
    telegram_inbox.process()

    # then
    assert len(telegram_api.sent_texts(PRIVATE)) == 1
    assert TelegramUpdate.objects.get().status == "processed"
    assert Run.objects.count() == 1


def test_a_retry_sends_only_the_parts_not_yet_delivered(
    telegram_inbox, telegram_api, telegram_update
):
    # given: a two-part answer whose second part fails on every attempt of the first round
    long_text = "\n\n".join("word " * 150 for _ in range(8))
    telegram_inbox.post(telegram_update("private_text", text=long_text))
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=1)
    telegram_inbox.process()
    first_round = telegram_api.sent_texts(PRIVATE)
    assert len(first_round) == 2
    telegram_api.reset()
    update = TelegramUpdate.objects.get()
    TelegramUpdate.objects.update(
        sent_parts=1, status="pending", attempts=1, next_attempt_at=update.created_at
    )

    # when
    telegram_inbox.sweep()
    telegram_inbox.process()

    # then: only the second part goes out again, and the agent does not run again
    assert telegram_api.sent_texts(PRIVATE) == first_round[1:]
    assert Run.objects.count() == 1


def test_a_chat_is_answered_in_the_order_telegram_sent(
    telegram_inbox, telegram_api, telegram_update
):
    # given: updates arrive out of order
    updates = [
        telegram_update("private_text", update_id=5000 + i, text=f"message {i}") for i in range(5)
    ]

    # when
    for payload in reversed(updates):
        telegram_inbox.post(payload)
    telegram_inbox.process()

    # then
    texts = telegram_api.sent_texts(PRIVATE)
    assert [text.split('"')[1] for text in texts] == [f"message {i}" for i in range(5)]


def test_typing_is_renewed_while_the_agent_works(telegram_inbox, telegram_api, telegram_update):
    # when: the scripted agent takes 0.4 s; typing is renewed every 0.05 s in tests
    telegram_inbox.deliver(telegram_update("private_text", text="sleep 0.4"))

    # then
    typing = telegram_api.calls_to("sendChatAction")
    assert len(typing) >= 3
    assert typing[-1].at < telegram_api.calls_to("sendMessage")[0].at


def test_a_document_is_given_to_the_agent_with_its_type(
    telegram_inbox, telegram_api, telegram_update
):
    # given
    telegram_api.add_file("doc-1", b"%PDF-1.7 tiny")
    payload = telegram_update("photo_caption", caption="summarise this")
    del payload["message"]["photo"]
    payload["message"]["document"] = {
        "file_id": "doc-1", "file_unique_id": "d1", "file_name": "report.pdf", "mime_type": "application/pdf", "file_size": 13,
    }  # fmt: skip

    # when
    telegram_inbox.deliver(payload)

    # then
    [text] = telegram_api.sent_texts(PRIVATE)
    assert "You attached a file (application/pdf)." in text


def test_an_update_the_bot_library_cannot_read_fails_at_once_and_the_chat_goes_on(
    telegram_inbox, telegram_api, telegram_update
):
    # given: an update python-telegram-bot cannot parse, then a good one in the same chat
    bad = telegram_update("private_text", text="bad")
    bad["message"]["entities"] = [5]

    # when
    telegram_inbox.deliver(bad, telegram_update("private_text", text="good"))

    # then
    failed, answered = TelegramUpdate.objects.order_by("update_id")
    assert (failed.status, failed.attempts) == ("failed", 0)
    assert failed.last_error.startswith("malformed update: AttributeError")
    assert answered.status == "processed"
    assert len(telegram_api.sent_texts(PRIVATE)) == 1


def test_telegram_unreachable_when_the_bot_starts_counts_as_a_failed_attempt(
    telegram_inbox, telegram_api, telegram_update
):
    # given: the Bot API fails the bot's own getMe
    telegram_api.fail_next("getMe", 502, "Bad Gateway")

    # when
    telegram_inbox.deliver(telegram_update("private_text"))

    # then
    update = TelegramUpdate.objects.get()
    assert (update.status, update.attempts) == ("pending", 1)
    assert "Bad Gateway" in update.last_error
    assert telegram_api.sent_texts(PRIVATE) == []


class _WorkerDied(BaseException):
    """Stands for the process ending mid-turn: nothing after it runs."""


async def _die(started):
    raise _WorkerDied


def _start_a_turn_and_die(telegram_inbox, payload) -> None:
    """A worker starts the turn, then dies: its leases on the run, conversation and chat ran out."""
    telegram_inbox.post(payload)
    with (
        mock.patch("channels_app.telegram.processing.execution.run_blocking", side_effect=_die),
        pytest.raises(_WorkerDied),
    ):
        telegram_inbox.process()
    past = timezone.now() - timedelta(seconds=1)
    Run.objects.update(lease_expires_at=past)
    Conversation.objects.update(lease_expires_at=past)
    TelegramChat.objects.update(lease_owner="dead", lease_expires_at=past)


def test_a_turn_whose_worker_died_is_run_again_and_answered_once(
    telegram_inbox, telegram_api, telegram_update
):
    # given
    _start_a_turn_and_die(telegram_inbox, telegram_update("private_text", text="sleep 0.1"))
    assert Run.objects.get().status == "in_progress"

    # when: the sweeper hands the chat to a worker again
    assert telegram_inbox.sweep() == 1
    telegram_inbox.process()

    # then: the same run, answered once, the interruption counted
    update = TelegramUpdate.objects.get()
    assert (update.status, update.attempts) == ("processed", 1)
    assert telegram_api.sent_texts(PRIVATE) == ["done sleeping"]
    assert Run.objects.get().status == "completed"


def test_a_turn_whose_workers_keep_dying_is_answered_with_a_failure_in_the_end(
    telegram_inbox, telegram_api, telegram_update
):
    # given: a turn whose run is still in progress after its last allowed attempt
    _start_a_turn_and_die(telegram_inbox, telegram_update("private_text", text="sleep 0.1"))
    TelegramUpdate.objects.update(attempts=TelegramUpdate.MAX_ATTEMPTS - 1)

    # when
    telegram_inbox.sweep()
    telegram_inbox.process()

    # then: visibly failed, and the person told so, once
    assert Run.objects.get().status == "failed"
    assert telegram_api.sent_texts(PRIVATE) == ["Sorry, I could not answer that. Please try again."]


def test_a_busy_bot_has_no_more_calls_in_flight_than_it_has_connections(telegram_api):
    # given: two connections, and a Bot API that answers 0.2 s after each call
    telegram_api.set_latency(0.2, method="sendChatAction")

    async def six_calls_at_once() -> list:
        async with make_bot(connections=2) as bot:
            calls = (bot.send_chat_action(PRIVATE, "typing") for _ in range(6))
            return await asyncio.gather(*calls)

    # when
    try:
        results = asyncio.run(six_calls_at_once())
    finally:
        telegram_api.set_latency(0, method="sendChatAction")

    # then: they arrived two by two, each pair once the one before was answered
    assert results == [True] * 6
    arrivals = sorted(call.at for call in telegram_api.calls_to("sendChatAction"))
    assert len(arrivals) == 6
    assert all(
        later - first >= 0.15 for first, later in zip(arrivals[:-2], arrivals[2:], strict=True)
    )


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's READ COMMITTED re-check of a row"
)
@pytest.mark.django_db(transaction=True)
def test_a_chat_taken_as_its_last_answer_is_stored_yields_its_next_update_not_that_one():
    # given: a worker whose lease on the chat ran out is ending its first update; the next one
    # is pending
    chat = TelegramChat.objects.create(
        chat_id=PRIVATE,
        kind="private",
        lease_owner="a",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    answered, following = (
        TelegramUpdate.objects.create(chat=chat, update_id=update_id, payload={})
        for update_id in (1, 2)
    )
    locked, stored = threading.Event(), threading.Event()

    def other_worker() -> None:
        """Gives the chat back and stores the first update's end, in one transaction that ends
        while this test's take waits for the chat's row (after its statement began)."""
        try:
            with transaction.atomic():
                TelegramChat.objects.filter(pk=chat.pk).update(
                    lease_owner="", lease_expires_at=None
                )
                locked.set()
                with connection.cursor() as cursor:
                    for _ in range(500):  # until the take waits for the row
                        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        if cursor.fetchone()[0]:
                            break
                        time.sleep(0.01)
                TelegramUpdate.objects.filter(pk=answered.pk).update(status="processed")
        finally:
            stored.set()
            connection.close()

    worker = threading.Thread(target=other_worker)
    worker.start()
    assert locked.wait(5)

    # when
    taken = _take_next_update(chat.pk)
    worker.join(10)

    # then: the update still pending, not the one answered as the take waited
    assert stored.is_set()
    assert taken is not None
    assert taken[1].pk == following.pk
