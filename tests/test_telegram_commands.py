import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

from django.core.management import call_command

from channels_app.telegram.models import TelegramUpdate


def test_set_telegram_webhook_registers_the_url_secret_and_update_types(telegram_api, db):
    # when
    out = io.StringIO()
    call_command("set_telegram_webhook", "https://agent.example.com/", stdout=out)

    # then
    assert telegram_api.webhook == {
        "url": "https://agent.example.com/telegram/webhook/",
        "secret_token": "test-webhook-secret",
        "allowed_updates": ["message", "callback_query"],
    }
    commands = telegram_api.calls_to("setMyCommands")[0].params["commands"]
    assert {command["command"] for command in commands} >= {"new", "whoami", "link", "help"}
    assert "https://agent.example.com/telegram/webhook/" in out.getvalue()


def test_telegram_poll_feeds_the_inbox_and_confirms_what_it_stored(
    telegram_api, telegram_update, transactional_db
):
    # transactional_db: the command stores updates from its own event loop's thread and connection
    # given
    call_command("set_telegram_webhook", "https://agent.example.com", stdout=io.StringIO())
    telegram_api.push_update(telegram_update("private_text", update_id=701))
    telegram_api.push_update(telegram_update("start_command", update_id=702))

    # when
    with mock.patch("channels_app.telegram.services.async_task") as async_task:
        call_command("telegram_poll", "--once", "--timeout", "0", stdout=io.StringIO())

    # then
    assert telegram_api.webhook is None
    assert sorted(TelegramUpdate.objects.values_list("update_id", "status")) == [
        (701, "pending"),
        (702, "pending"),
    ]
    assert telegram_api.pending_updates == []
    assert async_task.call_count == 2
    stored = TelegramUpdate.objects.get(update_id=701).payload
    assert stored["message"]["text"] == "hello bot"
    assert stored["message"]["chat"]["id"] == 1111111


def test_telegram_poll_stops_cleanly_on_ctrl_c(telegram_api):
    # given
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "afhost.settings_test",
        "TELEGRAM_API_BASE_URL": f"{telegram_api.url}/bot",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "telegram_poll", "--timeout", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A suite started in the background (`make test &`) ignores SIGINT, and so would its
        # children: give the command the default handler a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    telegram_api.wait_for("getUpdates", timeout=20)

    # when
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)

    # then
    assert process.returncode == 0, output
    assert "Polling as @test_bot" in output
    assert output.rstrip().endswith("Stopped.")
    assert "Traceback" not in output
