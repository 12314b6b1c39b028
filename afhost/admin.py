"""The operator console for the host core: API keys, runs and conversations.

Runs are named as clients see them (`resp_…`), their callers by a readable label, and their
messages shown as text (agent_framework's stored dicts stay available, collapsed, as JSON).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_framework.exceptions import WorkflowCheckpointException
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, NullIf
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from afhost.models import ApiKey, Conversation, Run, RunCheckpoint, parse_public_id, response_id
from afhost.registry import channel_names
from afhost.services import create_api_key, revoke_api_keys
from afhost.workflows import decode_checkpoint
from linking.models import Identity, LinkGrant

_STATUS_COLOURS = {
    "queued": "#666",
    "in_progress": "#205493",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#8d6e63",
    "incomplete": "#ef6c00",
}

# ---------------------------------------------------------------------------------------------
# Small renderings shared by the admins of the project


def badge(label: str, colour: str) -> SafeString:
    return format_html(
        '<span style="background:{};color:#fff;border-radius:3px;padding:1px 6px;'
        'white-space:nowrap;font-size:11px">{}</span>',
        colour,
        label,
    )


def run_badge(status: str) -> SafeString:
    label = Run.Status(status).label if status in Run.Status.values else status
    return badge(label, _STATUS_COLOURS.get(status, "#666"))


# What a page shows for nothing (Django shows "None" for a method's None on a read-only page).
EMPTY = "-"


def when(value: datetime | None) -> str:
    """A time to the second, in the admin's time zone: 2026-11-30 14:03:27."""
    return EMPTY if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return EMPTY
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def short(text: str, length: int = 80) -> SafeString | str:
    """`text` cut to `length` characters, whole in a tooltip when cut."""
    if len(text) <= length:
        return text
    return format_html('<span title="{}">{}</span>', text, Truncator(text).chars(length))


def run_link(pk: int, public_id: uuid.UUID, status: str | None = None) -> SafeString:
    link = format_html(
        '<a href="{}">{}</a>',
        reverse("admin:afhost_run_change", args=[pk]),
        response_id(public_id),
    )
    return link if status is None else format_html("{} {}", link, run_badge(status))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class LargeTablePaginator(Paginator):
    """Counts an unfiltered list from PostgreSQL's estimate of the table's rows once the table
    is large: counting every row on each page view is what makes a big changelist slow."""

    EXACT_BELOW = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            connection = connections[queryset.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [queryset.model._meta.db_table],
                    )
                    row = cursor.fetchone()
                if row is not None and row[0] >= self.EXACT_BELOW:
                    return row[0]
        return super().count


# ---------------------------------------------------------------------------------------------
# Who a run or conversation belongs to


