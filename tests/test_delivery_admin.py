"""The delivery console: the admin's list, filters, search and actions, and the dashboard."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from afhost.models import Run
from delivery.models import DeliveryAttempt, DeliveryTask
from delivery.selectors import delivery_stats
from linking.models import Identity

CHANGELIST = "admin:delivery_deliverytask_changelist"
_keys = itertools.count()


def make_run(**fields) -> Run:
    fields.setdefault("channel", "responses")
    fields.setdefault("isolation_key", "api:key.test")
    fields.setdefault("status", Run.Status.COMPLETED)
    return Run.objects.create(**fields)


def make_delivery(*, run: Run | None = None, updated_at=None, **fields) -> DeliveryTask:
    """A DeliveryTask row as the services leave it; `updated_at` is set after saving."""
    now = timezone.now()
    fields.setdefault("channel", "telegram")
    fields.setdefault("locator", {"chat_id": 4242, "thread_id": None})
    fields.setdefault("phase", DeliveryTask.Phase.ANSWER)
    fields.setdefault("text", "the answer")
    fields.setdefault("status", DeliveryTask.Status.PENDING)
    fields.setdefault("next_attempt_at", now)
    fields.setdefault("created_at", now)
    task = DeliveryTask.objects.create(
        run=run or make_run(), idempotency_key=f"test:{next(_keys)}", **fields
    )
    if updated_at is not None:
        DeliveryTask.objects.filter(pk=task.pk).update(updated_at=updated_at)
        task.updated_at = updated_at
    return task


def _listed(page) -> set[int]:
    return {task.pk for task in page.context["cl"].result_list}


@pytest.fixture
def queued():
    """The ids the services queue for the workers (on commit)."""
    with mock.patch("delivery.services.async_task", autospec=True) as async_task:
        yield async_task


@pytest.fixture
def web(db) -> Client:
    """Django's test client (the root conftest's `client` is the OpenAI SDK's)."""
    return Client()


def _queued_ids(async_task) -> set[int]:
    return {call.args[1] for call in async_task.call_args_list}


# --- the list -----------------------------------------------------------------------------------


def test_the_changelist_renders_and_escapes_user_data(admin_client, db):
    # given
    make_delivery(status=DeliveryTask.Status.FAILED, last_error="Telegram said <script>x</script>")

    # when
    page = admin_client.get(reverse(CHANGELIST))

    # then
    assert page.status_code == 200
    assert b"Telegram said &lt;script&gt;x&lt;/script&gt;" in page.content
    assert b"<script>x</script>" not in page.content
    assert b'class="delivery-status"' in page.content


def test_the_changelist_makes_no_query_per_row(admin_client, db):
    # given
    identity = Identity.objects.create(
        channel="telegram", native_id="7", username="seven", isolation_key="telegram:7"
    )
    make_delivery(identity=identity)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(reverse(CHANGELIST)).status_code == 200
        return len(captured)

    few = queries()
    for _ in range(20):
        make_delivery(identity=identity, run=make_run())

    # then
    assert queries() == few


def test_the_changelist_counts_at_most_the_cap(admin_client, db, monkeypatch):
    # given
    monkeypatch.setattr("delivery.selectors.COUNT_CAP", 3)
    for _ in range(5):
        make_delivery()

    # when
    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(reverse(CHANGELIST))

    # then: no COUNT over the whole table, and the count says where it stopped
    assert page.context["cl"].result_count == 3
    assert b"3+ delivery tasks" in page.content
    counts = [query["sql"] for query in captured if "COUNT(" in query["sql"].upper()]
    assert counts
    assert all("LIMIT 4" in sql for sql in counts)


def test_the_status_filter_finds_failed_deliveries(admin_client, db):
    failed = make_delivery(status=DeliveryTask.Status.FAILED)
    make_delivery(status=DeliveryTask.Status.SENT)

    page = admin_client.get(reverse(CHANGELIST), {"status__exact": "failed"})

    assert _listed(page) == {failed.pk}


