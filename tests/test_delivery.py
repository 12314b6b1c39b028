"""Delivery: a Responses API answer pushed to the caller's linked Telegram chat.

Creates go through the real view (Django's test client); the queued run and the pushes run in
this process, as a worker would run them, against the fake Bot API on loopback. The view reads
the database from its own thread, so those tests commit (transactional_db). The recovery and
operator services are called directly, on rows made by a factory.
"""

import contextlib
from datetime import timedelta
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone
from django.utils.module_loading import import_string
from telegram import Bot

from afhost.models import Run
from channels_app.telegram.rendering import render_reply
from channels_app.telegram.transport import AiohttpRequest
from delivery.models import DeliveryAttempt, DeliveryTask
from delivery.services import (
    INTERRUPTED,
    _Progress,
    cancel_deliveries,
    retry_deliveries,
    schedule_deliveries,
    sweep_deliveries,
)
from linking.models import Allowlist, AllowlistEntry, ChannelPolicy, Identity, LinkGrant

PRIVATE = 1111111
TENANT = "11111111-2222-3333-4444-555555555555"
PUSH = "delivery.tasks.push_delivery"


def link_to_telegram(api_key, *native_ids, principal="oid-alice"):
    """Link the API key's caller and these Telegram users as one person (one Entra principal)."""
    identities = []
    for channel, native_id in (
        ("api", f"key.{api_key.public_id}"),
        *(("telegram", str(each)) for each in native_ids),
    ):
        identity, _ = Identity.objects.get_or_create(
            channel=channel,
            native_id=native_id,
            defaults={"isolation_key": f"{channel}:{native_id}"},
        )
        LinkGrant.objects.create(
            identity=identity,
            tenant_id=TENANT,
            object_id=principal,
            claims={"tid": TENANT, "oid": principal},
            source=LinkGrant.Source.CEREMONY,
        )
        identities.append(identity)
    return identities[1:]


