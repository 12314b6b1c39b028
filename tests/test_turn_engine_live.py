"""The turn engine, live: a real daphne server and real django-q2 clusters, slow turns (a target
that sleeps, as a remote model makes a turn wait), and workers that die."""

import threading
import time

import httpx
import openai
import pytest
from django.test import Client

from afhost.models import Run
from channels_app.telegram.models import TelegramUpdate

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"}


def _wait_for(condition, timeout=30, message="condition not met in time"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.05)
    return result


def _all_at_once(runs):
    """Whether every run had started before the first of them ended."""
    return max(run.started_at for run in runs) < min(run.completed_at for run in runs)


def _post_update(live_server_url, payload):
    response = httpx.post(f"{live_server_url}/telegram/webhook/", json=payload, headers=SECRET)
    assert response.status_code == 200, response.text


def _chat_update(telegram_update, chat_id, text):
    payload = telegram_update("private_text", text=text)
    payload["message"]["chat"]["id"] = payload["message"]["from"]["id"] = chat_id
    return payload


def test_slow_background_runs_wait_together_in_one_worker_process(client, cluster_factory):
    # given: one worker process
    cluster_factory(AFHOST_WORKERS="1")

    # when: ten runs whose model takes a second and a half
    ids = [
        client.responses.create(model="demo", input="sleep 1.5", background=True).id
        for _ in range(10)
    ]

    # then
    _wait_for(lambda: Run.objects.filter(status="completed").count() == 10)
    assert _all_at_once(Run.objects.all())
    assert {client.responses.retrieve(i).output_text for i in ids} == {"done sleeping"}


def test_slow_telegram_turns_of_many_chats_wait_together_in_one_worker_process(
    live_server_url, live_db, telegram_api, telegram_update, cluster_factory
):
    # given
    cluster_factory(AFHOST_WORKERS="1")
    chats = range(4_000_001, 4_000_009)

    # when
    for chat_id in chats:
        _post_update(live_server_url, _chat_update(telegram_update, chat_id, "sleep 1.5"))

    # then: every chat answered once, the turns all at once
    _wait_for(lambda: TelegramUpdate.objects.filter(status="processed").count() == len(chats))
    assert [len(telegram_api.sent_texts(chat_id)) for chat_id in chats] == [1] * len(chats)
    assert _all_at_once(Run.objects.all())


def test_a_second_turn_in_a_conversation_is_refused_while_the_first_runs(
    client, openai_client_factory, raw_api_key
):
    # given: a slow turn in conversation c1
    first = {}
    thread = threading.Thread(
        target=lambda: first.update(
            response=client.responses.create(model="demo", input="sleep 1.5", conversation="c1")
        )
    )
    thread.start()
    _wait_for(lambda: Run.objects.filter(status="in_progress").exists())

    # when
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client_factory(raw_api_key).responses.create(
            model="demo", input="me too", conversation="c1"
        )
    thread.join()
    after = client.responses.create(model="demo", input="and now", conversation="c1")

    # then: OpenAI's answer, and no turn lost or merged
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "type": "invalid_request_error",
        "param": "conversation",
        "code": "conversation_locked",
        "message": "Another process is currently operating on this conversation. "
        "Please retry in a few seconds.",
    }
    items = client.responses.input_items.list(after.id)
    assert [item.content[0].text for item in items.data] == ["and now"]
    history = Run.objects.get(public_id=after.id.removeprefix("resp_")).previous_run
    assert history.public_id.hex == first["response"].id.removeprefix("resp_").replace("-", "")
    assert Run.objects.count() == 2


def test_a_stored_run_is_visible_in_progress_while_its_model_works(client):
    # when: a streamed turn has started
    stream = client.responses.create(model="demo", input="sleep 1.5", stream=True)
    created = next(iter(stream))

    # then
    assert client.responses.retrieve(created.response.id).status == "in_progress"
    for _ in stream:
        pass
    assert client.responses.retrieve(created.response.id).status == "completed"


def test_the_turns_of_a_killed_worker_are_finished_or_failed_by_the_next(
    client, live_server_url, telegram_api, telegram_update, cluster_factory
):
    # given: a worker with short leases is in the middle of three Telegram turns and three runs
    lease = {"AFHOST_LEASE_SECONDS": "2"}
    dying = cluster_factory(**lease)
    chats = range(5_000_001, 5_000_004)
    for chat_id in chats:
        _post_update(live_server_url, _chat_update(telegram_update, chat_id, "sleep 2"))
    ids = [
        client.responses.create(model="demo", input="sleep 2", background=True).id for _ in range(3)
    ]
    _wait_for(lambda: Run.objects.filter(status="in_progress").count() == 6)

    # when: it dies with them, and a new worker starts
    dying.kill()
    cluster_factory(**lease)

    # then: the runs failed with a reason, the chats were answered exactly once
    def ended():
        return all(client.responses.retrieve(i).status != "in_progress" for i in ids)

    _wait_for(ended, timeout=20)
    for response_id in ids:
        response = client.responses.retrieve(response_id)
        assert response.status == "failed"
        assert response.error.message == "The run was interrupted before it finished."
    _wait_for(
        lambda: TelegramUpdate.objects.filter(status="processed").count() == 3,
        timeout=20,
        message=lambda: list(TelegramUpdate.objects.values_list("status", "last_error")),
    )
    assert [telegram_api.sent_texts(chat_id) for chat_id in chats] == [["done sleeping"]] * 3
    assert set(TelegramUpdate.objects.values_list("attempts", flat=True)) == {1}

    # and the chats answer their next message
    for chat_id in chats:
        _post_update(live_server_url, _chat_update(telegram_update, chat_id, "still there?"))
    _wait_for(lambda: TelegramUpdate.objects.filter(status="processed").count() == 6)
    assert [len(telegram_api.sent_texts(chat_id)) for chat_id in chats] == [2] * 3


@pytest.mark.django_db(transaction=True)  # the run writer commits from a thread of its own
def test_create_is_reached_through_django_with_the_security_headers(api_key_factory):
    # given
    _, raw_key = api_key_factory()

    # when: Django's own test client, with every middleware of the site
    response = Client().post(
        "/v1/responses",
        {"model": "demo", "input": "through Django"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw_key}"},
    )

    # then
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "completed"
    assert Run.objects.get().status == "completed"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_the_api_routes_of_the_live_server_send_the_same_security_headers(
    live_server_url, raw_api_key
):
    # when
    headers = {"Authorization": f"Bearer {raw_api_key}"}
    created = httpx.post(f"{live_server_url}/v1/responses", json={"input": "hi"}, headers=headers)
    refused = httpx.post(f"{live_server_url}/v1/responses", json={"input": 1}, headers=headers)
    admin = httpx.get(f"{live_server_url}/admin/login/")

    # then
    for response in (created, refused):
        for name in (
            "X-Content-Type-Options",
            "Referrer-Policy",
            "Cross-Origin-Opener-Policy",
            "X-Frame-Options",
        ):
            assert response.headers[name] == admin.headers[name], name
    assert created.status_code == 200
    assert refused.status_code == 400