def test_the_overdue_filter_finds_pending_deliveries_due_over_a_minute_ago(admin_client, db):
    now = timezone.now()
    overdue = make_delivery(next_attempt_at=now - timedelta(minutes=2))
    make_delivery(next_attempt_at=now - timedelta(seconds=10))  # due just now
    make_delivery(status=DeliveryTask.Status.FAILED, next_attempt_at=now - timedelta(hours=1))

    page = admin_client.get(reverse(CHANGELIST), {"overdue": "yes"})

    assert _listed(page) == {overdue.pk}


@pytest.mark.parametrize(("over", "expected"), [("1", {"two", "four"}), ("3", {"four"})])
def test_the_attempts_filter_finds_deliveries_tried_more_than_n_times(
    admin_client, db, over, expected
):
    tasks = {
        name: make_delivery(attempts=attempts)
        for name, attempts in (("one", 1), ("two", 2), ("four", 4))
    }

    page = admin_client.get(reverse(CHANGELIST), {"attempts_over": over})

    assert _listed(page) == {tasks[name].pk for name in expected}


def test_the_channel_and_phase_filters(admin_client, db):
    echo = make_delivery(phase=DeliveryTask.Phase.ECHO)
    answer = make_delivery(phase=DeliveryTask.Phase.ANSWER)
    make_delivery(channel="other")

    by_channel = admin_client.get(reverse(CHANGELIST), {"channel": "telegram"})
    by_phase = admin_client.get(reverse(CHANGELIST), {"phase__exact": "echo"})

    assert b'href="?channel=telegram"' in by_channel.content  # offered: it pushes
    assert _listed(by_channel) == {echo.pk, answer.pk}
    assert _listed(by_phase) == {echo.pk}


@pytest.mark.parametrize(
    ("age", "expected"),
    [("hour", {"now"}), ("day", {"now", "hours"}), ("week", {"now", "hours", "days"})],
)
def test_the_age_filter(admin_client, db, age, expected):
    now = timezone.now()
    tasks = {
        name: make_delivery(created_at=now - ago)
        for name, ago in (
            ("now", timedelta(minutes=5)),
            ("hours", timedelta(hours=5)),
            ("days", timedelta(days=5)),
            ("weeks", timedelta(days=30)),
        )
    }

    page = admin_client.get(reverse(CHANGELIST), {"age": age})

    assert _listed(page) == {tasks[name].pk for name in expected}


def test_search_by_response_id_finds_the_runs_deliveries(admin_client, db):
    # given
    run = make_run()
    echo = make_delivery(run=run, phase=DeliveryTask.Phase.ECHO)
    answer = make_delivery(run=run)
    make_delivery()

    # when
    page = admin_client.get(reverse(CHANGELIST), {"q": f"resp_{run.public_id.hex}"})

    # then
    assert _listed(page) == {echo.pk, answer.pk}
    assert f"resp_{run.public_id.hex}".encode() in page.content


@pytest.mark.parametrize("term", ["1111111", "@testuser", "testuser", "TestUser"])
def test_search_by_identity(admin_client, db, term):
    identity = Identity.objects.create(
        channel="telegram",
        native_id="1111111",
        username="testuser",
        isolation_key="telegram:1111111",
    )
    theirs = make_delivery(identity=identity, locator={"chat_id": 1111111, "thread_id": None})
    make_delivery()

    page = admin_client.get(reverse(CHANGELIST), {"q": term})

    assert _listed(page) == {theirs.pk}


def test_search_by_chat_id_finds_the_chats_deliveries(admin_client, db):
    group = make_delivery(locator={"chat_id": -100123, "thread_id": 7})
    make_delivery(locator={"chat_id": 4242, "thread_id": None})

    page = admin_client.get(reverse(CHANGELIST), {"q": "-100123"})

    assert _listed(page) == {group.pk}


def test_a_search_that_matches_nothing_lists_nothing(admin_client, db):
    make_delivery()

    page = admin_client.get(reverse(CHANGELIST), {"q": "resp_nothing"})

    assert page.status_code == 200
    assert _listed(page) == set()


