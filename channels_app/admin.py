from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from afhost.admin import HasErrorFilter
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from channels_app.telegram.services import reprocess_updates

_COLOURS = {"pending": "#205493", "processed": "#2e7d32", "ignored": "#666", "failed": "#c62828"}


class LastErrorFilter(HasErrorFilter):
    error_condition = ~Q(last_error="")


@admin.register(TelegramUpdate)
class TelegramUpdateAdmin(admin.ModelAdmin):
    list_display = (
        "update_id",
        "chat",
        "status_badge",
        "attempts",
        "short_error",
        "created_at",
        "processed_at",
    )
    list_filter = ("status", LastErrorFilter)
    search_fields = ("update_id", "chat__chat_id", "chat__title")
    list_select_related = ("chat",)
    raw_id_fields = ("chat", "run")
    show_full_result_count = False
    readonly_fields = [field.name for field in TelegramUpdate._meta.fields]
    actions = ("reprocess_selected",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: TelegramUpdate):
        return format_html(
            '<b style="color:{}">{}</b>', _COLOURS.get(obj.status, "#666"), obj.get_status_display()
        )

    @admin.display(description="Last error")
    def short_error(self, obj: TelegramUpdate) -> str:
        return obj.last_error[:80]

    @admin.action(description="Re-process selected updates")
    def reprocess_selected(self, request: HttpRequest, queryset: QuerySet[TelegramUpdate]) -> None:
        count = reprocess_updates(updates=queryset.select_related("chat"))
        self.message_user(request, f"Queued {count} update(s) for processing")


class TelegramChatMemberInline(admin.TabularInline):
    model = TelegramChatMember
    fields = ("identity", "message_count", "last_message_at")
    readonly_fields = fields
    raw_id_fields = ("identity",)
    extra = 0
    can_delete = False
    ordering = ("-last_message_at",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TelegramChat)
class TelegramChatAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "chat_id",
        "kind",
        "is_forum",
        "member_count",
        "blocked_at",
        "updated_at",
    )
    list_filter = ("kind", "is_forum", ("blocked_at", admin.EmptyFieldListFilter))
    search_fields = ("chat_id", "title")
    readonly_fields = [field.name for field in TelegramChat._meta.fields]
    inlines = [TelegramChatMemberInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[TelegramChat]:
        return super().get_queryset(request).annotate(member_total=Count("members"))

    @admin.display(description="People", ordering="member_total")
    def member_count(self, obj: TelegramChat) -> int:
        return obj.member_total
