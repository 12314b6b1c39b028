"""The host core's rows: API keys, conversations, runs and the events of streamed runs."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import models
from django.db.models.functions import Cast, Length
from django.utils import timezone

from afhost.db import unique_or_none

RESPONSE_ID_PREFIX = "resp_"

Method = TypeVar("Method", bound=Callable[..., Any])


def alters_data(method: Method) -> Method:
    """Mark a model method that writes, so templates never call it (Django's `alters_data`)."""
    method.alters_data = True  # type: ignore[attr-defined]
    return method


def response_id(public_id: uuid.UUID) -> str:
    return RESPONSE_ID_PREFIX + public_id.hex


def parse_public_id(term: str) -> uuid.UUID | None:
    """A run's public id in `resp_<hex>` (any case), a bare hex id or a UUID; None otherwise."""
    term = term.strip()
    if term.lower().startswith(RESPONSE_ID_PREFIX):
        term = term[len(RESPONSE_ID_PREFIX) :]
    if len(term) not in (32, 36):
        return None
    try:
        return uuid.UUID(term)
    except ValueError:
        return None


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class LeasedModel(models.Model):
    """A row one process at a time works on, under a short lease it renews while the work is
    alive (afhost.leases). A process that dies stops renewing, and the row is free again once
    `lease_expires_at` has passed."""

    lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True


def hash_api_key(raw_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast digest is enough (no password-style stretching).
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)

    def for_raw_key(self, raw_key: str) -> ApiKey | None:
        return self.for_key_hash(hash_api_key(raw_key))

    def for_key_hash(self, key_hash: str) -> ApiKey | None:
        return unique_or_none(self.active().filter(key_hash=key_hash))


class ApiKey(TimestampedModel):
    """A named credential for the HTTP channels. Only its hash is stored."""

    PREFIX = "afh_"
    # Letters, digits, - and _ (a slug), so a named partition never looks like a key's own one
    # ("key.<public_id>") and never contains the ":" that ends it in an isolation key.
    PARTITION_MAX_LENGTH = 32

    public_id = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(
        max_length=12, editable=False, help_text="First characters, to recognise a key."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_trusted = models.BooleanField(
        default=False,
        help_text="Trusted callers (a backend, the Foundry platform) may name the end user in "
        "x-agent-user-id / x-agent-user-isolation-key headers.",
    )
    partition = models.SlugField(
        max_length=PARTITION_MAX_LENGTH,
        blank=True,
        help_text="The end users a trusted key names live in this partition. Blank: the key's "
        "own partition. Keys that name the same partition (e.g. 'acme') see the same users' "
        "responses and conversations.",
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @classmethod
    def generate_raw_key(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @property
    def effective_partition(self) -> str:
        """The partition of the end users this key names: the named one, else its own."""
        return self.partition or f"key.{self.public_id}"

    def set_key(self, raw_key: str) -> None:
        self.key_prefix = raw_key[:12]
        self.key_hash = hash_api_key(raw_key)

    @alters_data
    def revoke(self) -> bool:
        """Revoke the key; False when it already was."""
        now = timezone.now()
        updated = ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=now, updated_at=now
        )
        if updated:
            self.revoked_at = now
        return bool(updated)


class Conversation(TimestampedModel, LeasedModel):
    """A named thread of runs for one isolation key, e.g. a Responses `conversation` or a chat.

    `head_run` is the latest run; a new run continues from it. A turn holds the conversation's
    lease from reading the head to moving it on, so turns in one conversation never overlap.
    """

    public_id = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    channel = models.CharField(max_length=32)
    isolation_key = models.CharField(max_length=300)
    key = models.CharField(
        max_length=300, help_text="Channel locator or client-chosen conversation id."
    )
    head_run = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "isolation_key", "key"], name="afhost_conversation_unique_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.key}"


class RunQuerySet(models.QuerySet["Run"]):
    def visible_to(self, isolation_key: str) -> RunQuerySet:
        """Runs a caller may see: stored ones of their own isolation key."""
        return self.filter(isolation_key=isolation_key, is_stored=True)


class Run(TimestampedModel, LeasedModel):
    """One invocation of the hosted target. For the Responses API, a Run is a response.

    An in-progress run is leased by the process running it; one whose lease ran out was lost
    with its process, and the sweeper fails it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INCOMPLETE = "incomplete"

    class Truncation(models.TextChoices):
        # A history over AFHOST_MAX_HISTORY_BYTES loses its oldest turns, or fails the run.
        AUTO = "auto"
        DISABLED = "disabled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.IN_PROGRESS)
    TERMINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.INCOMPLETE)

    public_id = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    channel = models.CharField(max_length=32)
    isolation_key = models.CharField(max_length=300)
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    previous_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    is_background = models.BooleanField(default=False)
    is_streamed = models.BooleanField(default=False)
    is_stored = models.BooleanField(default=True)
    model = models.CharField(max_length=200, blank=True)
    instructions = models.TextField(blank=True)
    options = models.JSONField(
        default=dict, blank=True, help_text="Chat options passed to the target."
    )
    metadata = models.JSONField(default=dict, blank=True)
    # Where the answer goes besides the caller (afhost.types.ResponseTarget.as_dict()), if
    # anywhere: the delivery app pushes it there when the run ends.
    response_target = models.JSONField(null=True, blank=True)
    attributes = models.JSONField(
        default=dict, blank=True, help_text="Channel-private request facts."
    )
    # The id an Invocations caller names the run by (its x-agent-invocation-id, or one we issued).
    invocation_id = models.CharField(max_length=256, blank=True, default="")
    input_messages = models.JSONField(default=list, blank=True)
    output_messages = models.JSONField(default=list, blank=True)
    # Computed by the database, so a history can be measured without loading its messages.
    messages_size = models.GeneratedField(
        expression=Length(Cast("input_messages", models.TextField()))
        + Length(Cast("output_messages", models.TextField())),
        output_field=models.BigIntegerField(),
        db_persist=True,
        help_text="Characters of the input and output messages as JSON.",
    )
    truncation = models.CharField(
        max_length=16,
        choices=Truncation.choices,
        default=Truncation.AUTO,
        help_text="What a history too long for this run does.",
    )
    output_items = models.JSONField(
        default=list, blank=True, help_text="Output as the channel renders it."
    )
    finish_reason = models.CharField(max_length=32, blank=True)
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="What the client is told went wrong.")
    error_detail = models.TextField(
        blank=True, help_text="For operators only: the exception behind a failure."
    )
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="Last handed to the worker queue."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        indexes = [
            # Used by the Responses endpoints: every lookup is scoped to the caller's isolation key.
            models.Index(fields=["isolation_key", "created_at"], name="afhost_run_isolation"),
            # Used by the Invocations endpoints: a caller's run by the id it gave it.
            models.Index(
                fields=["isolation_key", "invocation_id"],
                condition=~models.Q(invocation_id=""),
                name="afhost_run_invocation",
            ),
            # Used by services.sweep_runs: background runs still waiting for a worker.
            models.Index(
                fields=["enqueued_at"],
                condition=models.Q(is_background=True, status="queued"),
                name="afhost_run_queued_background",
            ),
            # Used by services.sweep_runs: running runs whose process stopped renewing the lease.
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status="in_progress"),
                name="afhost_run_in_progress_lease",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.response_id} ({self.channel}, {self.status})"

    @property
    def response_id(self) -> str:
        """The id clients see: `resp_<hex>`, as the Responses API names it (also in the admin
        and the delivery console)."""
        return response_id(self.public_id)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @alters_data
    def mark_enqueued(self) -> None:
        now = timezone.now()
        Run.objects.filter(pk=self.pk).update(enqueued_at=now, updated_at=now)
        self.enqueued_at = now

    @alters_data
    def cancel(self) -> bool:
        """Cancel a queued or in-progress run; False if it had already ended."""
        now = timezone.now()
        updated = Run.objects.filter(pk=self.pk, status__in=self.ACTIVE_STATUSES).update(
            status=self.Status.CANCELLED, completed_at=now, updated_at=now
        )
        if updated:
            self.status, self.completed_at = self.Status.CANCELLED, now
        return bool(updated)


class RunEvent(models.Model):
    """One event of a streamed background run, kept so a client can resume by sequence number."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    sequence_number = models.PositiveIntegerField()
    data = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "sequence_number"], name="afhost_runevent_unique_sequence"
            ),
        ]
        ordering = ["run", "sequence_number"]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.sequence_number}"


