"""The operator console for Telegram: the inbox of updates, with each attempt at answering
them, and the chats the bot is in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin
from django.db.models import Count, F, Q, QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from afhost.admin import (
    EMPTY,
    HasErrorFilter,
    LargeTablePaginator,
    ReadOnlyAdminMixin,
    badge,
    raw_json,
    run_badge,
    run_link,
    short,
    when,
)
from afhost.models import Run, response_id
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from channels_app.telegram.services import reprocess_updates

_COLOURS = {
    "pending": "#205493",
    "processed": "#2e7d32",
    "ignored": "#666",
    "failed": "#c62828",
    "retry": "#ef6c00",
    "interrupted": "#ef6c00",
}


def _status_badge(status: str, label: str | None = None) -> SafeString:
    return badge(label or status.capitalize(), _COLOURS.get(status, "#666"))


class LastErrorFilter(HasErrorFilter):
    error_condition = ~Q(last_error="")


@admin.register(TelegramUpdate)
class TelegramUpdateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "update_id",
        "chat",
        "status_badge",
        "attempts",
        "message_text",
        "run_status",
        "short_error",
        "received",
        "processed",
    )
    list_filter = ("status", LastErrorFilter)
    search_fields = ("update_id", "chat__chat_id", "chat__title")
    list_select_related = ("chat",)
    show_full_result_count = False
    paginator = LargeTablePaginator
    summary = (
        "update_id",
        "chat",
        "status_badge",
        "attempts",
        "last_error",
        "run_column",
        "sent_parts",
        "received",
        "next_attempt",
        "processed",
        "counted",
    )
    fieldsets = (
        (None, {"fields": summary}),
        ("Message", {"fields": ("message_text",)}),
        ("Attempt history", {"fields": ("history",)}),
        ("Payload", {"classes": ("collapse",), "fields": ("raw_payload",)}),
    )
    readonly_fields = (*summary, "message_text", "history", "raw_payload")
    actions = ("reprocess_selected",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[TelegramUpdate]:
        # The run's id and status by a join, not its row (and its messages).
        return (
            super()
            .get_queryset(request)
            .annotate(run_public_id=F("run__public_id"), run_status=F("run__status"))
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("channels_app.change_telegramupdate")

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: TelegramUpdate) -> SafeString:
        return _status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Message")
    def message_text(self, obj: TelegramUpdate) -> SafeString | str:
        payload = obj.payload if isinstance(obj.payload, dict) else {}
        message = next(
            (payload[kind] for kind in ("message", "edited_message") if kind in payload), None
        )
        if not isinstance(message, dict):
            kind = next((key for key in payload if key != "update_id"), None)
            return f"({kind})" if kind else EMPTY
        text = message.get("text") or message.get("caption") or ""
        if not isinstance(text, str):
            return EMPTY
        author = message.get("from") or {}
        who = f"@{author['username']}" if author.get("username") else author.get("first_name")
        if message.get("photo") or message.get("document"):
            text = f"[attachment] {text}".strip()
        return short(f"{who}: {text}" if who else text, 60)

    @admin.display(description="Run")
    def run_column(self, obj: TelegramUpdate) -> SafeString | str:
        if obj.run_id is None:
            return EMPTY
        return run_link(obj.run_id, obj.run_public_id, obj.run_status)  # type: ignore[attr-defined]

    @admin.display(description="Run")
    def run_status(self, obj: TelegramUpdate) -> SafeString | str:
        """The run's status, linking to it (its id is long for a list)."""
        if obj.run_id is None:
            return EMPTY
        return format_html(
            '<a href="{}" title="{}">{}</a>',
            reverse("admin:afhost_run_change", args=[obj.run_id]),
            response_id(obj.run_public_id),  # type: ignore[attr-defined]
            run_badge(obj.run_status),  # type: ignore[attr-defined]
        )

    @admin.display(description="Last error")
    def short_error(self, obj: TelegramUpdate) -> SafeString | str:
        return short(obj.last_error)

    @admin.display(description="Received", ordering="created_at")
    def received(self, obj: TelegramUpdate) -> str:
        return when(obj.created_at)

    @admin.display(description="Ended", ordering="processed_at")
    def processed(self, obj: TelegramUpdate) -> str:
        return when(obj.processed_at)

    @admin.display(description="Next attempt")
    def next_attempt(self, obj: TelegramUpdate) -> str:
        return when(obj.next_attempt_at) if obj.status == TelegramUpdate.Status.PENDING else EMPTY

    @admin.display(description="Counted in the chat's members")
    def counted(self, obj: TelegramUpdate) -> str:
        return when(obj.counted_at)

    @admin.display(description="Newest first")
    def history(self, obj: TelegramUpdate) -> SafeString:
        entries: list[dict[str, Any]] = list(obj.attempt_history)
        runs = {
            run.pk: run
            for run in Run.objects.filter(
                pk__in={entry.get("run") for entry in entries if entry.get("run")}
            ).only("public_id", "status")
        }
        rows = []
        for entry in reversed(entries):  # newest first
            run = runs.get(entry.get("run"))  # type: ignore[arg-type]
            outcome = str(entry.get("outcome", ""))
            rows.append(
                {
                    "at": when(datetime.fromisoformat(entry["at"])) if entry.get("at") else "",
                    "attempt": entry.get("attempt", ""),
                    "outcome": _status_badge(outcome),
                    "error": entry.get("error", ""),
                    "run": run_link(run.pk, run.public_id) if run else "",
                }
            )
        return render_to_string(
            "admin/channels_app/telegramupdate/attempt_history.html", {"rows": rows}
        )

    @admin.display(description="Payload")
    def raw_payload(self, obj: TelegramUpdate) -> SafeString:
        return raw_json(obj.payload)

    @admin.action(description="Re-process selected updates", permissions=["operate"])
    def reprocess_selected(self, request: HttpRequest, queryset: QuerySet[TelegramUpdate]) -> None:
        queued = reprocess_updates(updates=queryset.select_related("chat"))
        for update in queued:
            self.log_change(request, update, "Re-processed")
        self.message_user(request, f"Queued {len(queued)} update(s) for processing")


