"""django-q2 task functions: each takes a row id and hands its job to the worker engine."""

from __future__ import annotations

from afhost.engine import run_job
from channels_app.telegram import processing


def process_telegram_chat(chat_pk: int) -> None:
    run_job(lambda: processing.answer_chat(chat_pk), name=f"telegram chat {chat_pk}")


def confirm_telegram_link(challenge_pk: int) -> None:
    run_job(lambda: processing.confirm_link(challenge_pk), name=f"telegram link {challenge_pk}")
