from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from apps.accounts import services
from apps.accounts.models import Device, User


class DeviceInline(admin.TabularInline):
    model = Device
    fields = ("name", "created_at", "last_active_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "display_name", "id", "is_staff", "is_active", "date_joined")
    search_fields = ("username", "display_name", "email")
    list_filter = ("is_staff", "is_active", "last_seen_visibility", "date_joined")
    fieldsets = DjangoUserAdmin.fieldsets + (
        ("Natter", {"fields": ("display_name", "last_seen_visibility", "last_seen")}),
    )
    inlines = [DeviceInline]


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("public_id", "user", "name", "created_at", "last_active_at", "revoked_at")
    list_filter = (ActiveFilter, "created_at")
    search_fields = ("user__username", "name")
    list_select_related = ("user",)
    readonly_fields = ("user", "created_at", "last_active_at", "revoked_at", "inbox_cursor")
    fields = ("user", "name", "created_at", "last_active_at", "revoked_at", "inbox_cursor")
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Devices are born by logging in: only then does somebody hold the token.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke the selected devices (closes their sockets)")
    def revoke(self, request, queryset):
        count = 0
        for device in queryset.filter(revoked_at__isnull=True):
            services.device_revoke(device=device)
            count += 1
        self.message_user(request, f"Revoked {count} device(s).", messages.SUCCESS)