class Queue:
    """The django-q2 tasks queued meanwhile (runs and pushes), run on demand."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, tuple]] = []

    def __call__(self, func, *args, **options) -> None:
        self.queued.append((func, args))

    def run_next(self) -> None:
        func, args = self.queued.pop(0)
        import_string(func)(*args)

    def run(self) -> None:
        while self.queued:
            self.run_next()

    @property
    def pushes(self) -> list[int]:
        return [args[0] for func, args in self.queued if func == PUSH]


@pytest.fixture
def queue(transactional_db):
    queue = Queue()
    with (
        mock.patch("afhost.services.async_task", queue),
        mock.patch("delivery.services.async_task", queue),
    ):
        yield queue


@pytest.fixture
def linked_caller(transactional_db, api_key_factory):
    """An API key whose caller is linked to the Telegram user PRIVATE (same Entra principal)."""

    def make(*, trusted=False, telegram=(PRIVATE,)):
        api_key, raw_key = api_key_factory(is_trusted=trusted)
        link_to_telegram(api_key, *telegram)
        return raw_key

    return make


@pytest.fixture
def quick_retries(settings):
    settings.DELIVERY_BACKOFF = 0
    return settings


@pytest.fixture
def delivery_task_factory(db):
    def make(**fields) -> DeliveryTask:
        run = Run.objects.create(channel="api", isolation_key="api:test", status="completed")
        fields = {
            "channel": "telegram",
            "locator": {"chat_id": PRIVATE, "thread_id": None},
            "phase": DeliveryTask.Phase.ANSWER,
            "text": "the answer",
            "next_attempt_at": timezone.now(),
            **fields,
        }
        fields.setdefault("idempotency_key", f"{run.public_id}:{fields['phase']}")
        return DeliveryTask.objects.create(run=run, **fields)

    return make


def _create(raw_key, **body):
    return Client().post(
        "/v1/responses",
        {"model": "agent", "input": "hello there", **body},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw_key}"},
    )


def _answer(text="hello there"):
    return render_reply(
        f'You said: "{text}". That is the first thing you told me. '
        "We have exchanged 1 message(s) so far."
    )[0].html


def _attempts(task):
    return list(task.attempt_log.values_list("number", "outcome", "error"))


# --- the response_target parameter --------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (42, "expected a target"),
        (True, "expected a target"),
        ([], "expected a target"),
        ([["telegram"]], "expected a target"),
        (["telegram"] * 17, "expected a target"),
        ({"kind": "channels"}, "expected a target"),
        ({"kind": "channels", "targets": 7}, "expected a target"),
        ({"kind": "everyone"}, "unknown kind 'everyone'"),
        ({"kind": "all_linked", "targets": ["telegram"]}, "kind 'all_linked' takes no targets"),
        ({"targets": ["telegram"], "to": "me"}, "unknown field 'to'"),
        ("whatsapp", "'whatsapp' names no channel that can receive pushes (telegram)"),
        (["active", "whatsapp:42"], "'whatsapp:42' names no channel"),
        ("telegram:alice", "'telegram:alice': a Telegram chat is 'telegram:<chat id>'"),
        ("telegram:", "'telegram:': a Telegram chat is"),
        ("telegram:42:7:1", "'telegram:42:7:1': a Telegram chat is"),
    ],
)
def test_a_malformed_target_is_refused(queue, api_key_factory, target, message):
    # given
    _, raw_key = api_key_factory(is_trusted=True)

    # when
    response = _create(raw_key, response_target=target)

    # then
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "response_target",
        "invalid_value",
    )
    assert message in error["message"]
    assert Run.objects.exists() is False


def test_a_target_whose_echo_input_is_no_boolean_is_refused(queue, api_key_factory):
    # given
    _, raw_key = api_key_factory()

    # when
    response = _create(raw_key, response_target={"kind": "all_linked", "echo_input": "yes"})

    # then
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("response_target.echo_input", "invalid_type")
    assert Run.objects.exists() is False


def test_a_push_needs_the_run_stored(queue, linked_caller):
    # when
    response = _create(linked_caller(), response_target="all_linked", store=False)

    # then
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_target"
    assert Run.objects.exists() is False


@pytest.mark.parametrize("target", [f"telegram:{PRIVATE}", ["all_linked", "telegram:-100777:5"]])
def test_an_untrusted_key_may_not_name_a_chat(queue, telegram_api, linked_caller, target):
    # when
    response = _create(linked_caller(), response_target=target)
    queue.run()

    # then
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "permission_error",
        "response_target",
        "untrusted_response_target",
    )
    assert Run.objects.exists() is False
    assert DeliveryTask.objects.exists() is False
    assert telegram_api.calls_to("sendMessage") == []


def test_a_trusted_key_pushes_to_the_chat_it_names(queue, telegram_api, api_key_factory):
    # given: a trusted key, linked to nobody
    _, raw_key = api_key_factory(is_trusted=True)

    # when
    response = _create(raw_key, response_target="telegram:-100777:5")
    queue.run()

    # then
    assert response.status_code == 200
    task = DeliveryTask.objects.get()
    assert (task.status, task.identity, task.locator) == (
        "sent",
        None,
        {"chat_id": -100777, "thread_id": 5},
    )
    [call] = telegram_api.calls_to("sendMessage")
    assert (call.params["chat_id"], call.params["message_thread_id"]) == (-100777, 5)
    assert call.params["text"] == _answer()


# --- where a push goes ---------------------------------------------------------------------------


def test_none_runs_in_the_background_and_pushes_nothing(queue, telegram_api, linked_caller):
    # when
    response = _create(linked_caller(), response_target="none")
    queue.run()

    # then
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    run = Run.objects.get()
    assert (run.is_background, run.status) == (True, "completed")
    assert DeliveryTask.objects.exists() is False
    assert telegram_api.calls_to("sendMessage") == []


def test_active_pushes_to_the_linked_identity_seen_last(queue, telegram_api, linked_caller):
    # given: the caller is linked to three Telegram users; 2222222 wrote most recently
    raw_key = linked_caller(telegram=(PRIVATE, 2222222, 3333333))
    now = timezone.now()
    Identity.objects.filter(native_id=str(PRIVATE)).update(last_seen_at=now - timedelta(hours=1))
    Identity.objects.filter(native_id="2222222").update(last_seen_at=now - timedelta(minutes=1))

    # when
    _create(raw_key, response_target="active")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.identity.native_id) == ("sent", "2222222")
    assert telegram_api.sent_texts(2222222) == [_answer()]
    assert [call.params["chat_id"] for call in telegram_api.calls_to("sendMessage")] == [2222222]


def test_active_pushes_nothing_when_no_linked_identity_was_seen(queue, telegram_api, linked_caller):
    # when
    _create(linked_caller(), response_target="active")
    queue.run()

    # then
    assert Run.objects.get().status == "completed"
    assert DeliveryTask.objects.exists() is False
    assert telegram_api.calls_to("sendMessage") == []


def test_all_linked_pushes_to_every_linked_identity_but_the_caller(
    queue, telegram_api, linked_caller
):
    # when
    _create(linked_caller(telegram=(PRIVATE, 2222222)), response_target="all_linked")
    queue.run()

    # then
    assert sorted(DeliveryTask.objects.values_list("locator__chat_id", "status")) == [
        (PRIVATE, "sent"),
        (2222222, "sent"),
    ]
    assert telegram_api.sent_texts(PRIVATE) == telegram_api.sent_texts(2222222) == [_answer()]


def test_echo_input_pushes_the_input_before_the_answer(queue, telegram_api, linked_caller):
    # given
    _create(linked_caller(), response_target={"kind": "all_linked", "echo_input": True})
    queue.run_next()  # the run

    # when: the answer's queue task happens to run first
    queue.queued.reverse()
    queue.run()

    # then
    echo, answer = DeliveryTask.objects.order_by("pk")
    assert (echo.phase, echo.status, echo.attempts) == ("echo", "sent", 1)
    assert (answer.phase, answer.status, answer.attempts, answer.after) == (
        "answer",
        "sent",
        1,
        echo,
    )
    assert telegram_api.sent_texts(PRIVATE) == ["<b>You:</b> hello there", _answer()]
    assert answer.sent_at > echo.sent_at


def test_a_caller_without_links_gets_no_push(queue, telegram_api, api_key_factory):
    # given
    _, raw_key = api_key_factory()

    # when
    response = _create(raw_key, response_target=["all_linked", "active", "telegram"])
    queue.run()

    # then: the run answers as usual
    assert response.status_code == 200
    run = Run.objects.get()
    assert run.status == "completed"
    assert DeliveryTask.objects.exists() is False
    assert telegram_api.calls_to("sendMessage") == []
    polled = Client().get(
        f"/v1/responses/resp_{run.public_id.hex}", headers={"Authorization": f"Bearer {raw_key}"}
    )
    assert polled.json()["output"][0]["content"][0]["text"].startswith('You said: "hello there"')


def test_a_failed_run_pushes_nothing(queue, telegram_api, linked_caller):
    # when
    _create(linked_caller(), input="fail", response_target="all_linked")
    queue.run()

    # then
    assert Run.objects.get().status == "failed"
    assert DeliveryTask.objects.exists() is False
    assert telegram_api.calls_to("sendMessage") == []


def test_one_phase_reaches_one_destination_once(queue, telegram_api, linked_caller):
    # given: three targets that all lead to PRIVATE's chat
    raw_key = linked_caller(trusted=True)
    _create(raw_key, response_target=["all_linked", "telegram", f"telegram:{PRIVATE}"])
    queue.run()
    run = Run.objects.get()

    # when: the run's end is handled again
    again = schedule_deliveries(run)
    queue.run()

    # then
    assert again == []
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts) == ("sent", 1)
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


# --- failures and retries ------------------------------------------------------------------------


def test_a_failing_push_is_retried_until_it_is_sent(
    queue, telegram_api, linked_caller, quick_retries
):
    # given
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=2)

    # when
    _create(linked_caller(), response_target="all_linked")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.last_error) == ("sent", 3, "")
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]
    assert len(telegram_api.calls_to("sendMessage")) == 3
    error = "Telegram unreachable: NetworkError: Internal Server Error"
    assert _attempts(task) == [(1, "retry", error), (2, "retry", error), (3, "sent", "")]
    assert DeliveryAttempt.objects.filter(finished_at__isnull=True).exists() is False


def test_a_push_that_keeps_failing_fails_after_its_last_attempt(
    queue, telegram_api, linked_caller, quick_retries
):
    # given
    quick_retries.DELIVERY_MAX_ATTEMPTS = 3
    telegram_api.fail_next("sendMessage", 502, "Bad Gateway", times=5)

    # when
    _create(linked_caller(), response_target="all_linked")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.max_attempts) == ("failed", 3, 3)
    assert task.last_error == "Telegram unreachable: NetworkError: Bad Gateway"
    assert [outcome for _, outcome, _ in _attempts(task)] == ["retry", "retry", "failed"]
    assert telegram_api.sent_texts(PRIVATE) == []


def test_a_push_waits_as_long_as_telegram_asks(queue, telegram_api, linked_caller):
    # given
    telegram_api.fail_next(
        "sendMessage", 429, "Too Many Requests: retry after 1", parameters={"retry_after": 1}
    )

    # when
    _create(linked_caller(), response_target="all_linked")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts) == ("sent", 2)
    refused, sent = telegram_api.calls_to("sendMessage")
    assert (refused.failed, sent.failed) == (True, False)
    assert sent.at - refused.at >= 1
    assert _attempts(task)[0] == (1, "retry", "Telegram asked to wait 1 s")
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


@pytest.mark.parametrize(
    ("status", "description", "error"),
    [
        (
            403,
            "Forbidden: bot was blocked by the user",
            "Telegram refused: Forbidden: bot was blocked by the user",
        ),
        (400, "Bad Request: chat not found", "Telegram rejected the message: Chat not found"),
    ],
)
def test_a_push_telegram_refuses_for_good_fails_at_once(
    queue, telegram_api, linked_caller, quick_retries, status, description, error
):
    # given
    telegram_api.fail_next("sendMessage", status, description, times=3)

    # when
    _create(linked_caller(), response_target="all_linked")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.last_error) == ("failed", 1, error)
    assert _attempts(task) == [(1, "failed", error)]
    assert len(telegram_api.calls_to("sendMessage")) == 1
    assert telegram_api.sent_texts() == []
    # A person who blocked the bot cannot be reached there; a missing chat says nothing of them.
    assert (task.identity.unreachable_reason == error) is (status == 403)


def test_a_push_follows_a_group_that_moved_to_a_supergroup(queue, telegram_api, api_key_factory):
    # given
    _, raw_key = api_key_factory(is_trusted=True)
    telegram_api.fail_next(
        "sendMessage",
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        parameters={"migrate_to_chat_id": -1001234},
    )

    # when
    _create(raw_key, response_target="telegram:-4321")
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.locator) == (
        "sent",
        2,
        {"chat_id": -1001234, "thread_id": None},
    )
    assert task.max_attempts == DeliveryTask._meta.get_field("max_attempts").default + 1
    assert _attempts(task)[0] == (1, "retry", "the group moved to chat -1001234")
    assert telegram_api.sent_texts(-4321) == []
    assert telegram_api.sent_texts(-1001234) == [_answer()]


def test_a_long_answer_is_sent_in_parts_and_a_retry_sends_only_the_rest(
    queue, telegram_api, linked_caller, quick_retries
):
    # given: Telegram fails the call after the first part's
    text = " ".join(["lorem ipsum dolor"] * 500)
    parts = render_reply(
        f'You said: "{text}". That is the first thing you told me. '
        "We have exchanged 1 message(s) so far."
    )
    part_sent = _Progress.part_sent

    async def then_fail_once(progress, *, last):
        await part_sent(progress, last=last)
        if progress.sent_parts == 1 and progress.task.attempts == 1:
            telegram_api.fail_next("sendMessage", 500, "Internal Server Error")

    # when
    with mock.patch.object(_Progress, "part_sent", autospec=True, side_effect=then_fail_once):
        _create(linked_caller(), input=text, response_target="all_linked")
        queue.run()

    # then
    assert len(parts) == 3
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.sent_parts) == ("sent", 2, 3)
    assert telegram_api.sent_texts(PRIVATE) == [part.html for part in parts]
    assert len(telegram_api.calls_to("sendMessage")) == 4  # one of them refused


class WorkerDied(BaseException):
    """The worker process ends abruptly (nothing in it catches this)."""


def test_a_long_message_interrupted_then_retried_sends_only_the_parts_not_accepted(
    queue, telegram_api, linked_caller
):
    # given: the worker dies right after Telegram accepted the first of three parts
    text = " ".join(["lorem ipsum dolor"] * 500)
    part_sent = _Progress.part_sent

    async def then_die(progress, *, last):
        await part_sent(progress, last=last)
        if progress.task.attempts == 1:
            raise WorkerDied

    with mock.patch.object(_Progress, "part_sent", autospec=True, side_effect=then_die):
        _create(linked_caller(), input=text, response_target="all_linked")
        queue.run_next()  # the run
        with pytest.raises(WorkerDied):
            queue.run_next()
    DeliveryTask.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when: the sweeper finds it, and an operator retries it
    assert sweep_deliveries() == (1, 0)
    assert DeliveryTask.objects.get().status == "interrupted"
    retry_deliveries(tasks=DeliveryTask.objects.all())
    queue.run()

    # then: each part arrived once
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.sent_parts) == ("sent", 2, 3)
    sent = telegram_api.sent_texts(PRIVATE)
    assert len(sent) == len(set(sent)) == 3
    assert [outcome for _, outcome, _ in _attempts(task)] == ["interrupted", "sent"]


def test_a_push_whose_lease_ran_out_while_it_was_sent_is_recorded_sent(
    queue, telegram_api, linked_caller
):
    # given: the worker stalls past its lease while Telegram takes the message, and the
    # sweeper (in another worker) gives the task up as interrupted
    part_sent = _Progress.part_sent

    async def stall(progress, *, last):
        await part_sent(progress, last=last)
        later = timezone.now() + timedelta(minutes=5)
        assert await sync_to_async(sweep_deliveries)(now=later) == (1, 0)

    # when
    with mock.patch.object(_Progress, "part_sent", autospec=True, side_effect=stall):
        _create(linked_caller(), response_target="all_linked")
        queue.run()

    # then: the worker that sent it records the truth, so no operator sends it again
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.last_error) == ("sent", 1, "")
    assert _attempts(task) == [(1, "sent", "")]
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


@pytest.fixture
def impatient_bot(settings):
    """The Bot API client gives up on an answer after 0.2 s (python-telegram-bot's default: 5 s)."""

    @contextlib.asynccontextmanager
    async def job_bot():
        bot = Bot(
            settings.TELEGRAM_BOT_TOKEN,
            base_url=settings.TELEGRAM_API_BASE_URL,
            request=AiohttpRequest(connections=1, read=0.2),
        )
        try:
            yield bot
        finally:
            await bot.request.shutdown()

    with mock.patch("channels_app.telegram.push.job_bot", job_bot):
        yield


def test_a_push_telegram_answers_too_late_is_not_sent_again(
    queue, telegram_api, linked_caller, quick_retries, impatient_bot
):
    # given: Telegram takes the message, but answers after the client stopped waiting
    telegram_api.set_latency(1, method="sendMessage")
    try:
        # when
        _create(linked_caller(), response_target="all_linked")
        queue.run()
    finally:
        telegram_api.set_latency(0, method="sendMessage")

    # then: it may have arrived (it did), so it is not sent again; an operator may retry it
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts) == ("failed", 1)
    assert task.last_error.startswith("Telegram did not answer in time: the message may have")
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


