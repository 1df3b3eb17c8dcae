"""The admin page of the connection registry: who is connected to which process."""

from django.contrib import admin
from django.template.response import TemplateResponse

from apps.accounts.models import User
from apps.common.errors import OUTAGES
from apps.presence import selectors
from apps.presence.models import ConnectedDevice


@admin.register(ConnectedDevice)
class ConnectedDeviceAdmin(admin.ModelAdmin):
    """Reads Redis, not a table: devices per server process, and a user's devices."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        handle = request.GET.get("user", "").strip()
        process = request.GET.get("process", "").strip()
        context = {
            **self.admin_site.each_context(request),
            "title": "Connected devices",
            "opts": self.model._meta,
            "handle": handle,
            "process": process,
            "error": None,
            "user": None,
        }
        try:
            context["processes"] = selectors.registry_processes()
            context["total"] = sum(p["devices"] for p in context["processes"])
            if handle:
                user = User.objects.filter(username__iexact=handle).first()
                context["user"] = user
                if user is not None:
                    context["devices"] = selectors.registry_devices(user_id=user.id)
            elif process:
                context["devices"] = selectors.registry_devices(process=process)
        except OUTAGES:
            context["error"] = "The registry (Redis) does not answer."
        return TemplateResponse(request, "admin/presence/connections.html", context)
