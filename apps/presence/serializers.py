"""Wire shapes of presence and typing, shared by the WebSocket and REST."""

from django.conf import settings
from rest_framework import serializers

from apps.common import ids
from apps.common.fields import PublicIdField


class PresenceSubscribeSerializer(serializers.Serializer):
    user_ids = serializers.ListField(
        child=serializers.CharField(),
        max_length=settings.NATTER["PRESENCE_MAX_SUBSCRIPTIONS"],
        allow_empty=True,
        help_text="Replaces the whole set; at most 100 users. An empty list unsubscribes.",
    )

    def validate_user_ids(self, value):
        # Decoded here, not by a child field, so an error names the field, not an index.
        keys = [ids.decode(ids.USER, v) for v in value]
        if None in keys:
            raise serializers.ValidationError("Expected user ids of the form u_<digits>.")
        return keys


class TypingSerializer(serializers.Serializer):
    conversation = PublicIdField(ids.CONVERSATION)
    state = serializers.ChoiceField(choices=["composing", "paused"])


class PresenceSerializer(serializers.Serializer):
    type = serializers.CharField(default="presence")
    user = serializers.CharField()
    status = serializers.ChoiceField(choices=["online", "offline"])
    last_seen = serializers.DateTimeField(allow_null=True)


class PresenceSnapshotSerializer(serializers.Serializer):
    presence = PresenceSerializer(many=True)
