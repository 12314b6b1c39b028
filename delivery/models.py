"""Pushes of a run's answer to other channels than the one that asked (a ResponseTarget).

A DeliveryTask is one message phase (the echoed input, or the answer) for one destination; the
row is the truth, the queue only carries its id. A worker claims it with a conditional UPDATE
(status PENDING -> SENDING, under a lease), pushes, and records the outcome and a
DeliveryAttempt.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.fields.json import KeyTransform

from afhost.models import LeasedModel, Run, TimestampedModel
from linking.models import Identity


class DeliveryTask(TimestampedModel, LeasedModel):
    class Phase(models.TextChoices):
        ECHO = "echo", "Echo of the input"
        ANSWER = "answer", "Answer"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        # The worker stopped while the channel was receiving the message: it may have arrived,
        # so it is not sent again on its own (an operator may retry it).
        INTERRUPTED = "interrupted", "Interrupted (may have arrived)"

    TERMINAL = (Status.SENT, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=32)
    # The person the message is for, when the destination was reached through them.
    identity = models.ForeignKey(
        Identity, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    # Where on the channel (e.g. {"chat_id": 42}).
    locator = models.JSONField(default=dict)
    phase = models.CharField(max_length=8, choices=Phase.choices)
    text = models.TextField()
    # An answer waits for the echo to the same destination to end first.
    after = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    idempotency_key = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=6)
    next_attempt_at = models.DateTimeField()
    # Parts of a long message the channel accepted (a retry sends only the rest).
    sent_parts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="delivery_task_due",
            ),
            models.Index(fields=["status", "created_at"], name="delivery_task_status"),
            models.Index(fields=["created_at"], name="delivery_task_created"),
            models.Index(fields=["channel", "created_at"], name="delivery_task_channel"),
            # Operators search deliveries by chat.
            models.Index(KeyTransform("chat_id", "locator"), name="delivery_task_chat"),
        ]

    def __str__(self) -> str:
        return f"{self.get_phase_display()} to {self.destination}"

    @property
    def destination(self) -> str:
        where = ":".join(str(value) for value in self.locator.values() if value is not None)
        return f"{self.channel}:{where}" if where else self.channel

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class DeliveryAttempt(models.Model):
    class Outcome(models.TextChoices):
        SENT = "sent", "Sent"
        RETRY = "retry", "Failed, will retry"
        FAILED = "failed", "Failed"
        INTERRUPTED = "interrupted", "Interrupted"

    task = models.ForeignKey(DeliveryTask, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="delivery_attempt_unique")
        ]
        ordering = ["task", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number}"
