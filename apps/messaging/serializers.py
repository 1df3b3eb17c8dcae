"""Wire shapes of messaging, shared by REST, the WebSocket and the OpenAPI schema."""

import base64
import binascii
import uuid

from django.conf import settings
from rest_framework import serializers

from apps.common import ids
from apps.common.fields import Base64Field, PublicIdField, StrictIntegerField, UUIDStringField
from apps.messaging.models import Message

MAX_INT = 2**63 - 1


class CiphertextSerializer(serializers.Serializer):
    device = PublicIdField(ids.DEVICE)
    envelope = serializers.ChoiceField(choices=["prekey", "message"])
    body = Base64Field(max_bytes=settings.NATTER["CIPHERTEXT_MAX_BYTES"])


class MessageSendSerializer(serializers.Serializer):
    client_id = UUIDStringField(format="hex_verbose")
    conversation = PublicIdField(ids.CONVERSATION)
    kind = serializers.ChoiceField(choices=Message.Kind.choices)
    ciphertexts = CiphertextSerializer(
        many=True, max_length=settings.NATTER["MAX_CIPHERTEXTS"], allow_empty=True
    )
    group_body = Base64Field(
        max_bytes=settings.NATTER["CIPHERTEXT_MAX_BYTES"],
        required=False,
        help_text="Groups only: the one Sender Key ciphertext every member device gets.",
    )
    reply_to_seq = StrictIntegerField(
        min_value=1, max_value=MAX_INT, required=False, allow_null=True
    )
    media_id = PublicIdField(
        ids.MEDIA,
        required=False,
        help_text="kind=media: the upload this message carries the key of (POST /api/v1/media).",
    )

    def validate(self, data):
        if data.get("media_id") is not None and data["kind"] != "media":
            raise serializers.ValidationError({"media_id": ["Only a media message names one."]})
        return data


# --- Fast paths for the socket's hot frames ------------------------------------------
# A DRF serializer deep-copies its fields on every instance: on a loaded socket
# process that was a quarter of the event loop. These plain checks accept only
# what the serializer certainly accepts and return what it would; for anything
# else they return None and the serializer decides, with its exact errors
# (tests/messaging/test_fast_validation.py holds them to that).

_KINDS = frozenset(Message.Kind.values)
_ENVELOPES = frozenset({"prekey", "message"})


def send_fast(data: dict) -> dict | None:
    """MessageSendSerializer's validated data for a well-formed send, else None."""
    try:
        out = {
            "client_id": _uuid(data["client_id"]),
            "conversation": _id(ids.CONVERSATION, data["conversation"]),
            "kind": _choice(_KINDS, data["kind"]),
            "ciphertexts": _ciphertexts(data["ciphertexts"]),
        }
        if "group_body" in data:
            out["group_body"] = _base64(data["group_body"])
        if "reply_to_seq" in data:
            seq = data["reply_to_seq"]
            out["reply_to_seq"] = None if seq is None else _integer(seq, 1)
        if "media_id" in data:
            if out["kind"] != "media":
                return None
            out["media_id"] = _id(ids.MEDIA, data["media_id"])
    except (_NotSure, KeyError):
        return None
    return out


def cursor_fast(data: dict) -> dict | None:
    """CursorSerializer's validated data for a well-formed ack, else None."""
    try:
        return {"cursor": _integer(data["cursor"], 0)}
    except (_NotSure, KeyError):
        return None


class _NotSure(Exception):
    """The plain check cannot vouch for this input: the serializer decides."""


def _uuid(value) -> uuid.UUID:
    if not isinstance(value, str) or len(value) != 36:
        raise _NotSure
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise _NotSure from exc


def _id(prefix: str, value) -> int:
    key = ids.decode(prefix, value)
    if key is None:
        raise _NotSure
    return key


def _choice(choices: frozenset, value) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _NotSure
    return value


