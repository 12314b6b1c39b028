"""Telegram inbox use cases: receive an update, re-process, sweep up unanswered chats.

Answering a chat's updates is processing.py's."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from afhost.db import storable
from afhost.models import Run
from afhost.queueing import queue_stored
from channels_app.telegram.models import TelegramChat, TelegramUpdate
from linking.models import LinkChallenge

logger = logging.getLogger(__name__)

# What the bot subscribes to (setWebhook, getUpdates); others are acknowledged and ignored.
ALLOWED_UPDATES = ["message", "callback_query"]
# Update kinds whose payload carries the chat they belong to.
_CHAT_CARRIERS = ("message", "edited_message", "channel_post", "edited_channel_post")


class InvalidUpdate(ValueError):
    pass


# Columns holding Telegram's ids are bigint; its ids fit (at most 52 significant bits).
_BIGINT = range(-(2**63), 2**63)
# Telegram's updates nest about a dozen levels; far deeper ones would exhaust the recursion limit
# of the JSON encoder that stores them, or of python-telegram-bot's parser that reads them.
MAX_UPDATE_DEPTH = 64


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unstorable(payload: dict[str, Any]) -> str | None:
    """Why the database cannot store an update, or None: PostgreSQL's JSON has no NaN or
    Infinity (Python's json accepts them, and reads 1e400 as Infinity), and deep nesting."""
    if not storable(payload):
        return "a NUL character or an unpaired surrogate"
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_UPDATE_DEPTH:
            return f"nested deeper than {MAX_UPDATE_DEPTH} levels"
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return "NaN or Infinity, numbers JSON does not have"
    return None


def _chat_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    for kind in _CHAT_CARRIERS:
        if isinstance(payload.get(kind), dict):
            return payload[kind].get("chat")
    query = payload.get("callback_query")
    if isinstance(query, dict) and isinstance(query.get("message"), dict):
        return query["message"].get("chat")
    return None


def enqueue_chat(*, chat: TelegramChat) -> None:
    queue_stored(
        lambda: async_task(
            "channels_app.tasks.process_telegram_chat",
            chat.pk,
            q_options={"task_name": f"telegram-chat-{chat.chat_id}", "group": "telegram"},
        ),
        what=f"telegram chat {chat.chat_id}",
        recovery="the sweeper answers its pending updates once they have waited a lease",
    )


def confirm_link(*, challenge: LinkChallenge, **kwargs: Any) -> None:
    """On `identity_linked`: confirm in the Telegram chat that asked for the link (in a worker)."""
    if challenge.identity.channel == "telegram" and challenge.notify.get("chat_id"):
        async_task(
            "channels_app.tasks.confirm_telegram_link",
            challenge.pk,
            q_options={"task_name": f"telegram-link-{challenge.pk}", "group": "telegram"},
        )


def receive_update(*, payload: dict[str, Any]) -> TelegramUpdate | None:
    """Store an update in the inbox and queue its chat; None for a duplicate update_id.

    In one transaction, as every update comes here: the chat upserted, the update inserted (a
    duplicate's insert fails on update_id, Telegram resending one we have), and, on the database
    broker, the chat's task.
    """
    update_id: Any = payload.get("update_id")
    if not _is_integer(update_id):
        raise InvalidUpdate("an update needs an integer update_id")
    if update_id not in _BIGINT:
        raise InvalidUpdate("update_id is outside the 64-bit range")
    if problem := _unstorable(payload):
        raise InvalidUpdate(f"an update with {problem}")
    chat_data = _chat_of(payload)
    chat = None
    if isinstance(chat_data, dict) and _is_integer(chat_data.get("id")):
        if chat_data["id"] not in _BIGINT:
            raise InvalidUpdate("chat id is outside the 64-bit range")
        chat = TelegramChat(
            chat_id=chat_data["id"],
            kind=str(chat_data.get("type", ""))[:16],
            title=str(chat_data.get("title") or chat_data.get("first_name") or "")[:300],
            is_forum=bool(chat_data.get("is_forum")),
        )
    try:
        with transaction.atomic():
            if chat is not None:
                TelegramChat.objects.bulk_create(
                    [chat],
                    update_conflicts=True,
                    unique_fields=["chat_id"],
                    update_fields=["kind", "title", "is_forum", "updated_at"],
                )
            update = TelegramUpdate.objects.create(
                update_id=update_id,
                payload=payload,
                chat=chat,
                status=TelegramUpdate.Status.PENDING if chat else TelegramUpdate.Status.IGNORED,
                last_error="" if chat else "update without a chat: not handled",
            )
            if chat is not None:
                enqueue_chat(chat=chat)
    except IntegrityError:
        if not TelegramUpdate.objects.filter(update_id=update_id).exists():
            raise
        logger.info("telegram update %s is a duplicate: ignored", update_id)
        return None
    if chat is None:
        logger.info("telegram update %s has no chat (%s): ignored", update_id, ", ".join(payload))
    return update


def reprocess_updates(*, updates: Iterable[TelegramUpdate]) -> list[TelegramUpdate]:
    """Queue failed or pending updates again (admin action); processed ones are left alone.

    Their attempt history stays. An update whose agent run failed is answered by a new run (the
    person was sent an apology); one that failed otherwise continues from its run, sending only
    the parts of the reply not delivered yet. Returns the updates queued.
    """
    candidates = [
        update
        for update in updates
        if update.chat_id is not None and update.status != TelegramUpdate.Status.PROCESSED
    ]
    failed_runs = set(
        Run.objects.filter(
            pk__in=[update.run_id for update in candidates if update.run_id is not None],
            status=Run.Status.FAILED,
        ).values_list("pk", flat=True)
    )
    for update in candidates:
        with transaction.atomic():
            update.requeue(keep_run=update.run_id not in failed_runs)
            enqueue_chat(chat=update.chat)  # type: ignore[arg-type]  # candidates have a chat
    return candidates


def sweep_updates(*, now: datetime | None = None) -> int:
    """Queue chats with due pending updates that nobody is answering; returns how many.

    Those are chats whose worker died (their lease ran out), chats with a retry due, and chats
    whose first attempt has waited longer than a lease (their queue task went missing); fresher
    ones still have their task in the queue. Safe in many processes at once.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.AFHOST_LEASE_SECONDS)
    unanswered = Q(lease_expires_at__isnull=True) & (
        Q(updates__attempts__gt=0) | Q(updates__next_attempt_at__lt=stale)
    )
    chats = TelegramChat.objects.filter(
        Q(lease_expires_at__lt=now) | unanswered,
        updates__status=TelegramUpdate.Status.PENDING,
        updates__next_attempt_at__lte=now,
    ).distinct()
    count = 0
    for chat in chats:
        with transaction.atomic():
            enqueue_chat(chat=chat)
        count += 1
    return count
