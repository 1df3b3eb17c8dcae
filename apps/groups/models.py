from apps.messaging.models import Conversation


class GroupManager(Conversation._default_manager.__class__):
    def get_queryset(self):
        return super().get_queryset().filter(kind=Conversation.Kind.GROUP)


class Group(Conversation):
    """Groups as staff see them in the admin: conversations of kind `group`."""

    objects = GroupManager()

    class Meta:
        proxy = True
