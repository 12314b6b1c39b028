"""django-q2 on the Redis broker (AFHOST_REDIS_URL): a live server queues its tasks in Redis and
a worker cluster takes them from there. Redis is optional, so the live tests are skipped when
none answers on 127.0.0.1:6379."""

import runpy
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django_q.models import OrmQ
from openai import OpenAI

# Database 5, not 0: the tests keep out of whatever else uses this Redis.
REDIS_URL = "redis://127.0.0.1:6379/5"
# django-q2's queue on Redis: a list named after the cluster (afhost-test in the test settings).
QUEUE_KEY = "django_q:afhost-test:q"
SECRET = {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"}
SETTINGS = Path(__file__).resolve().parent.parent / "afhost" / "settings.py"


def _q_cluster(monkeypatch, redis_url: str | None) -> dict:
    """Q_CLUSTER as afhost/settings.py makes it with AFHOST_REDIS_URL set to `redis_url`."""
    if redis_url is None:
        monkeypatch.delenv("AFHOST_REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("AFHOST_REDIS_URL", redis_url)
    return runpy.run_path(str(SETTINGS))["Q_CLUSTER"]


def test_the_database_is_the_broker_unless_a_redis_url_is_set(monkeypatch):
    q_cluster = _q_cluster(monkeypatch, None)
    assert q_cluster["orm"] == "default"
    assert "redis" not in q_cluster


def test_a_redis_url_makes_redis_the_broker(monkeypatch):
    # django-q2 would take "orm" over "redis", so "orm" must go
    q_cluster = _q_cluster(monkeypatch, REDIS_URL)
    assert "orm" not in q_cluster
    # one connection pool per process, for every client django-q2 makes
    pool = q_cluster["redis"]["connection_pool"]
    assert {name: pool.connection_kwargs[name] for name in ("host", "port", "db")} == {
        "host": "127.0.0.1",
        "port": 6379,
        "db": 5,
    }
    # a Redis that does not answer fails a queueing in seconds, not after TCP's timeouts
    assert pool.connection_kwargs["socket_connect_timeout"] == 2
    assert pool.connection_kwargs["socket_timeout"] == 5


def test_a_redis_url_that_is_not_one_is_refused(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="AFHOST_REDIS_URL"):
        _q_cluster(monkeypatch, "127.0.0.1:6379")


@pytest.fixture
def redis_queue() -> Iterator[redis.Redis]:
    """The Redis the tests queue in, with django-q2's list empty; skips without a Redis."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        client.close()
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (the Redis broker is optional)")
    client.delete(QUEUE_KEY)
    yield client
    client.delete(QUEUE_KEY)
    client.close()


@pytest.fixture
def server_on_redis(redis_queue, live_server_factory, live_db) -> str:
    """A live server (uvicorn, as in production) that queues its tasks in Redis; its URL."""
    return live_server_factory("uvicorn", AFHOST_REDIS_URL=REDIS_URL)


def _post_update(url: str, payload: dict) -> None:
    response = httpx.post(f"{url}/telegram/webhook/", json=payload, headers=SECRET)
    assert response.status_code == 200, response.text


def _wait_for_answers(telegram_api, chat_id: int, count: int = 1, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while len(texts := telegram_api.sent_texts(chat_id)) < count:
        assert time.monotonic() < deadline, "no answer in time"
        time.sleep(0.05)
    return texts


def _wait_for_run(client: OpenAI, response_id: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while (response := client.responses.retrieve(response_id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.05)
    return response


def test_a_background_run_and_a_telegram_update_are_answered_through_redis(
    server_on_redis, redis_queue, raw_api_key, telegram_api, telegram_update, cluster_factory
):
    # given: the server queues a background run and a Telegram chat; no worker runs yet
    client = OpenAI(
        base_url=f"{server_on_redis}/v1", api_key=raw_api_key, max_retries=0, timeout=30
    )
    created = client.responses.create(model="demo", input="run via redis", background=True)
    _post_update(server_on_redis, telegram_update("private_text", text="chat via redis"))
    assert redis_queue.llen(QUEUE_KEY) == 2
    assert not OrmQ.objects.exists()

    # when: a worker on the Redis broker starts
    cluster_factory(AFHOST_REDIS_URL=REDIS_URL)

    # then
    done = _wait_for_run(client, created.id)
    assert done.status == "completed"
    assert done.output_text.startswith('You said: "run via redis".')
    [answer] = _wait_for_answers(telegram_api, 1111111)
    assert answer.startswith('You said: "chat via redis".')
    assert redis_queue.llen(QUEUE_KEY) == 0


def test_a_task_lost_with_its_worker_is_queued_again_by_the_sweeper(
    server_on_redis, redis_queue, telegram_api, telegram_update, cluster_factory
):
    # given: a chat's task that left Redis with a worker that then died (Redis hands a task out
    # once: BLPOP takes it off the list, and nothing puts it back)
    _post_update(server_on_redis, telegram_update("private_text", text="lost in redis"))
    assert redis_queue.llen(QUEUE_KEY) == 1
    redis_queue.delete(QUEUE_KEY)

    # when: a worker starts, whose sweepers look for chats nobody answers every third of a second
    cluster_factory(AFHOST_REDIS_URL=REDIS_URL, AFHOST_LEASE_SECONDS="1")

    # then: the update's row was the truth, and it is answered once
    [answer] = _wait_for_answers(telegram_api, 1111111)
    assert answer.startswith('You said: "lost in redis".')
    time.sleep(0.5)  # a second answer would show up here
    assert len(telegram_api.sent_texts(1111111)) == 1


def test_a_server_whose_redis_is_down_accepts_and_the_sweeper_answers_the_chat(
    redis_queue,
    live_server_factory,
    live_db,
    raw_api_key,
    telegram_api,
    telegram_update,
    cluster_factory,
):
    # given: a server whose Redis does not answer (a port nobody listens on)
    down = live_server_factory("uvicorn", AFHOST_REDIS_URL="redis://127.0.0.1:1/5")
    client = OpenAI(base_url=f"{down}/v1", api_key=raw_api_key, max_retries=0, timeout=30)

    # when: an update and a background run come in
    _post_update(down, telegram_update("private_text", text="stored, not queued"))
    created = client.responses.create(model="demo", input="stored too", background=True)

    # then: both are accepted as usual (a 500 would make Telegram or the client send them again),
    # and the update is answered once a worker's sweeper finds it
    assert created.status == "queued"
    assert client.responses.retrieve(created.id).status == "queued"
    cluster_factory(AFHOST_REDIS_URL=REDIS_URL, AFHOST_LEASE_SECONDS="1")
    [answer] = _wait_for_answers(telegram_api, 1111111)
    assert answer.startswith('You said: "stored, not queued".')
