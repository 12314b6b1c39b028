"""In a real headless Chromium: an operator finds a failed delivery on the dashboard, reads why
it failed, and retries it; against a live daphne server, a live worker and the fake Telegram
Bot API.

Screenshots land in $TMPDIR/afhost-browser/ for a person to look at.
"""

import time

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from afhost.models import Run
from delivery.models import DeliveryAttempt, DeliveryTask
from tests.test_browser import PASSWORD, _screenshot, _serve_static_files

CHAT = 5555555
ERROR = "Telegram unreachable: NetworkError: Bad Gateway"


@pytest.fixture
def afhost(live_db, telegram_api, live_server_factory) -> str:
    """A live server (it does not inherit the DJANGO_ALLOW_ASYNC_UNSAFE the browser needs)."""
    return live_server_factory(DJANGO_ALLOW_ASYNC_UNSAFE="")


@pytest.fixture
def operator(page, afhost, django_user_model):
    """A browser page signed in to the admin as an operator."""
    django_user_model.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    _serve_static_files(page, afhost)
    page.goto(f"{afhost}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{afhost}/admin/")
    return page


def _failed_delivery(text: str, *, key: str) -> DeliveryTask:
    """An answer of a completed run that could not be pushed to a Telegram chat."""
    now = timezone.now()
    run = Run.objects.create(
        channel="responses", isolation_key="api:key.browser", status=Run.Status.COMPLETED
    )
    task = DeliveryTask.objects.create(
        run=run,
        channel="telegram",
        locator={"chat_id": CHAT, "thread_id": None},
        phase=DeliveryTask.Phase.ANSWER,
        text=text,
        idempotency_key=key,
        status=DeliveryTask.Status.FAILED,
        attempts=1,
        max_attempts=1,
        next_attempt_at=now,
        last_error=ERROR,
    )
    DeliveryAttempt.objects.create(
        task=task,
        number=1,
        started_at=now,
        finished_at=now,
        outcome=DeliveryAttempt.Outcome.FAILED,
        error=ERROR,
    )
    return task


def _wait_for_status(task: DeliveryTask, status: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while DeliveryTask.objects.get(pk=task.pk).status != status:
        assert time.monotonic() < deadline, DeliveryTask.objects.get(pk=task.pk).status
        time.sleep(0.1)


def test_an_operator_retries_a_failed_delivery_from_the_dashboard(
    operator, afhost, cluster_factory, telegram_api
):
    # given: a worker, and an answer that failed to reach its chat
    page = operator
    cluster_factory(DJANGO_ALLOW_ASYNC_UNSAFE="")
    task = _failed_delivery("The answer that got lost.", key="browser:retry")
    change_url = f"{afhost}{reverse('admin:delivery_deliverytask_change', args=[task.pk])}"

    # when: the operator opens the dashboard from the admin index
    page.reload()
    _screenshot(page, "delivery-admin-index")
    page.get_by_role("link", name="Delivery dashboard").click()
    expect(page).to_have_url(f"{afhost}/admin/delivery/dashboard/")

    # then: the failure is among the latest, with its error
    expect(page.locator("#figure-failed")).to_have_text("1")
    failures = page.locator("#latest-failures")
    expect(failures).to_contain_text(ERROR)
    _screenshot(page, "delivery-dashboard")

    # when: they open it
    failures.get_by_role("link", name=f"#{task.pk}").click()

    # then: its attempts, with their errors
    expect(page).to_have_url(change_url)
    expect(page.locator(".field-status_badge")).to_contain_text("Failed")
    expect(page.locator("#attempt_log-group")).to_contain_text(ERROR)
    expect(page.locator("input[name=_save]")).to_have_count(0)
    _screenshot(page, "delivery-failed")

    # when: they retry it from the list of failures
    page.go_back()
    page.locator("#all-failures").click()
    page.check(f"input[name=_selected_action][value='{task.pk}']")
    page.select_option("select[name=action]", "retry_selected")
    _screenshot(page, "delivery-failures")
    page.click("button[name=index]")

    # then: retried, and sent by the worker to the chat
    expect(page.locator(".messagelist")).to_contain_text("Retried 1 delivery(ies).")
    _wait_for_status(task, DeliveryTask.Status.SENT)
    assert telegram_api.sent_texts(CHAT) == ["The answer that got lost."]
    page.goto(change_url)
    expect(page.locator(".field-status_badge")).to_contain_text("Sent")
    expect(page.locator("#attempt_log-group")).to_contain_text("Sent")
    _screenshot(page, "delivery-sent")


def test_the_open_dashboard_updates_itself(operator, afhost):
    # given: the dashboard, open, with nothing failed
    page = operator
    page.goto(f"{afhost}/admin/delivery/dashboard/")
    expect(page.locator("#figure-failed")).to_have_text("0")
    expect(page.locator("#latest-failures")).to_contain_text("No failures.")

    # when: a delivery fails meanwhile
    task = _failed_delivery("Another answer.", key="browser:poll")

    # then: it appears without a reload (the page asks every 5 s)
    expect(page.locator("#figure-failed")).to_have_text("1", timeout=15_000)
    expect(page.locator("#latest-failures")).to_contain_text(f"#{task.pk}")
    expect(page.locator("#dashboard-state")).to_have_text("")
