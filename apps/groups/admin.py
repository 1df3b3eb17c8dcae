"""Staff manage groups with the same services, and so the same events, as the API."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q

from apps.accounts.models import User
from apps.common.errors import NatterError
from apps.groups import services
from apps.groups.models import Group
from apps.messaging.models import Membership


class MemberInline(admin.TabularInline):
    model = Membership
    fields = ("user", "is_admin", "joined_seq", "left_seq", "read_seq")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "members (past members show the seq they left at)"

    def has_add_permission(self, request, obj=None):
        return False


class GroupForm(forms.ModelForm):
    add_members = forms.CharField(
        required=False, help_text="Usernames to add, separated by commas or spaces."
    )
    remove_members = forms.CharField(
        required=False, help_text="Usernames to remove, separated by commas or spaces."
    )

    class Meta:
        model = Group
        fields = ("title",)

    def clean_add_members(self):
        return _users(self.cleaned_data["add_members"])

    def clean_remove_members(self):
        return _users(self.cleaned_data["remove_members"])


def _users(text: str) -> list[User]:
    names = [n for n in text.replace(",", " ").split() if n]
    if not names:
        return []
    query = Q()
    for name in names:
        query |= Q(username__iexact=name)
    found = {u.username.lower(): u for u in User.objects.filter(query)}
    unknown = [n for n in names if n.lower() not in found]
    if unknown:
        raise forms.ValidationError(f"No such user: {', '.join(unknown)}")
    return [found[n.lower()] for n in names]


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin):
    form = GroupForm
    list_display = ("title", "public_id", "member_count", "last_seq", "created_at")
    search_fields = ("title", "memberships__user__username")
    list_filter = ("created_at",)
    readonly_fields = ("last_seq", "created_at")
    fields = ("title", "add_members", "remove_members", "last_seq", "created_at")
    inlines = [MemberInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(members=Count("memberships", filter=Q(memberships__left_seq__isnull=True)))
        )

    @admin.display(ordering="members")
    def member_count(self, obj):
        return obj.members

    def has_add_permission(self, request):
        return False  # a group is born of a user's `POST /api/v1/groups`

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        # Through the services, never .save(): every change is a seq-ordered event.
        try:
            if "title" in form.changed_data:
                services.group_rename(group_id=obj.id, actor=None, title=form.cleaned_data["title"])
            added = form.cleaned_data["add_members"]
            if added:
                services.group_members_add(
                    group_id=obj.id, actor=None, user_ids=[u.id for u in added]
                )
            for user in form.cleaned_data["remove_members"]:
                services.group_member_remove(group_id=obj.id, actor=None, user_id=user.id)
        except NatterError as error:
            self.message_user(request, f"{error.code}: {error.message}", messages.ERROR)
