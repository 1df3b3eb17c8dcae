from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.utils import timezone
from django.utils.timesince import timesince

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


def stuck_after() -> timedelta:
    return timedelta(minutes=settings.NATTER["STUCK_INBOX_MINUTES"])


class InboxFilter(admin.SimpleListFilter):
    """The stuck-queue view: devices whose oldest undelivered event is too old."""

    title = "inbox"
    parameter_name = "inbox"

    def lookups(self, request, model_admin):
        minutes = settings.NATTER["STUCK_INBOX_MINUTES"]
        return [
            ("stuck", f"Stuck: oldest undelivered event over {minutes} min old"),
            ("waiting", "Has undelivered events"),
            ("empty", "Empty"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "stuck":
            return queryset.filter(
                revoked_at__isnull=True, inbox_oldest__lt=timezone.now() - stuck_after()
            ).order_by("inbox_oldest")
        if self.value() == "waiting":
            return queryset.filter(inbox_oldest__isnull=False)
        if self.value() == "empty":
            return queryset.filter(inbox_oldest__isnull=True)
        return queryset


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = (
        "public_id",
        "user",
        "name",
        "created_at",
        "last_active_at",
        "revoked_at",
        "oldest_undelivered",
        "undelivered",
    )
    list_filter = (ActiveFilter, InboxFilter, "created_at")
    search_fields = ("user__username", "name")
    list_select_related = ("user",)
    readonly_fields = (
        "user",
        "created_at",
        "last_active_at",
        "revoked_at",
        "inbox_cursor",
        "oldest_undelivered",
        "undelivered",
        "last_push",
    )
    fields = (
        "user",
        "name",
        "created_at",
        "last_active_at",
        "revoked_at",
        "inbox_cursor",
        "oldest_undelivered",
        "undelivered",
        "last_push",
    )
    actions = ["revoke"]

    def get_queryset(self, request):
        from apps.messaging.selectors import devices_with_inbox_age

        return devices_with_inbox_age(super().get_queryset(request))

    @admin.display(description="oldest undelivered event", ordering="inbox_oldest")
    def oldest_undelivered(self, obj):
        if obj.inbox_oldest is None:
            return "-"
        return f"{timesince(obj.inbox_oldest)} ago ({obj.inbox_oldest:%Y-%m-%d %H:%M:%S} UTC)"

    @admin.display(description="undelivered events", ordering="inbox_waiting")
    def undelivered(self, obj):
        return obj.inbox_waiting or 0

    @admin.display(description="last push")
    def last_push(self, obj):
        from apps.messaging.delivery import pushed_marks

        mark = pushed_marks([obj.id]).get(obj.id)
        if mark is None:
            return "-"
        cursor, at, transport = mark
        return f"up to cursor {cursor} by {transport}, {timesince(at)} ago ({at:%Y-%m-%d %H:%M:%S} UTC)"

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