@dataclass(frozen=True, slots=True)
class Owners:
    """Readable labels of the isolation keys and API keys of a page of rows, read in two
    queries however many rows there are."""

    identities: dict[str, Identity]
    key_names: dict[str, str]

    @classmethod
    def of(cls, isolation_keys: Iterable[str], api_key_ids: Iterable[str | None] = ()) -> Owners:
        pairs = {tuple(key.split(":", 1)) for key in isolation_keys if ":" in key}
        identities: dict[str, Identity] = {}
        if pairs:
            named = Q()
            for channel, native_id in pairs:  # the (channel, native_id) unique index
                named |= Q(channel=channel, native_id=native_id)
            grant = LinkGrant.objects.active().filter(identity=OuterRef("pk"))
            label = Coalesce(NullIf("upn", Value("")), "object_id")
            rows = Identity.objects.filter(named).annotate(
                linked_label=Subquery(grant.annotate(label=label).values("label")[:1])
            )
            identities = {f"{row.channel}:{row.native_id}": row for row in rows}
        key_ids = {str(value) for value in api_key_ids if value}
        key_ids |= {
            native.split(":", 1)[0][len("key.") :]
            for channel, native in pairs
            if channel == "api" and native.startswith("key.")
        }
        names = ApiKey.objects.filter(
            public_id__in=[pk for pk in key_ids if _is_uuid(pk)]
        ).values_list("public_id", "name")
        return cls(identities=identities, key_names={str(pk): name for pk, name in names})

    def key_name(self, public_id: str | None) -> str | None:
        return self.key_names.get(str(public_id)) if public_id else None

    def label(self, isolation_key: str) -> str:
        """Who an isolation key stands for: "telegram:@ada", "bob (acme)", "API key ops"."""
        identity = self.identities.get(isolation_key)
        linked = getattr(identity, "linked_label", None)
        channel, _, native = isolation_key.partition(":")
        partition, _, user = native.partition(":")
        if channel == "api" and native.startswith("entra."):  # an Entra ID access token's
            return linked or f"Entra principal {native[len('entra.') :]}"
        if channel == "api" and not user and native.startswith("key."):  # the key itself
            name = self.key_name(native[len("key.") :])
            label = f"API key {name}" if name else native
        elif channel == "api" and user:  # "<partition>:user.<id>", named by a trusted key
            kind, _, value = user.partition(".")
            label = value if kind == "user" else f"user #{value[:12]}"
            if partition.startswith("key."):  # the key's own partition
                name = self.key_name(partition[len("key.") :])
                label += f" (key {name})" if name else ""
            else:
                label += f" ({partition})"
        elif identity is not None:  # a person on a chat channel
            label = str(identity)
        elif channel.endswith("-chat"):  # a conversation a group chat's people share
            label = f"everyone in {channel.removesuffix('-chat')} chat {native}"
        else:
            label = isolation_key
        return f"{label} · {linked}" if linked else label


# ---------------------------------------------------------------------------------------------
# Messages as text


@dataclass(frozen=True, slots=True)
class Part:
    kind: str  # text, reasoning, media, call, result, error, other
    text: str


@dataclass(frozen=True, slots=True)
class ShownMessage:
    role: str
    parts: list[Part]


_PART_LIMIT = 2000  # characters of a call's arguments or a tool's result


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return Truncator(text).chars(_PART_LIMIT)


def _size(uri: str) -> str:
    if not uri.startswith("data:"):
        return Truncator(uri).chars(100)
    size = len(uri.partition(",")[2]) * 3 // 4
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"


def _content_part(content: dict[str, Any]) -> Part | None:
    kind = content.get("type")
    if kind == "text":
        return Part("text", content.get("text") or "")
    if kind == "text_reasoning":
        return Part("reasoning", content.get("text") or "")
    if kind in ("data", "uri"):
        media_type = content.get("media_type") or "file"
        noun = "image" if media_type.startswith("image/") else "file"
        name = content.get("name") or (content.get("additional_properties") or {}).get("filename")
        details = ", ".join(
            part for part in (name, media_type, _size(content.get("uri") or "")) if part
        )
        return Part("media", f"[{noun}: {details}]")
    if kind == "hosted_file":
        return Part("media", f"[file: {content.get('file_id', '')}]")
    if kind == "function_call":
        arguments = _json_text(content.get("arguments"))
        return Part("call", f"{content.get('name', '')}({arguments})")
    if kind == "function_result":
        result = content.get("result")
        return Part("result", _json_text(content.get("exception") if result is None else result))
    if kind == "error":
        return Part("error", content.get("message") or content.get("error_code") or "error")
    if kind == "usage":
        return None
    return Part("other", f"[{kind}]")


def shown_messages(messages: Sequence[dict[str, Any]]) -> list[ShownMessage]:
    """Stored agent_framework messages (Message.to_dict()) as roles and text."""
    shown = []
    for message in messages:
        parts = [_content_part(content) for content in message.get("contents") or []]
        author = message.get("author_name")
        role = str(message.get("role") or "?") + (f" ({author})" if author else "")
        shown.append(ShownMessage(role, [part for part in parts if part is not None]))
    return shown