def _integer(value, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise _NotSure
    return value


def _base64(value) -> bytes:
    limit = settings.NATTER["CIPHERTEXT_MAX_BYTES"]
    if not isinstance(value, str) or not value or len(value) > 4 * ((limit + 2) // 3):
        raise _NotSure
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _NotSure from exc
    if not decoded or len(decoded) > limit:
        raise _NotSure
    return decoded


def _ciphertexts(value) -> list[dict]:
    if type(value) is not list or len(value) > settings.NATTER["MAX_CIPHERTEXTS"]:
        raise _NotSure
    out = []
    for item in value:
        if type(item) is not dict:
            raise _NotSure
        out.append(
            {
                "device": _id(ids.DEVICE, item["device"]),
                "envelope": _choice(_ENVELOPES, item["envelope"]),
                "body": _base64(item["body"]),
            }
        )
    return out


def send_arguments(data: dict) -> dict:
    """Turn a validated send (REST body or WebSocket frame) into message_send's arguments."""
    from apps.messaging.services import Ciphertext

    return {
        "conversation_id": data["conversation"],
        "client_id": data["client_id"],
        "kind": data["kind"],
        "ciphertexts": [
            Ciphertext(c["device"], c["envelope"], c["body"]) for c in data["ciphertexts"]
        ],
        "group_body": data.get("group_body"),
        "reply_to_seq": data.get("reply_to_seq"),
        "media_id": data.get("media_id"),
    }


class AckResultSerializer(serializers.Serializer):
    client_id = serializers.UUIDField()
    message_id = serializers.CharField()
    conversation = serializers.CharField()
    seq = serializers.IntegerField()
    server_ts = serializers.DateTimeField()


class CursorSerializer(serializers.Serializer):
    cursor = StrictIntegerField(min_value=0, max_value=MAX_INT)


class ReadSerializer(serializers.Serializer):
    conversation = PublicIdField(ids.CONVERSATION)
    up_to_seq = StrictIntegerField(min_value=0, max_value=MAX_INT)


class ReadResultSerializer(serializers.Serializer):
    conversation = serializers.CharField()
    read_seq = serializers.IntegerField()


class DirectConversationSerializer(serializers.Serializer):
    user_id = PublicIdField(ids.USER)


class MemberSerializer(serializers.Serializer):
    id = serializers.CharField()
    username = serializers.CharField()
    display_name = serializers.CharField()


class ConversationSerializer(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.ChoiceField(choices=["direct", "group"])
    title = serializers.CharField()
    members = MemberSerializer(many=True)
    last_seq = serializers.IntegerField()
    read_seq = serializers.IntegerField()


class ConversationDeviceSerializer(serializers.Serializer):
    user = serializers.CharField()
    device = serializers.CharField()
    identity_key = serializers.CharField()


class ConversationDevicesSerializer(serializers.Serializer):
    conversation = serializers.CharField()
    kind = serializers.ChoiceField(choices=["direct", "group"])
    devices = ConversationDeviceSerializer(many=True)


class EventsQuerySerializer(serializers.Serializer):
    """Query of `GET /api/v1/events`, the long-poll."""

    cursor = serializers.IntegerField(min_value=0, max_value=MAX_INT, default=0)
    timeout = serializers.IntegerField(
        min_value=0, max_value=settings.NATTER["LONGPOLL_MAX_TIMEOUT_S"], default=25
    )
    limit = serializers.IntegerField(
        min_value=1,
        max_value=settings.NATTER["LONGPOLL_MAX_LIMIT"],
        default=settings.NATTER["LONGPOLL_DEFAULT_LIMIT"],
    )


class InboxItemSerializer(serializers.Serializer):
    cursor = serializers.IntegerField()
    event = serializers.DictField(
        help_text="A message, receipt, group, device or prekeys_low event."
    )


class EventsPageSerializer(serializers.Serializer):
    events = InboxItemSerializer(many=True)
    next_cursor = serializers.IntegerField()
    ephemeral = serializers.ListField(child=serializers.DictField())
    has_more = serializers.BooleanField()
