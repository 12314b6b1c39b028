"""Telegram inbox use cases: receive an update, process a chat's updates in order, re-process."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from afhost.db import storable
from channels_app.telegram.models import TelegramChat, TelegramUpdate

logger = logging.getLogger(__name__)

# What the bot subscribes to (setWebhook, getUpdates); others are acknowledged and ignored.
ALLOWED_UPDATES = ["message", "callback_query"]
# Update kinds whose payload carries the chat they belong to.
_CHAT_CARRIERS = ("message", "edited_message", "channel_post", "edited_channel_post")


class InvalidUpdate(ValueError):
    pass


def _lease() -> timedelta:
    # A worker holds a chat no longer than a task may run; a dead worker's lease simply expires.
    return timedelta(seconds=settings.AFHOST_RUN_TIMEOUT + 60)


def _chat_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    for kind in _CHAT_CARRIERS:
        if isinstance(payload.get(kind), dict):
            return payload[kind].get("chat")
    query = payload.get("callback_query")
    if isinstance(query, dict) and isinstance(query.get("message"), dict):
        return query["message"].get("chat")
    return None


def enqueue_chat(*, chat: TelegramChat) -> None:
    transaction.on_commit(
        lambda: async_task(
            "channels_app.tasks.process_telegram_chat",
            chat.pk,
            q_options={"task_name": f"telegram-chat-{chat.chat_id}", "group": "telegram"},
        )
    )


@transaction.atomic
def receive_update(*, payload: dict[str, Any]) -> TelegramUpdate | None:
    """Store an update in the inbox and queue its chat; None for a duplicate update_id."""
    update_id = payload.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise InvalidUpdate("an update needs an integer update_id")
    if not storable(payload):
        raise InvalidUpdate("an update with a NUL character or an unpaired surrogate")
    chat_data = _chat_of(payload)
    chat = None
    if isinstance(chat_data, dict) and isinstance(chat_data.get("id"), int):
        chat, _ = TelegramChat.objects.update_or_create(
            chat_id=chat_data["id"],
            defaults={
                "kind": str(chat_data.get("type", ""))[:16],
                "title": str(chat_data.get("title") or chat_data.get("first_name") or "")[:300],
                "is_forum": bool(chat_data.get("is_forum")),
            },
        )
    update, created = TelegramUpdate.objects.get_or_create(
        update_id=update_id,
        defaults={
            "payload": payload,
            "chat": chat,
            "status": TelegramUpdate.Status.PENDING if chat else TelegramUpdate.Status.IGNORED,
            "last_error": "" if chat else "update without a chat: not handled",
        },
    )
    if not created:
        logger.info("telegram update %s is a duplicate: ignored", update_id)
        return None
    if chat is None:
        logger.info("telegram update %s has no chat (%s): ignored", update_id, ", ".join(payload))
    else:
        enqueue_chat(chat=chat)
    return update


def next_update(*, chat: TelegramChat) -> TelegramUpdate | None:
    """The chat's oldest pending update, which must be answered before any later one."""
    return chat.updates.filter(status=TelegramUpdate.Status.PENDING).order_by("update_id").first()


def _head_is_due(chat_pk: int) -> bool:
    head = (
        TelegramUpdate.objects.filter(chat_id=chat_pk, status=TelegramUpdate.Status.PENDING)
        .order_by("update_id")
        .only("next_attempt_at")
        .first()
    )
    return head is not None and head.next_attempt_at <= timezone.now()


def process_chat(*, chat_pk: int) -> None:
    """Answer a chat's pending updates in order, unless another worker holds the chat.

    After releasing the chat, look once more: an update that arrived while we held it had its
    task turned away, so it is ours to answer.
    """
    from channels_app.telegram.processing import drain_chat

    # Every update queues its chat; the first task answers them all, so most find nothing due.
    if not _head_is_due(chat_pk):
        return
    while TelegramChat.objects.claim(chat_pk, until=timezone.now() + _lease()):
        try:
            chat = TelegramChat.objects.get(pk=chat_pk)
            async_to_sync(drain_chat)(chat)
        finally:
            TelegramChat.objects.release(chat_pk)
        if not _head_is_due(chat_pk):
            return


def reprocess_updates(*, updates: Iterable[TelegramUpdate]) -> int:
    """Queue failed or pending updates again (admin action); processed ones are left alone."""
    count = 0
    for update in updates:
        if update.chat_id is None or update.status == TelegramUpdate.Status.PROCESSED:
            continue
        with transaction.atomic():
            TelegramUpdate.objects.filter(pk=update.pk).update(
                status=TelegramUpdate.Status.PENDING,
                attempts=0,
                next_attempt_at=timezone.now(),
                updated_at=timezone.now(),
            )
            enqueue_chat(chat=update.chat)
        count += 1
    return count


def sweep_updates(*, now: datetime | None = None) -> int:
    """Queue chats whose pending updates are due and that no live worker holds; returns how many."""
    now = now or timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    chats = TelegramChat.objects.filter(
        free,
        updates__status=TelegramUpdate.Status.PENDING,
        updates__next_attempt_at__lte=now,
    ).distinct()
    count = 0
    for chat in chats:
        with transaction.atomic():
            enqueue_chat(chat=chat)
        count += 1
    return count
