"""Staff see conversations and message metadata, never a body."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from apps.common import ids
from apps.messaging import selectors
from apps.messaging.models import Conversation, Membership, Message


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "is_admin", "read_seq", "delivered_seq", "joined_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("public_id", "kind", "title", "last_seq", "created_at")
    list_filter = ("kind", "created_at")
    search_fields = ("title", "memberships__user__username")
    readonly_fields = ("kind", "title", "last_seq", "created_at")
    fields = readonly_fields
    inlines = [MembershipInline]

    def has_add_permission(self, request):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("public_id", "conversation", "seq", "sender_user", "kind", "created_at")
    list_filter = ("kind", "created_at")
    search_fields = ("sender_user__username",)
    list_select_related = ("sender_user", "conversation")
    fields = (
        "conversation",
        "seq",
        "sender_user",
        "kind",
        "client_id",
        "reply_to_seq",
        "created_at",
        "delivery_trace",
    )
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="delivery trace")
    def delivery_trace(self, obj):
        """Stored, fanned out, pushed, acked, read, per recipient and device; no body."""
        trace = selectors.message_trace(message=obj)
        fanout = trace["fanout"]
        steps = [
            ("stored", _when(trace["stored_at"])),
            (
                "fanned out",
                f"{fanout['state']}" + (f", {_when(fanout['at'])}" if fanout["at"] else ""),
            ),
            ("copies waiting", str(trace["waiting"])),
        ]
        recipients = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    ids.encode(ids.USER, r["user_id"]),
                    _when(r["delivered_at"]),
                    _when(r["read_at"]),
                    _when(r["expired_at"]),
                )
                for r in trace["recipients"]
            ),
        )
        devices = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{d['device'].public_id} ({d['device'].user.username}/{d['device'].name})",
                    d["state"],
                    d["cursor"] if d["cursor"] is not None else "-",
                    _when(d["waiting_since"]),
                    f"{_when(d['pushed_at'])} by {d['pushed_via']}" if d["pushed_at"] else "-",
                    _last_push(d["last_push"]),
                )
                for d in trace["devices"]
            ),
        )
        return format_html(
            "<table><tbody>{}</tbody></table>"
            "<h4>Recipients</h4><table><thead><tr><th>user</th><th>delivered</th><th>read</th>"
            "<th>expired</th></tr></thead><tbody>{}</tbody></table>"
            "<h4>Devices</h4><table><thead><tr><th>device</th><th>state</th><th>cursor</th>"
            "<th>in its inbox since</th><th>pushed</th><th>device's last push</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", steps),
            recipients,
            devices,
        )


def _when(at) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f UTC") if at else "-"


def _last_push(mark) -> str:
    if mark is None:
        return "-"
    cursor, at, transport = mark
    return f"cursor {cursor} by {transport}, {_when(at)}"