class RunCheckpointQuerySet(models.QuerySet["RunCheckpoint"]):
    def visible_to(self, isolation_key: str) -> RunCheckpointQuerySet:
        """Checkpoints of runs of this isolation key: the only ones its runs may restore."""
        return self.filter(run__isolation_key=isolation_key)

    def latest_of(self, run_id: int | None) -> RunCheckpoint | None:
        if run_id is None:
            return None
        return self.filter(run_id=run_id).order_by("-created_at", "-pk").first()


class RunCheckpoint(TimestampedModel):
    """A checkpoint a workflow target took during a run (afhost.workflows), stored as JSON.

    A run that died resumes from its latest checkpoint; a run that ended waiting for a person's
    answer (pending requests in its latest checkpoint) is resumed by the next run after it.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    checkpoint_id = models.CharField(max_length=64, editable=False)
    workflow_name = models.CharField(max_length=200, blank=True, editable=False)
    state = models.JSONField(editable=False, help_text="The workflow's checkpoint, as JSON.")
    outputs = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text="The run's workflow outputs up to this checkpoint, as it framed them.",
    )

    objects = RunCheckpointQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["checkpoint_id"], name="afhost_runcheckpoint_unique_checkpoint_id"
            ),
        ]
        indexes = [
            # Used by afhost.workflows: a run's latest checkpoint.
            models.Index(fields=["run", "created_at"], name="afhost_runcheckpoint_latest"),
        ]

    def __str__(self) -> str:
        return f"{self.checkpoint_id} of run {self.run_id}"
