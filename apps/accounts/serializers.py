from rest_framework import serializers

from apps.accounts.models import User
from apps.common import ids
from apps.common.fields import Base64Field, PublicIdField, StrictIntegerField


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


class KeyField(Base64Field):
    """A key or signature of an exact length, in standard base64."""

    def __init__(self, length: int, **kwargs):
        self.length = length
        super().__init__(max_bytes=length, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) != self.length:
            raise serializers.ValidationError(f"Must be exactly {self.length} bytes.")
        return value

    def too_large(self):
        raise serializers.ValidationError(f"Must be exactly {self.length} bytes.")


# Key ids are u32 on the wire of docs/crypto.md, and 0 there means "none".
KEY_ID_MAX = 2**32 - 1


class SignedPreKeySerializer(serializers.Serializer):
    key_id = StrictIntegerField(min_value=1, max_value=KEY_ID_MAX)
    public_key = KeyField(32)
    signature = KeyField(64)


class OneTimePreKeySerializer(serializers.Serializer):
    key_id = StrictIntegerField(min_value=1, max_value=KEY_ID_MAX)
    public_key = KeyField(32)


class KeysUploadSerializer(serializers.Serializer):
    identity_key = KeyField(32, help_text="The device's Ed25519 identity public key.")
    signed_prekey = SignedPreKeySerializer(
        required=False,
        help_text="Required on the first upload and with a new identity key.",
    )
    one_time_prekeys = serializers.ListField(
        child=OneTimePreKeySerializer(), required=False, default=list, max_length=100
    )


class KeysCountSerializer(serializers.Serializer):
    one_time_prekeys = serializers.IntegerField()


class KeysClaimSerializer(serializers.Serializer):
    user_id = PublicIdField(ids.USER)
    device_ids = serializers.ListField(
        child=PublicIdField(ids.DEVICE),
        required=False,
        max_length=100,
        help_text="Only these devices of the user (those a send was missing).",
    )


class BundleSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    identity_key = Base64Field(max_bytes=32)
    signed_prekey = SignedPreKeySerializer()
    one_time_prekey = OneTimePreKeySerializer(allow_null=True)


class KeysClaimResultSerializer(serializers.Serializer):
    bundles = BundleSerializer(many=True)
