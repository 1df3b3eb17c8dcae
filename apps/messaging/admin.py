"""Staff see conversations and message metadata, never a body."""

from django.contrib import admin

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
    )
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
