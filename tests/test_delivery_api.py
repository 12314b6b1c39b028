"""The operator REST API for deliveries: staff tokens, lists, one delivery, bulk retry and
cancel, and the dashboard's figures."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from delivery.models import DeliveryAttempt, DeliveryTask
from tests.test_delivery_admin import make_delivery, make_run

LIST = reverse("delivery:api_delivery_list")
RETRY = reverse("delivery:api_delivery_retry")
CANCEL = reverse("delivery:api_delivery_cancel")
STATS = reverse("delivery:api_delivery_stats")


class Api:
    """Django's test client with a token in every request."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Token {token}"} if token else {}

    def get(self, path: str, params: dict | None = None):
        return self.client.get(path, params or {}, headers=self.headers)

    def post(self, path: str, body: dict):
        return self.client.post(path, body, content_type="application/json", headers=self.headers)


@pytest.fixture
def token_for(db, django_user_model):
    def make(*, is_staff=True, is_superuser=False, permissions=()) -> str:
        user = django_user_model.objects.create_user(
            f"user{django_user_model.objects.count()}",
            is_staff=is_staff,
            is_superuser=is_superuser,
        )
        user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
        return Token.objects.create(user=user).key

    return make


@pytest.fixture
def api(token_for) -> Api:
    """A staff member's token (a superuser's: every permission)."""
    return Api(token_for(is_superuser=True))


@pytest.fixture
def queued():
    with mock.patch("delivery.services.async_task", autospec=True) as async_task:
        yield async_task


# --- who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [LIST, STATS])
def test_without_a_token_it_answers_401(db, path):
    page = Api(None).get(path)

    assert page.status_code == 401
    assert page["WWW-Authenticate"] == "Token"


def test_a_wrong_token_is_refused(db):
    assert Api("not-a-token").get(LIST).status_code == 401


def test_a_token_of_someone_not_staff_is_refused(token_for, queued):
    # given
    failed = make_delivery(status=DeliveryTask.Status.FAILED)
    api = Api(token_for(is_staff=False, permissions=["view_deliverytask", "change_deliverytask"]))

    # when / then
    assert api.get(LIST).status_code == 403
    assert api.post(RETRY, {"ids": [failed.pk]}).status_code == 403
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    queued.assert_not_called()


def test_staff_need_the_permission_to_view_deliveries(token_for):
    assert Api(token_for()).get(LIST).status_code == 403
    assert Api(token_for(permissions=["view_deliverytask"])).get(LIST).status_code == 200


def test_staff_who_may_only_view_cannot_retry_or_cancel(token_for, queued):
    # given
    failed = make_delivery(status=DeliveryTask.Status.FAILED)
    pending = make_delivery()
    api = Api(token_for(permissions=["view_deliverytask"]))

    # when
    retried = api.post(RETRY, {"ids": [failed.pk]})
    cancelled = api.post(CANCEL, {"ids": [pending.pk]})

    # then
    assert (retried.status_code, cancelled.status_code) == (403, 403)
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    assert DeliveryTask.objects.get(pk=pending.pk).status == DeliveryTask.Status.PENDING
    queued.assert_not_called()


def test_the_admin_session_works_too(admin_client, db):
    assert admin_client.get(LIST).status_code == 200


# --- reading ------------------------------------------------------------------------------------


def test_the_list_is_newest_first_and_pages_by_cursor(api):
    # given
    now = timezone.now()
    tasks = [make_delivery(created_at=now - timedelta(minutes=ago)) for ago in range(5)]

    # when
    first = api.get(LIST, {"limit": 2}).json()
    second = api.client.get(first["next"], headers=api.headers).json()

    # then
    assert [item["id"] for item in first["results"]] == [tasks[0].pk, tasks[1].pk]
    assert [item["id"] for item in second["results"]] == [tasks[2].pk, tasks[3].pk]
    assert "count" not in first
    item = first["results"][0]
    assert item["response_id"] == f"resp_{tasks[0].run.public_id.hex}"
    assert item["destination"] == "telegram:4242"
    assert "text" not in item


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "failed"}, {"failed"}),
        ({"channel": "other"}, {"other"}),
        ({"phase": "echo"}, {"echo"}),
        ({"status": "pending", "channel": "telegram"}, {"pending"}),
    ],
)
def test_the_list_filters(api, params, expected):
    tasks = {
        "failed": make_delivery(status=DeliveryTask.Status.FAILED),
        "other": make_delivery(channel="other", status=DeliveryTask.Status.SENT),
        "echo": make_delivery(phase=DeliveryTask.Phase.ECHO, status=DeliveryTask.Status.SENT),
        "pending": make_delivery(),
    }

    page = api.get(LIST, params)

    assert page.status_code == 200
    assert {item["id"] for item in page.json()["results"]} == {tasks[name].pk for name in expected}