# --- one delivery -------------------------------------------------------------------------------


def test_the_detail_is_read_only_and_shows_the_attempts_with_their_errors(admin_client, db):
    # given
    task = make_delivery(status=DeliveryTask.Status.FAILED, attempts=2, last_error="Bad Gateway")
    now = timezone.now()
    for number, error in ((1, "Telegram unreachable: <timeout>"), (2, "Bad Gateway")):
        DeliveryAttempt.objects.create(
            task=task,
            number=number,
            started_at=now,
            finished_at=now,
            outcome=DeliveryAttempt.Outcome.FAILED,
            error=error,
        )

    # when
    page = admin_client.get(reverse("admin:delivery_deliverytask_change", args=[task.pk]))

    # then
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b"Telegram unreachable: &lt;timeout&gt;" in page.content
    assert b"Bad Gateway" in page.content
    assert b'id="attempt_log-group"' in page.content


def test_deliveries_cannot_be_added_or_deleted_in_the_admin(admin_client, db):
    task = make_delivery()

    added = admin_client.get(reverse("admin:delivery_deliverytask_add"))
    deleted = admin_client.post(
        reverse("admin:delivery_deliverytask_delete", args=[task.pk]), {"post": "yes"}
    )

    assert added.status_code == 403
    assert deleted.status_code == 403
    assert DeliveryTask.objects.filter(pk=task.pk).exists() is True


# --- actions ------------------------------------------------------------------------------------


def test_the_retry_action_retries_ended_deliveries_and_queues_them(
    admin_client, db, queued, django_capture_on_commit_callbacks
):
    # given
    failed = make_delivery(status=DeliveryTask.Status.FAILED, attempts=6, max_attempts=6)
    interrupted = make_delivery(status=DeliveryTask.Status.INTERRUPTED, attempts=1)
    sent = make_delivery(status=DeliveryTask.Status.SENT)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(
            reverse(CHANGELIST),
            {
                "action": "retry_selected",
                "_selected_action": [failed.pk, interrupted.pk, sent.pk],
            },
            follow=True,
        )

    # then
    assert page.redirect_chain[0][1] == 302
    assert "Retried 2 delivery(ies)." in [str(message) for message in page.context["messages"]]
    failed.refresh_from_db()
    interrupted.refresh_from_db()
    assert failed.status == interrupted.status == DeliveryTask.Status.PENDING
    assert failed.max_attempts > failed.attempts
    assert DeliveryTask.objects.get(pk=sent.pk).status == DeliveryTask.Status.SENT
    assert _queued_ids(queued) == {failed.pk, interrupted.pk}


def test_the_cancel_action_cancels_pending_deliveries(admin_client, db, queued):
    # given
    pending = make_delivery()
    sending = make_delivery(status=DeliveryTask.Status.SENDING)
    sent = make_delivery(status=DeliveryTask.Status.SENT)

    # when
    page = admin_client.post(
        reverse(CHANGELIST),
        {"action": "cancel_selected", "_selected_action": [pending.pk, sending.pk, sent.pk]},
        follow=True,
    )

    # then
    assert "Cancelled 1 delivery(ies)." in [str(message) for message in page.context["messages"]]
    statuses = dict(DeliveryTask.objects.values_list("pk", "status"))
    assert statuses == {
        pending.pk: DeliveryTask.Status.CANCELLED,
        sending.pk: DeliveryTask.Status.SENDING,
        sent.pk: DeliveryTask.Status.SENT,
    }
    queued.assert_not_called()


def test_the_actions_apply_to_every_row_the_filter_selects(admin_client, db, queued):
    # given: two failures and a pending delivery
    failures = [make_delivery(status=DeliveryTask.Status.FAILED) for _ in range(2)]
    pending = make_delivery()

    # when: "select all" on the failed filter
    page = admin_client.post(
        reverse(CHANGELIST) + "?status__exact=failed",
        {"action": "retry_selected", "select_across": "1", "_selected_action": [failures[0].pk]},
        follow=True,
    )

    # then
    assert "Retried 2 delivery(ies)." in [str(message) for message in page.context["messages"]]
    assert DeliveryTask.objects.get(pk=pending.pk).status == DeliveryTask.Status.PENDING


