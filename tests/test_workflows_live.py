"""Workflows in a real worker cluster that dies mid-run: its runs resume from their checkpoints."""

import time

import httpx

from afhost.models import Run, RunCheckpoint
from channels_app.telegram.models import TelegramUpdate
from tests.workflows import EFFECTS, effects

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"}
CHAT = 6_000_001
DONE = ["one done", "two done", "three done"]


def _wait_for(condition, timeout=30, message="condition not met in time"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
    return result


def _checkpointed_a_step(run):
    return any(checkpoint.outputs for checkpoint in RunCheckpoint.objects.filter(run=run))


def test_workflow_runs_a_killed_worker_left_finish_from_their_checkpoints(
    client, live_server_url, telegram_api, telegram_update, cluster_factory, tmp_path, monkeypatch
):
    # given: a worker with short leases in the middle of a slow pipeline, as a background run
    # and as a Telegram turn, each step leaving a line in a file as it completes
    monkeypatch.setenv(EFFECTS, str(tmp_path / "effects"))
    env = {
        "AFHOST_TARGET": "tests.workflows:pipeline",
        "AFHOST_LEASE_SECONDS": "2",
        EFFECTS: str(tmp_path / "effects"),
    }
    dying = cluster_factory(**env)
    response_id = client.responses.create(model="wf", input="slow 2", background=True).id
    payload = telegram_update("private_text", text="slow 2")
    payload["message"]["chat"]["id"] = payload["message"]["from"]["id"] = CHAT
    posted = httpx.post(f"{live_server_url}/telegram/webhook/", json=payload, headers=SECRET)
    assert posted.status_code == 200
    # both first steps done and checkpointed; the second steps are sleeping
    _wait_for(lambda: effects() == ["one", "one"])
    _wait_for(lambda: all(map(_checkpointed_a_step, Run.objects.all())))

    # when: it dies, and a new worker starts
    dying.kill()
    cluster_factory(**env)

    # then: both runs completed, and no completed step ran again
    _wait_for(lambda: client.responses.retrieve(response_id).status == "completed", timeout=40)
    _wait_for(lambda: TelegramUpdate.objects.filter(status="processed").exists(), timeout=40)
    assert sorted(effects()) == ["one", "one", "three", "three", "two", "two"]
    response = client.responses.retrieve(response_id)
    assert [item.content[0].text for item in response.output] == DONE
    assert telegram_api.sent_texts(CHAT) == ["one done\ntwo done\nthree done"]