# --- the destination may no longer be reached ----------------------------------------------------


def _revoke_link(identity):
    identity.grants.get().revoke(by="ops@example.com")


def _block(identity):
    identity.block(by="ops@example.com")


def _deny_by_policy(identity):
    staff = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(
        allowlist=staff, kind=AllowlistEntry.Kind.NATIVE_ID, channel="telegram", value="999"
    )
    ChannelPolicy.objects.create(channel="telegram", allowlist=staff)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_revoke_link, "not delivered: the person's link to the caller was revoked"),
        (
            _block,
            "not delivered: the telegram policy refuses telegram:1111111: "
            "telegram:1111111 is blocked by ops@example.com",
        ),
        (
            _deny_by_policy,
            "not delivered: the telegram policy refuses telegram:1111111: "
            "not allowed by allowlist 'staff'",
        ),
    ],
)
def test_a_push_the_destination_may_no_longer_receive_fails_with_the_reason(
    queue, telegram_api, linked_caller, change, reason
):
    # given: the run ended and its push is queued
    _create(linked_caller(), response_target="all_linked")
    queue.run_next()
    assert len(queue.pushes) == 1

    # when: the destination changes before the push
    change(Identity.objects.get(channel="telegram"))
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.last_error) == ("failed", 1, reason)
    assert _attempts(task) == [(1, "failed", reason)]
    assert telegram_api.calls_to("sendMessage") == []