def test_a_get_cannot_change_state(admin_client, db, queued):
    # given
    failed = make_delivery(status=DeliveryTask.Status.FAILED)
    pending = make_delivery()

    # when: the actions' parameters in GETs, to the list and to the dashboard
    for action in ("retry_selected", "cancel_selected"):
        params = {"action": action, "_selected_action": [failed.pk, pending.pk], "index": "0"}
        # (unknown lookups: the admin redirects to the plain list)
        assert admin_client.get(reverse(CHANGELIST), params).status_code in (200, 302)
    assert admin_client.get(reverse("delivery:dashboard"), params).status_code == 200

    # then
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    assert DeliveryTask.objects.get(pk=pending.pk).status == DeliveryTask.Status.PENDING
    queued.assert_not_called()


def test_a_staff_member_who_may_only_view_deliveries_cannot_retry(web, queued):
    # given
    viewer = _staff("viewer", "view_deliverytask")
    web.force_login(viewer)
    failed = make_delivery(status=DeliveryTask.Status.FAILED)

    # when
    listing = web.get(reverse(CHANGELIST))
    web.post(
        reverse(CHANGELIST),
        {"action": "retry_selected", "_selected_action": [failed.pk], "index": "0"},
    )

    # then
    assert listing.status_code == 200
    assert b"retry_selected" not in listing.content
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    queued.assert_not_called()


# --- the dashboard ------------------------------------------------------------------------------