def _item_part(part: dict[str, Any]) -> Part:
    kind = part.get("type")
    if kind in ("output_text", "input_text"):
        return Part("text", part.get("text") or "")
    if kind == "refusal":
        return Part("error", f"refused: {part.get('refusal', '')}")
    if kind in ("input_image", "input_file"):
        return Part("media", f"[{kind.removeprefix('input_')}]")
    return Part("other", f"[{kind}]")


def shown_items(items: Sequence[dict[str, Any]]) -> list[ShownMessage]:
    """Output items (Responses' message, function_call, ...; a workflow's output and
    request_info frames) as roles and text."""
    shown = []
    for item in items:
        kind = item.get("type", "?")
        if kind == "message":
            parts = [_item_part(part) for part in item.get("content") or []]
            shown.append(ShownMessage(f"message · {item.get('role', '')}", parts))
        elif kind == "function_call":
            call = f"{item.get('name', '')}({_json_text(item.get('arguments'))})"
            shown.append(ShownMessage("function call", [Part("call", call)]))
        elif kind == "function_call_output":
            output = _json_text(item.get("output"))
            shown.append(ShownMessage("function result", [Part("result", output)]))
        elif kind == "reasoning":
            texts = [part.get("text", "") for part in item.get("summary") or []]
            shown.append(ShownMessage("reasoning", [Part("reasoning", "\n".join(texts))]))
        elif kind == "output":  # a workflow's output, as the Invocations channel keeps it
            role = f"output · {item.get('executor_id', '')}"
            shown.append(ShownMessage(role, [Part("text", _json_text(item.get("data")))]))
        elif kind == "request_info":  # a workflow asking the person
            role = f"asks the person · {item.get('source_executor_id', '')}"
            shown.append(ShownMessage(role, [Part("text", _json_text(item.get("data")))]))
        else:
            shown.append(ShownMessage(kind, [Part("other", f"[{kind}]")]))
    return shown


def render_messages(messages: list[ShownMessage]) -> SafeString:
    return render_to_string("admin/afhost/messages.html", {"messages": messages})