# --- recovery and operators ----------------------------------------------------------------------


@pytest.fixture
def queued(db):
    with mock.patch("delivery.services.async_task", autospec=True) as async_task:
        yield async_task


def _queued_ids(async_task):
    return sorted(call.args[1] for call in async_task.call_args_list)


def test_sweep_marks_a_task_whose_worker_died_mid_push_interrupted(queued, delivery_task_factory):
    # given: one task whose worker stopped renewing its lease, one whose worker is alive
    now = timezone.now()
    lost = delivery_task_factory(
        status="sending",
        attempts=1,
        lease_owner="dead",
        lease_expires_at=now - timedelta(seconds=1),
    )
    alive = delivery_task_factory(
        status="sending",
        attempts=1,
        lease_owner="alive",
        lease_expires_at=now + timedelta(minutes=1),
    )

    # when
    swept = sweep_deliveries(now=now)

    # then
    assert swept == (1, 0)
    lost.refresh_from_db()
    assert (lost.status, lost.last_error, lost.lease_owner, lost.lease_expires_at) == (
        "interrupted",
        INTERRUPTED,
        "",
        None,
    )
    assert _attempts(lost) == [(1, "interrupted", INTERRUPTED)]
    alive.refresh_from_db()
    assert (alive.status, alive.lease_owner) == ("sending", "alive")
    assert _attempts(alive) == []  # an attempt is recorded when it ends
    assert queued.called is False