def _staff(username: str, *permissions: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    return user


def test_the_figures_on_a_known_set_of_deliveries(db):
    # given: at 12:30:30, deliveries scheduled over the last hour (and some before it)
    now = timezone.now().replace(hour=12, minute=30, second=30, microsecond=0)
    minute = now.replace(second=0)
    # 20 sent on telegram, 1 to 20 s after they were scheduled, in the minutes 12:10 .. 12:29
    for index in range(20):
        scheduled = minute - timedelta(minutes=20 - index)
        make_delivery(
            status=DeliveryTask.Status.SENT,
            created_at=scheduled,
            sent_at=scheduled + timedelta(seconds=index + 1),
        )
    # 5 failed on "other": 3 that failed at 12:25, 2 at 12:29
    for failed_at in [minute - timedelta(minutes=5)] * 3 + [minute - timedelta(minutes=1)] * 2:
        make_delivery(
            channel="other",
            status=DeliveryTask.Status.FAILED,
            created_at=failed_at - timedelta(seconds=30),
            updated_at=failed_at + timedelta(seconds=10),
        )
    # open work: one due now, one overdue since 5 minutes, the oldest pending scheduled 3 h ago
    make_delivery(created_at=now - timedelta(minutes=1), next_attempt_at=now)
    make_delivery(
        created_at=now - timedelta(minutes=10), next_attempt_at=now - timedelta(minutes=5)
    )
    oldest = make_delivery(created_at=now - timedelta(hours=3), next_attempt_at=now)
    make_delivery(status=DeliveryTask.Status.SENDING, created_at=now - timedelta(seconds=5))
    # before the window: not in the figures of the last hour
    make_delivery(
        channel="other",
        status=DeliveryTask.Status.FAILED,
        created_at=now - timedelta(hours=2),
        updated_at=now - timedelta(hours=2),
    )
    make_delivery(
        status=DeliveryTask.Status.SENT,
        created_at=now - timedelta(hours=2),
        sent_at=now - timedelta(hours=2) + timedelta(seconds=500),
    )

    # when
    stats = delivery_stats(now=now)

    # then
    assert stats.since == now - timedelta(hours=1)
    assert stats.counts == {
        "telegram": {"sent": 20, "pending": 2, "sending": 1},
        "other": {"failed": 5},
    }
    assert stats.scheduled == 28
    assert stats.failure_rate == 5 / 25
    assert stats.p95_seconds == 19.0  # nearest rank: the 19th of 1 .. 20 s
    assert len(stats.minutes) == 60
    assert stats.minutes[0].start == minute - timedelta(minutes=59)
    assert stats.minutes[-1].start == minute
    per_minute = {each.start: (each.sent, each.failed) for each in stats.minutes}
    for index in range(20):
        assert per_minute[minute - timedelta(minutes=20 - index)][0] == 1
    assert per_minute[minute - timedelta(minutes=5)] == (1, 3)
    assert per_minute[minute - timedelta(minutes=1)] == (1, 2)
    assert per_minute[minute] == (0, 0)
    assert sum(sent for sent, _ in per_minute.values()) == 20
    assert sum(failed for _, failed in per_minute.values()) == 5
    assert (stats.pending.count, stats.overdue.count, stats.sending.count) == (3, 1, 1)
    assert stats.oldest_pending.pk == oldest.pk
    assert [task.channel for task in stats.latest_failures] == ["other"] * 6


def test_the_figures_of_an_idle_hour(db):
    stats = delivery_stats()

    assert (stats.scheduled, stats.failure_rate, stats.p95_seconds) == (0, None, None)
    assert stats.oldest_pending is None
    assert stats.latest_failures == []
    assert stats.busiest_minute == 0


def test_the_dashboard_shows_the_figures_and_the_latest_failures(admin_client, db):
    # given
    make_delivery(status=DeliveryTask.Status.SENT, sent_at=timezone.now())
    failed = make_delivery(
        status=DeliveryTask.Status.FAILED, last_error="Telegram refused: <bot was blocked>"
    )
    pending = make_delivery(created_at=timezone.now() - timedelta(minutes=3))

    # when
    page = admin_client.get(reverse("delivery:dashboard"))

    # then
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="figure-failure-rate">50.0 %<' in text
    assert "Telegram refused: &lt;bot was blocked&gt;" in text
    assert reverse("admin:delivery_deliverytask_change", args=[failed.pk]) in text
    assert reverse("admin:delivery_deliverytask_change", args=[pending.pk]) in text
    assert f"{reverse(CHANGELIST)}?status__exact=failed" in text
    assert 'data-url="/admin/delivery/dashboard.json"' in text
    assert text.count('class="bar"') == 60


def test_the_dashboard_json_has_the_figures_and_their_rendering(admin_client, db):
    # given
    make_delivery(status=DeliveryTask.Status.FAILED, last_error="boom")

    # when
    page = admin_client.get(reverse("delivery:dashboard_json"))

    # then
    assert page.status_code == 200
    body = json.loads(page.content)
    assert body["stats"]["by_status"]["failed"] == 1
    assert body["stats"]["latest_failures"][0]["last_error"] == "boom"
    assert len(body["stats"]["per_minute"]) == 60
    assert 'id="latest-failures"' in body["html"]
    assert "<html" not in body["html"]


def test_the_admin_index_links_the_dashboard(admin_client, db):
    page = admin_client.get(reverse("admin:index"))

    assert reverse("delivery:dashboard").encode() in page.content


@pytest.mark.parametrize("name", ["delivery:dashboard", "delivery:dashboard_json"])
def test_the_dashboard_is_for_staff_only(web, django_user_model, name):
    url = reverse(name)
    # anonymous: to the admin login
    anonymous = web.get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("admin:login"))
    # signed in, not staff: to the admin login too
    web.force_login(django_user_model.objects.create_user("someone"))
    assert web.get(url).status_code == 302
    # staff without the permission to view deliveries: refused
    web.force_login(_staff("clerk"))
    assert web.get(url).status_code == 403
    # staff who may view deliveries
    web.force_login(_staff("viewer", "view_deliverytask"))
    assert web.get(url).status_code == 200
