"""Property tests of the frame and serializer layers: any input is a value or a NatterError.

Whatever a client sends, reading a WebSocket frame and validating any wire shape
either succeeds or raises one of the protocol's errors (which the transports turn
into `error` frames and JSON answers), never anything that would be a 500 or a
crashed socket. Examples are derandomized, so a run is reproducible.
"""

import base64
import json
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from apps.accounts import serializers as accounts
from apps.common.errors import NatterError
from apps.common.validation import validated
from apps.groups import serializers as groups
from apps.media import api as media
from apps.messaging import serializers as messaging
from apps.messaging.consumers import InboxConsumer, parse_frame
from apps.presence import serializers as presence

FUZZ = hsettings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Values that get past the first checks, so the later ones are exercised too.
PLAUSIBLE = st.sampled_from(
    [
        "c_1",
        "u_1",
        "d_1",
        "m_1",
        "f_1",
        "c_9223372036854775807",
        "c_9223372036854775808",
        str(uuid.UUID(int=1)),
        "aGk=",
        base64.b64encode(bytes(32)).decode(),
        base64.b64encode(bytes(64)).decode(),
        "prekey",
        "message",
        "text",
        "media",
        "group",
        "composing",
        "everyone",
        "\u0000",
        "\ud800",
        "",
        2**31,
        2**32,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -1,
        0,
        1,
        1.5,
        1e308,
        float("inf"),
        float("nan"),
        True,
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=20)
    | PLAUSIBLE
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def bodies(serializer_class):
    """Dicts keyed mostly by the serializer's own fields (nested ones too), any values."""
    names = set()

    def collect(serializer):
        for name, field in serializer.fields.items():
            names.add(name)
            child = getattr(field, "child", None)
            for sub in (field, child):
                if hasattr(sub, "fields"):
                    collect(sub)

    collect(serializer_class())
    keys = st.sampled_from(sorted(names)) | st.text(max_size=6)
    nested = st.recursive(
        LEAVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=15,
    )
    return st.dictionaries(keys, nested, max_size=8)


SERIALIZERS = [
    messaging.MessageSendSerializer,
    messaging.CursorSerializer,
    messaging.ReadSerializer,
    messaging.DirectConversationSerializer,
    messaging.EventsQuerySerializer,
    presence.TypingSerializer,
    presence.PresenceSubscribeSerializer,
    accounts.RegisterSerializer,
    accounts.LoginSerializer,
    accounts.MeUpdateSerializer,
    accounts.HandleQuerySerializer,
    accounts.KeysUploadSerializer,
    accounts.KeysClaimSerializer,
    groups.GroupCreateSerializer,
    groups.GroupUpdateSerializer,
    groups.GroupMembersAddSerializer,
    groups.GroupAdminSerializer,
    media.UploadQuerySerializer,
    media.UploadStartSerializer,
    media.PartQuerySerializer,
]


@pytest.mark.parametrize("serializer_class", SERIALIZERS, ids=lambda c: c.__name__)
def test_any_body_validates_or_is_a_protocol_error(serializer_class):
    @hsettings(FUZZ, max_examples=150)
    @given(bodies(serializer_class) | VALUES)
    def check(data):
        try:
            result = validated(serializer_class, data)
        except NatterError as error:
            assert error.status in (400, 413) and error.as_dict()["code"]
            json.dumps(error.as_dict(), default=str)  # the error itself can be sent
        else:
            assert isinstance(result, dict)

    check()


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
def test_any_text_frame_is_read_or_refused_with_a_protocol_error(text):
    try:
        frame, ref = parse_frame(text)
    except NatterError as error:
        assert error.code in ("bad_request", "too_large")
    else:
        assert isinstance(frame, dict)
        assert ref is None or isinstance(ref, str | int)


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=True)


FRAMES = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(InboxConsumer.FRAME_HANDLERS)) | VALUES},
    optional={"id": VALUES, "cursor": VALUES, "conversation": VALUES, "x": VALUES},
)


@FUZZ
@given(FRAMES.map(_dumps) | VALUES.map(_dumps))
def test_any_json_frame_is_read_or_refused_and_its_type_looked_up_safely(text):
    try:
        frame, _ = parse_frame(text)
    except NatterError:
        return
    kind = frame.get("type")
    # What the consumer does with it next: never a TypeError (unhashable `type`).
    handler = InboxConsumer.FRAME_HANDLERS.get(kind) if isinstance(kind, str) else None
    assert handler is None or callable(handler)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["send", "ack", "read", "typing", "presence.subscribe"])},
        optional={
            "client_id": VALUES,
            "conversation": VALUES,
            "kind": VALUES,
            "ciphertexts": VALUES,
            "cursor": VALUES,
            "up_to_seq": VALUES,
            "state": VALUES,
            "user_ids": VALUES,
            "reply_to_seq": VALUES,
            "group_body": VALUES,
        },
    )
)
def test_frames_of_known_types_validate_or_are_protocol_errors(frame):
    shapes = {
        "send": messaging.MessageSendSerializer,
        "ack": messaging.CursorSerializer,
        "read": messaging.ReadSerializer,
        "typing": presence.TypingSerializer,
        "presence.subscribe": presence.PresenceSubscribeSerializer,
    }
    try:
        validated(shapes[frame["type"]], frame)
    except NatterError as error:
        assert error.status in (400, 413)
