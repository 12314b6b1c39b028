"""Telegram's inbox: every update as received, the chats it came from, and who talks in them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from afhost.models import LeasedModel, TimestampedModel, alters_data


class TelegramChat(TimestampedModel, LeasedModel):
    """A chat the bot is in. Its lease is held by the one worker answering it, in order."""

    chat_id = models.BigIntegerField(unique=True)
    kind = models.CharField(max_length=16, help_text="private, group, supergroup or channel")
    title = models.CharField(max_length=300, blank=True)
    is_forum = models.BooleanField(default=False)
    # Set when Telegram refuses to deliver here (the bot was blocked or removed).
    blocked_at = models.DateTimeField(null=True, blank=True)
    blocked_reason = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return self.title or f"{self.kind} chat {self.chat_id}"

    @alters_data
    def mark_blocked(self, reason: str) -> None:
        now = timezone.now()
        fields = {"blocked_at": now, "blocked_reason": reason[:300], "updated_at": now}
        TelegramChat.objects.filter(pk=self.pk).update(**fields)
        self.blocked_at, self.blocked_reason = now, reason[:300]


class TelegramChatMember(TimestampedModel):
    """Who talks to the bot in a chat."""

    chat = models.ForeignKey(TelegramChat, on_delete=models.CASCADE, related_name="members")
    identity = models.ForeignKey(
        "linking.Identity", on_delete=models.CASCADE, related_name="telegram_memberships"
    )
    message_count = models.PositiveIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chat", "identity"], name="channels_app_telegramchatmember_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identity} in {self.chat}"


class TelegramUpdate(TimestampedModel):
    """One update as Telegram sent it; unique on update_id, so a redelivery is ignored."""

    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSED = "processed"
        IGNORED = "ignored"
        FAILED = "failed"

    MAX_ATTEMPTS = 5
    RETRY_BASE = timedelta(seconds=5)
    # Attempts kept in attempt_history, the newest.
    HISTORY_LIMIT = 50

    update_id = models.BigIntegerField(unique=True)
    chat = models.ForeignKey(
        TelegramChat, null=True, blank=True, on_delete=models.SET_NULL, related_name="updates"
    )
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # The agent run answering this update, and how many reply messages Telegram has accepted:
    # a retry continues from there instead of running the agent or sending a part twice.
    run = models.ForeignKey(
        "afhost.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sent_parts = models.PositiveIntegerField(default=0)
    # How each attempt ended, oldest first ({at, attempt, outcome, error, run}); re-processing
    # keeps it. A list on the row, written with the attempt's end in the same statement.
    attempt_history = models.JSONField(default=list, blank=True, editable=False)
    # Set when its author's message was counted in the chat's members (on the first attempt).
    counted_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        indexes = [
            # Used to lease a chat (processing._take_next_update) and by the sweeper: a chat's
            # pending updates in order.
            models.Index(
                fields=["chat", "update_id"],
                condition=models.Q(status="pending"),
                name="channels_app_tgupdate_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"update {self.update_id} ({self.status})"

    def _history_with(self, *, at: datetime, outcome: str, error: str) -> list[dict[str, Any]]:
        """The attempt history with the attempt now ending (the last HISTORY_LIMIT of them)."""
        entry = {
            "at": at.isoformat(),
            "attempt": self.attempts + 1,
            "outcome": outcome,
            "error": error,
            "run": self.run_id,
        }
        return [*self.attempt_history, entry][-self.HISTORY_LIMIT :]

    @alters_data
    def finish(self, *, status: str, error: str = "", sent_parts: int | None = None) -> None:
        now = timezone.now()
        fields = {
            "status": status,
            "processed_at": now,
            "last_error": error,
            "attempt_history": self._history_with(at=now, outcome=status, error=error),
            "updated_at": now,
        }
        if sent_parts is not None:
            fields["sent_parts"] = sent_parts
        TelegramUpdate.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    @alters_data
    def record_failure(self, error: str) -> None:
        """Count a failed attempt: retry later with backoff, or give up after MAX_ATTEMPTS."""
        attempts = self.attempts + 1
        now = timezone.now()
        gives_up = attempts >= self.MAX_ATTEMPTS
        fields = {
            "attempts": attempts,
            "last_error": error,
            "next_attempt_at": now + self.RETRY_BASE * 2 ** (attempts - 1),
            "status": self.Status.FAILED if gives_up else self.Status.PENDING,
            "attempt_history": self._history_with(
                at=now, outcome=self.Status.FAILED if gives_up else "retry", error=error
            ),
            "updated_at": now,
        }
        TelegramUpdate.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    @alters_data
    def record_interruption(self) -> bool:
        """Count an attempt whose worker died mid-turn; False if that used up the attempts."""
        now = timezone.now()
        self.last_error = "interrupted: the worker answering it stopped"
        self.attempt_history = self._history_with(
            at=now, outcome="interrupted", error=self.last_error
        )
        self.attempts += 1
        TelegramUpdate.objects.filter(pk=self.pk).update(
            attempts=self.attempts,
            last_error=self.last_error,
            attempt_history=self.attempt_history,
            updated_at=now,
        )
        return self.attempts < self.MAX_ATTEMPTS

    @alters_data
    def mark_counted(self) -> bool:
        """Note that its author's message was counted in the chat's members; False if an
        earlier attempt at this update counted it already."""
        if self.counted_at is not None:
            return False
        now = timezone.now()
        counted = TelegramUpdate.objects.filter(pk=self.pk, counted_at__isnull=True).update(
            counted_at=now, updated_at=now
        )
        self.counted_at = now
        return bool(counted)

    @alters_data
    def requeue(self, *, keep_run: bool) -> None:
        """Queue the update for new attempts (an operator's re-process); its attempt history
        stays. Without `keep_run`, its agent run is forgotten and the agent answers afresh."""
        now = timezone.now()
        fields: dict[str, Any] = {
            "status": self.Status.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "updated_at": now,
        }
        if not keep_run:
            fields.update(run=None, sent_parts=0)
        TelegramUpdate.objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)
