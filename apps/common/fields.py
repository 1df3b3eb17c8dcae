"""Serializer fields for the wire's opaque ids and base64 blobs."""

import base64
import binascii

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.common import ids
from apps.common.errors import TooLarge


@extend_schema_field({"type": "string", "example": "c_4611686018427387905"})
class PublicIdField(serializers.Field):
    """An opaque id such as `c_123`; validates to its integer key."""

    def __init__(self, prefix: str, **kwargs):
        self.prefix = prefix
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        key = ids.decode(self.prefix, data)
        if key is None:
            raise serializers.ValidationError(f"Expected an id of the form {self.prefix}_<digits>.")
        return key

    def to_representation(self, value):
        return value if isinstance(value, str) else ids.encode(self.prefix, value)


@extend_schema_field(OpenApiTypes.BYTE)
class Base64Field(serializers.Field):
    """Standard base64 with padding; decodes to bytes and enforces a size cap."""

    def __init__(self, max_bytes: int, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError("Expected a base64 string.")
        # Refuse by length before decoding, so an oversized body costs nothing.
        if len(data) > 4 * ((self.max_bytes + 2) // 3):
            self.too_large()
        try:
            value = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise serializers.ValidationError("Not valid standard base64 with padding.") from exc
        if len(value) > self.max_bytes:
            self.too_large()
        if not value:
            raise serializers.ValidationError("Must not be empty.")
        return value

    def to_representation(self, value):
        return base64.b64encode(value).decode()

    def too_large(self):
        raise TooLarge(
            f"A ciphertext is larger than {self.max_bytes} bytes.", max_bytes=self.max_bytes
        )


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON number, not a string, float or boolean."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class UUIDStringField(serializers.UUIDField):
    """A UUID that must be a JSON string: DRF would also take an integer as one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)
