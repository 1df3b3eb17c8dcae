from rest_framework import serializers

from apps.accounts.models import User


class RegisterSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, write_only=True)
    display_name = serializers.CharField(max_length=100, required=False, allow_blank=True)


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, write_only=True)
    device_name = serializers.CharField(max_length=100, required=False, default="device")
    session = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Browsers: also log this session in, bound to the new device.",
    )


class UserPublicSerializer(serializers.Serializer):
    id = serializers.CharField()
    username = serializers.CharField()
    display_name = serializers.CharField()


class MeSerializer(UserPublicSerializer):
    last_seen_visibility = serializers.ChoiceField(choices=User.LastSeenVisibility.choices)


class MeUpdateSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=100, required=False)
    last_seen_visibility = serializers.ChoiceField(
        choices=User.LastSeenVisibility.choices, required=False
    )


class DeviceSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class LoginResultSerializer(serializers.Serializer):
    user = UserPublicSerializer()
    device = DeviceSerializer()
    token = serializers.CharField()


class RegisterResultSerializer(serializers.Serializer):
    user = UserPublicSerializer()


class PublicDeviceSerializer(serializers.Serializer):
    id = serializers.CharField()
    identity_key = serializers.CharField(allow_null=True)


class HandleQuerySerializer(serializers.Serializer):
    handle = serializers.CharField(max_length=150)