def test_an_unknown_status_is_a_400(api):
    page = api.get(LIST, {"status": "lost"})

    assert page.status_code == 400
    assert "status" in page.json()


def test_one_delivery_with_its_attempts(api):
    # given
    task = make_delivery(
        status=DeliveryTask.Status.FAILED, attempts=2, last_error="Telegram refused: blocked"
    )
    now = timezone.now()
    for number, outcome, error in (
        (1, DeliveryAttempt.Outcome.RETRY, "Telegram unreachable: TimedOut"),
        (2, DeliveryAttempt.Outcome.FAILED, "Telegram refused: blocked"),
    ):
        DeliveryAttempt.objects.create(
            task=task, number=number, started_at=now, finished_at=now, outcome=outcome, error=error
        )

    # when
    page = api.get(reverse("delivery:api_delivery_detail", args=[task.pk]))

    # then
    assert page.status_code == 200
    body = page.json()
    assert (body["id"], body["status"], body["text"], body["attempts"]) == (
        task.pk,
        "failed",
        "the answer",
        2,
    )
    assert [(each["number"], each["outcome"], each["error"]) for each in body["attempt_log"]] == [
        (1, "retry", "Telegram unreachable: TimedOut"),
        (2, "failed", "Telegram refused: blocked"),
    ]


def test_an_unknown_delivery_is_a_404(api):
    assert api.get(reverse("delivery:api_delivery_detail", args=[999999])).status_code == 404


def test_the_stats_are_the_dashboards_figures(api):
    # given
    make_delivery(status=DeliveryTask.Status.SENT, sent_at=timezone.now())
    make_delivery(status=DeliveryTask.Status.FAILED, last_error="boom")
    make_delivery(created_at=timezone.now() - timedelta(hours=3))

    # when
    body = api.get(STATS).json()

    # then
    assert body["by_status"]["sent"] == body["by_status"]["failed"] == 1
    assert body["failure_rate"] == 0.5
    assert body["pending"] == {"count": 1, "more": False}
    assert body["oldest_pending"]["age_seconds"] >= 3 * 3600
    assert body["latest_failures"][0]["last_error"] == "boom"
    assert len(body["per_minute"]) == 60


# --- acting -------------------------------------------------------------------------------------


def test_retry_retries_the_ended_deliveries_and_queues_them(
    api, queued, django_capture_on_commit_callbacks
):
    # given
    failed = make_delivery(status=DeliveryTask.Status.FAILED, attempts=6, max_attempts=6)
    sent = make_delivery(status=DeliveryTask.Status.SENT, run=make_run())

    # when
    with django_capture_on_commit_callbacks(execute=True):
        page = api.post(RETRY, {"ids": [failed.pk, sent.pk, 999999]})

    # then
    assert page.status_code == 200
    assert page.json() == {"retried": 1}
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.PENDING
    assert DeliveryTask.objects.get(pk=sent.pk).status == DeliveryTask.Status.SENT
    assert [call.args[1] for call in queued.call_args_list] == [failed.pk]


def test_cancel_cancels_the_pending_deliveries(api, queued):
    # given
    pending = make_delivery()
    failed = make_delivery(status=DeliveryTask.Status.FAILED)

    # when
    page = api.post(CANCEL, {"ids": [pending.pk, failed.pk]})

    # then
    assert page.json() == {"cancelled": 1}
    assert DeliveryTask.objects.get(pk=pending.pk).status == DeliveryTask.Status.CANCELLED
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    queued.assert_not_called()


@pytest.mark.parametrize("body", [{}, {"ids": []}, {"ids": ["x"]}, {"ids": list(range(1, 1002))}])
def test_bad_ids_are_a_400_and_change_nothing(api, queued, body):
    pending = make_delivery()

    page = api.post(CANCEL, body)

    assert page.status_code == 400
    assert "ids" in page.json()
    assert DeliveryTask.objects.get(pk=pending.pk).status == DeliveryTask.Status.PENDING


def test_a_get_cannot_retry(api, queued):
    failed = make_delivery(status=DeliveryTask.Status.FAILED)

    page = api.get(RETRY, {"ids": [failed.pk]})

    assert page.status_code == 405
    assert DeliveryTask.objects.get(pk=failed.pk).status == DeliveryTask.Status.FAILED
    queued.assert_not_called()