def test_sweep_queues_again_a_pending_task_due_for_a_while(queued, delivery_task_factory):
    # given
    now = timezone.now()
    due = delivery_task_factory(next_attempt_at=now - timedelta(minutes=5))
    delivery_task_factory(next_attempt_at=now)  # its own queue task is on the way
    delivery_task_factory(next_attempt_at=now + timedelta(minutes=5))
    delivery_task_factory(status="failed", next_attempt_at=now - timedelta(minutes=5))

    # when
    swept = sweep_deliveries(now=now)

    # then
    assert swept == (0, 1)
    queued.assert_called_once_with(PUSH, due.pk, q_options={"group": "delivery"})


def test_retry_sends_ended_tasks_again_with_fresh_attempts(
    queued, delivery_task_factory, django_capture_on_commit_callbacks, settings
):
    # given: a task in each status
    tasks = {
        status: delivery_task_factory(status=status, attempts=6, max_attempts=6)
        for status in DeliveryTask.Status.values
    }

    # when
    with django_capture_on_commit_callbacks(execute=True):
        retried = retry_deliveries(tasks=DeliveryTask.objects.all())

    # then
    assert retried == 3
    again = ("failed", "cancelled", "interrupted")
    assert _queued_ids(queued) == sorted(tasks[status].pk for status in again)
    for status, task in tasks.items():
        task.refresh_from_db()
        if status in again:
            assert (task.status, task.max_attempts) == (
                "pending",
                6 + settings.DELIVERY_MAX_ATTEMPTS,
            )
        else:
            assert (task.status, task.max_attempts) == (status, 6)


def test_cancel_stops_only_tasks_not_yet_being_sent(queued, delivery_task_factory):
    # given
    tasks = {status: delivery_task_factory(status=status) for status in DeliveryTask.Status.values}

    # when
    cancelled = cancel_deliveries(tasks=DeliveryTask.objects.all())

    # then
    assert cancelled == 1
    statuses = dict(DeliveryTask.objects.values_list("pk", "status"))
    assert statuses == {
        task.pk: "cancelled" if status == "pending" else status for status, task in tasks.items()
    }
    assert queued.called is False


def test_a_retried_task_is_sent_once_more(queue, telegram_api, linked_caller):
    # given: a push that failed for good
    telegram_api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
    _create(linked_caller(), response_target="all_linked")
    queue.run()
    assert DeliveryTask.objects.get().status == "failed"

    # when: the person unblocked the bot and an operator retries
    assert retry_deliveries(tasks=DeliveryTask.objects.all()) == 1
    queue.run()

    # then
    task = DeliveryTask.objects.get()
    assert (task.status, task.attempts, task.last_error) == ("sent", 2, "")
    assert [outcome for _, outcome, _ in _attempts(task)] == ["failed", "sent"]
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]
