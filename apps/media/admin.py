"""Staff see every blob's size, owner and expiry (never a key: the server has none)."""

from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat

from apps.media import services
from apps.media.models import Media


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("stored", "stored"), ("unsent", "uploaded, not sent yet"), ("deleted", "deleted")]

    def queryset(self, request, queryset):
        if self.value() == "stored":
            return queryset.filter(deleted_at__isnull=True)
        if self.value() == "unsent":
            return queryset.filter(deleted_at__isnull=True, referenced_at__isnull=True)
        if self.value() == "deleted":
            return queryset.filter(deleted_at__isnull=False)
        return queryset


@admin.register(Media)
class MediaAdmin(admin.ModelAdmin):
    list_display = (
        "public_id",
        "conversation",
        "uploader",
        "human_size",
        "created_at",
        "expires_at",
        "referenced_at",
        "deleted_at",
        "deleted_reason",
    )
    list_filter = (StateFilter, "deleted_reason")
    search_fields = ("uploader__username", "sha256")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_select_related = ("uploader", "conversation")
    readonly_fields = (
        "public_id",
        "conversation",
        "uploader",
        "uploader_device_id",
        "blob",
        "size",
        "sha256",
        "created_at",
        "expires_at",
        "referenced_at",
        "deleted_at",
        "deleted_reason",
    )
    fields = readonly_fields
    actions = ["delete_blobs"]

    @admin.display(description="size", ordering="size")
    def human_size(self, obj):
        return filesizeformat(obj.size)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Delete the selected blobs now (downloads then answer 410)")
    def delete_blobs(self, request, queryset):
        count = 0
        for media in queryset.filter(deleted_at__isnull=True):
            services.media_delete(media=media, reason="staff")
            count += 1
        self.message_user(request, f"Deleted {count} blob(s).", messages.SUCCESS)

    def delete_model(self, request, obj):
        # Deleting a row must not leave its blob behind in storage.
        if obj.blob:
            services.media_storage().delete(obj.blob)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for media in queryset:
            if media.blob:
                services.media_storage().delete(media.blob)
        super().delete_queryset(request, queryset)
