"""Reads of Telegram's inbox."""

from __future__ import annotations

from django.utils import timezone

from channels_app.telegram.models import TelegramChat, TelegramUpdate


def next_update(*, chat: TelegramChat) -> TelegramUpdate | None:
    """The chat's oldest pending update, which must be answered before any later one."""
    return chat.updates.filter(status=TelegramUpdate.Status.PENDING).order_by("update_id").first()


def head_is_due(*, chat_pk: int) -> bool:
    head = (
        TelegramUpdate.objects.filter(chat_id=chat_pk, status=TelegramUpdate.Status.PENDING)
        .order_by("update_id")
        .only("next_attempt_at")
        .first()
    )
    return head is not None and head.next_attempt_at <= timezone.now()