class TelegramChatMemberInline(admin.TabularInline):
    model = TelegramChatMember
    fields = ("identity", "message_count", "last_message")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-last_message_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[TelegramChatMember]:
        return super().get_queryset(request).select_related("identity")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Last message")
    def last_message(self, obj: TelegramChatMember) -> str:
        return when(obj.last_message_at)


@admin.register(TelegramChat)
class TelegramChatAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "chat_id",
        "kind",
        "is_forum",
        "member_count",
        "blocked",
        "last_activity",
    )
    list_filter = ("kind", "is_forum", ("blocked_at", admin.EmptyFieldListFilter))
    search_fields = ("chat_id", "title")
    fields = (
        "chat_id",
        "kind",
        "title",
        "is_forum",
        "blocked",
        "blocked_reason",
        "created",
        "last_activity",
    )
    readonly_fields = fields
    inlines = [TelegramChatMemberInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TelegramChat]:
        return super().get_queryset(request).annotate(member_total=Count("members"))

    @admin.display(description="People", ordering="member_total")
    def member_count(self, obj: TelegramChat) -> int:
        return obj.member_total  # type: ignore[attr-defined]

    @admin.display(description="Blocked", ordering="blocked_at")
    def blocked(self, obj: TelegramChat) -> str:
        return when(obj.blocked_at)

    @admin.display(description="Created", ordering="created_at")
    def created(self, obj: TelegramChat) -> str:
        return when(obj.created_at)

    @admin.display(description="Last activity", ordering="updated_at")
    def last_activity(self, obj: TelegramChat) -> str:
        return when(obj.updated_at)
