from rest_framework import serializers

from apps.common import ids
from apps.common.fields import PublicIdField
from apps.messaging.serializers import ConversationSerializer


class GroupCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200)
    member_ids = serializers.ListField(child=PublicIdField(ids.USER), max_length=1000)


class GroupUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200)


class GroupMembersAddSerializer(serializers.Serializer):
    user_ids = serializers.ListField(child=PublicIdField(ids.USER), min_length=1, max_length=1000)


class GroupAdminSerializer(serializers.Serializer):
    user_id = PublicIdField(ids.USER)


class GroupSerializer(ConversationSerializer):
    admins = serializers.ListField(child=serializers.CharField())


class ReceiptRowSerializer(serializers.Serializer):
    user = serializers.CharField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    read_at = serializers.DateTimeField(allow_null=True)
    expired_at = serializers.DateTimeField(allow_null=True)


class MessageReceiptsSerializer(serializers.Serializer):
    message_id = serializers.CharField()
    conversation = serializers.CharField()
    seq = serializers.IntegerField()
    receipts = ReceiptRowSerializer(many=True)