def _elide_data(value: Any) -> Any:
    """Stored JSON without agent_framework's empty `additional_properties`, and with inline
    data (base64 images and files) shortened to its size."""
    if isinstance(value, dict):
        return {
            key: _elide_data(item)
            for key, item in value.items()
            if item or key != "additional_properties"
        }
    if isinstance(value, list):
        return [_elide_data(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 200:
        return f"{value.partition(',')[0]},… ({_size(value)})"
    return value


def raw_json(value: Any) -> SafeString:
    text = json.dumps(_elide_data(value), indent=2, ensure_ascii=False, default=str)
    return format_html(
        '<pre style="white-space:pre-wrap;max-height:40em;overflow:auto">{}</pre>', text
    )


# ---------------------------------------------------------------------------------------------
# API keys


class PartitionFilter(admin.SimpleListFilter):
    """Which keys share a partition: "Own" for keys alone in theirs, then each named one."""

    title = "partition"
    parameter_name = "partition"
    OWN = "(own)"  # not a slug, so never a partition's name

    def lookups(self, request, model_admin):
        named = (
            ApiKey.objects.exclude(partition="")
            .order_by("partition")
            .values_list("partition", flat=True)
            .distinct()
        )
        return [(self.OWN, "Own"), *((name, name) for name in named)]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(partition="" if self.value() == self.OWN else self.value())


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "key_prefix",
        "is_trusted",
        "partition_name",
        "state",
        "created_at",
        "revoked_at",
    )
    list_filter = ("is_trusted", PartitionFilter, ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "public_id", "key_prefix", "partition")
    readonly_fields = ("public_id", "key_prefix", "created_at", "revoked_at")
    actions = ("revoke_selected",)

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> str:
        return "revoked" if obj.revoked_at else "active"

    @admin.display(description="Partition", ordering="partition")
    def partition_name(self, obj: ApiKey) -> str:
        return obj.partition or PartitionFilter.OWN

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, raw_key = create_api_key(
            name=obj.name, is_trusted=obj.is_trusted, partition=obj.partition
        )
        obj.pk, obj.public_id = api_key.pk, api_key.public_id
        self.message_user(
            request,
            f"New API key for {api_key.name!r}: {raw_key} — copy it now, it is not shown again.",
        )

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = revoke_api_keys(api_keys=queryset)
        self.message_user(request, f"Revoked {count} API key(s)")


# ---------------------------------------------------------------------------------------------
# Runs


class HasErrorFilter(admin.SimpleListFilter):
    """A "Has error / No error" filter; subclasses say what an error is in `error_condition`."""

    title = "error"
    parameter_name = "has_error"
    error_condition = Q(status=Run.Status.FAILED)

    def lookups(self, request, model_admin):
        return (("yes", "Has error"), ("no", "No error"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(self.error_condition)
        if self.value() == "no":
            return queryset.exclude(self.error_condition)
        return queryset


class ReadOnlyAdminMixin:
    """A record the system owns: shown, never added or edited here (no Save button)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class OwnersChangeList(ChangeList):
    """A changelist that reads the owners of its page's rows at once (ModelAdmin.owners_of)."""

    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        return self.model_admin.list_queryset(queryset)  # type: ignore[attr-defined]

    def get_results(self, request) -> None:
        super().get_results(request)
        rows = list(self.result_list)  # evaluated once; the template reads the same rows
        owners = self.model_admin.owners_of(rows)  # type: ignore[attr-defined]
        for row in rows:
            row.owners = owners


# Loaded only on a run's own page.
_RUN_PAYLOAD = ("input_messages", "output_messages", "output_items", "instructions", "options")


class RunChannelFilter(admin.SimpleListFilter):
    """The registered channels (a DISTINCT over the runs would read the whole table)."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request, model_admin):
        return [(name, name) for name in channel_names()]

    def queryset(self, request, queryset):
        return queryset.filter(channel=self.value()) if self.value() else queryset


class RunCheckpointInline(admin.TabularInline):
    """A workflow run's latest checkpoint: what it resumes from after its worker dies, or what
    the next message answers when it waits for the person."""

    model = RunCheckpoint
    fields = ("checkpoint_id", "workflow_name", "created_at", "outputs_count", "waiting")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Workflow checkpoint"

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="outputs so far")
    def outputs_count(self, obj: RunCheckpoint) -> int:
        return len(obj.outputs)

    @admin.display(description="waits for the person")
    def waiting(self, obj: RunCheckpoint) -> str:
        try:
            pending = decode_checkpoint(obj.state).pending_request_info_events
        except WorkflowCheckpointException as exc:
            return f"unreadable: {exc}"
        return f"yes ({len(pending)} question(s))" if pending else "no"


@admin.register(Run)
class RunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "response_id",
        "status_badge",
        "channel",
        "model_name",
        "api_key_name",
        "owner",
        "run_duration",
        "short_error",
        "created",
    )
    list_filter = ("status", RunChannelFilter, "is_background", HasErrorFilter)
    search_fields = ("isolation_key",)
    search_help_text = "A response id (resp_…), or part of an isolation key."
    show_full_result_count = False
    paginator = LargeTablePaginator
    summary = (
        "response_id",
        "status_badge",
        "channel",
        "model",
        "api_key_name",
        "owner",
        "isolation_key",
        "conversation",
        "previous_run_link",
        "is_background",
        "is_streamed",
        "is_stored",
    )
    timing = ("created", "enqueued", "started", "completed", "run_duration", "updated")
    outcome = ("finish_reason", "usage_summary", "error_message", "error_detail")
    shown = ("instructions", "input_view", "output_view", "output_items_view")
    raw = ("raw_input_messages", "raw_output_messages", "raw_output_items")
    readonly_fields = (*summary, *timing, *outcome, *shown, *raw)
    inlines = (RunCheckpointInline,)

    def get_fieldsets(self, request: HttpRequest, obj: Run | None = None):
        # Every other column, as stored (including any a later change adds).
        listed = {*self.readonly_fields, "status", "previous_run", "error", "usage"}
        listed |= {"id", "created_at", "enqueued_at", "started_at", "completed_at", "updated_at"}
        listed |= {"input_messages", "output_messages", "output_items"}
        others = [field.name for field in Run._meta.fields if field.name not in listed]
        return (
            (None, {"fields": self.summary}),
            ("Timing", {"fields": self.timing}),
            ("Outcome", {"fields": self.outcome}),
            ("Input", {"fields": ("instructions", "input_view")}),
            ("Output", {"fields": ("output_view", "output_items_view")}),
            ("Stored", {"classes": ("collapse",), "fields": (*self.raw, *others)}),
        )

    def get_changelist(self, request: HttpRequest, **kwargs):
        return OwnersChangeList

    def list_queryset(self, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.defer(*_RUN_PAYLOAD)

    def owners_of(self, runs: Sequence[Run]) -> Owners:
        return Owners.of(
            (run.isolation_key for run in runs),
            (run.attributes.get("api_key") for run in runs),
        )

    def _owners(self, run: Run) -> Owners:
        if not hasattr(run, "owners"):
            run.owners = self.owners_of([run])  # type: ignore[attr-defined]
        return run.owners  # type: ignore[attr-defined]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Run], search_term: str):
        public_id = parse_public_id(search_term)
        if public_id is not None:  # the id a client sees: one row, by its unique index
            return queryset.filter(public_id=public_id), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="Response id", ordering="pk")
    def response_id(self, obj: Run) -> str:
        return obj.response_id

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Run) -> SafeString:
        return run_badge(obj.status)

    @admin.display(description="Model", ordering="model")
    def model_name(self, obj: Run) -> SafeString | str:
        return format_html('<span style="white-space:nowrap">{}</span>', obj.model or EMPTY)

    @admin.display(description="API key")
    def api_key_name(self, obj: Run) -> str:
        return self._owners(obj).key_name(obj.attributes.get("api_key")) or EMPTY

    @admin.display(description="Who")
    def owner(self, obj: Run) -> str:
        return self._owners(obj).label(obj.isolation_key)

    @admin.display(description="Previous response")
    def previous_run_link(self, obj: Run) -> SafeString | str:
        previous = obj.previous_run
        return EMPTY if previous is None else run_link(previous.pk, previous.public_id)

    @admin.display(description="Duration")
    def run_duration(self, obj: Run) -> str:
        return duration(obj.started_at or obj.created_at, obj.completed_at)

    @admin.display(description="Error")
    def short_error(self, obj: Run) -> SafeString | str:
        error = obj.error_detail or (obj.error or {}).get("message", "")
        return short(error, 60) if error else EMPTY

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: Run) -> SafeString:
        return format_html('<span style="white-space:nowrap">{}</span>', when(obj.created_at))

    @admin.display(description="Last written")
    def updated(self, obj: Run) -> str:
        return when(obj.updated_at)

    @admin.display(description="Enqueued")
    def enqueued(self, obj: Run) -> str:
        return when(obj.enqueued_at)

    @admin.display(description="Started")
    def started(self, obj: Run) -> str:
        return when(obj.started_at)

    @admin.display(description="Completed")
    def completed(self, obj: Run) -> str:
        return when(obj.completed_at)

    @admin.display(description="Usage")
    def usage_summary(self, obj: Run) -> str:
        if not obj.usage:
            return EMPTY
        usage = obj.usage
        return (
            f"{usage.get('input_tokens', 0)} in · {usage.get('output_tokens', 0)} out · "
            f"{usage.get('total_tokens', 0)} tokens"
        )

    @admin.display(description="Error")
    def error_message(self, obj: Run) -> str:
        if not obj.error:
            return EMPTY
        return f"{obj.error.get('code', '')}: {obj.error.get('message', '')}"

    @admin.display(description="Input messages")
    def input_view(self, obj: Run) -> SafeString:
        return render_messages(shown_messages(obj.input_messages))

    @admin.display(description="Output messages")
    def output_view(self, obj: Run) -> SafeString:
        return render_messages(shown_messages(obj.output_messages))

    @admin.display(description="Output items")
    def output_items_view(self, obj: Run) -> SafeString:
        return render_messages(shown_items(obj.output_items))

    @admin.display(description="Input messages (JSON)")
    def raw_input_messages(self, obj: Run) -> SafeString:
        return raw_json(obj.input_messages)

    @admin.display(description="Output messages (JSON)")
    def raw_output_messages(self, obj: Run) -> SafeString:
        return raw_json(obj.output_messages)

    @admin.display(description="Output items (JSON)")
    def raw_output_items(self, obj: Run) -> SafeString:
        return raw_json(obj.output_items)


# ---------------------------------------------------------------------------------------------
# Conversations


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Turns shown on a conversation's page, the newest.
    TRANSCRIPT_RUNS = 100

    list_display = ("key", "channel", "owner", "last_run", "last_activity")
    list_filter = ("channel",)
    search_fields = ("public_id", "key", "isolation_key")
    list_select_related = ("head_run",)
    show_full_result_count = False
    paginator = LargeTablePaginator
    fields = (
        "key",
        "channel",
        "owner",
        "isolation_key",
        "public_id",
        "last_run",
        "created",
        "last_activity",
        "transcript",
    )
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs):
        return OwnersChangeList

    def list_queryset(self, queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
        return queryset.defer(*(f"head_run__{name}" for name in (*_RUN_PAYLOAD, "attributes")))

    def owners_of(self, conversations: Sequence[Conversation]) -> Owners:
        return Owners.of(conversation.isolation_key for conversation in conversations)

    @admin.display(description="Who")
    def owner(self, obj: Conversation) -> str:
        if not hasattr(obj, "owners"):
            obj.owners = self.owners_of([obj])  # type: ignore[attr-defined]
        return obj.owners.label(obj.isolation_key)  # type: ignore[attr-defined]

    @admin.display(description="Last response")
    def last_run(self, obj: Conversation) -> SafeString | str:
        head = obj.head_run
        return EMPTY if head is None else run_link(head.pk, head.public_id, head.status)

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: Conversation) -> str:
        return when(obj.created_at)

    @admin.display(description="Last activity", ordering="updated_at")
    def last_activity(self, obj: Conversation) -> str:
        return when(obj.updated_at)

    @admin.display(description="Transcript")
    def transcript(self, obj: Conversation) -> SafeString:
        newest = obj.runs.order_by("-created_at", "-pk").only(
            "public_id",
            "status",
            "created_at",
            "started_at",
            "completed_at",
            "error",
            "error_detail",
            "input_messages",
            "output_messages",
        )[: self.TRANSCRIPT_RUNS + 1]
        runs = list(newest)
        turns = [
            {
                "link": run_link(run.pk, run.public_id, run.status),
                "at": when(run.created_at),
                "duration": run.completed_at
                and duration(run.started_at or run.created_at, run.completed_at),
                "error": run.error_detail or (run.error or {}).get("message", ""),
                "input": shown_messages(run.input_messages),
                "output": shown_messages(run.output_messages),
            }
            for run in reversed(runs[: self.TRANSCRIPT_RUNS])
        ]
        return render_to_string(
            "admin/afhost/conversation/transcript.html",
            {"turns": turns, "truncated": len(runs) > self.TRANSCRIPT_RUNS},
        )
