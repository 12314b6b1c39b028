"""Reads of Telegram's inbox."""

from __future__ import annotations

from django.db.models import OuterRef, Q, Subquery
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from channels_app.telegram.models import TelegramUpdate


def next_update(*, chat_pk: int) -> TelegramUpdate | None:
    """The chat's oldest pending update, which must be answered before any later one, with its
    chat."""
    pending = TelegramUpdate.objects.filter(chat_id=chat_pk, status=TelegramUpdate.Status.PENDING)
    return pending.select_related("chat").order_by("update_id").first()


def head_is_due() -> Q:
    """Chats whose oldest pending update is due (a condition on TelegramChat rows)."""
    head = (
        TelegramUpdate.objects.filter(chat=OuterRef("pk"), status=TelegramUpdate.Status.PENDING)
        .order_by("update_id")
        .values("next_attempt_at")[:1]
    )
    return Q(LessThanOrEqual(Subquery(head), timezone.now()))
