"""Reads of Telegram's inbox."""

from __future__ import annotations

from channels_app.telegram.models import TelegramUpdate


def next_update(*, chat_pk: int) -> TelegramUpdate | None:
    """The chat's oldest pending update, which must be answered before any later one, with its
    chat."""
    pending = TelegramUpdate.objects.filter(chat_id=chat_pk, status=TelegramUpdate.Status.PENDING)
    return pending.select_related("chat").order_by("update_id").first()
