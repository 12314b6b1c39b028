from django.contrib import admin

from linking.models import Identity


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "channel",
        "native_id",
        "display_name",
        "last_seen_at",
        "unreachable_at",
    )
    list_filter = ("channel", ("unreachable_at", admin.EmptyFieldListFilter))
    search_fields = ("public_id", "native_id", "username", "display_name", "isolation_key")
    readonly_fields = [
        "public_id",
        "channel",
        "native_id",
        "isolation_key",
        "last_seen_at",
        "unreachable_at",
        "unreachable_reason",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False
