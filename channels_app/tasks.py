"""django-q2 task functions: each takes a row id and calls one service."""

from __future__ import annotations

from channels_app.telegram import services as telegram


def process_telegram_chat(chat_pk: int) -> None:
    telegram.process_chat(chat_pk=chat_pk)


def sweep_telegram_updates() -> None:
    telegram.sweep_updates()
