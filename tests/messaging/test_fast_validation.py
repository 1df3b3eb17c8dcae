"""The socket's fast validators agree with the serializers they stand in for.

For any frame, `send_fast`/`cursor_fast` either decline (None: the serializer
decides, with its exact error) or return exactly the serializer's validated data.
"""

import base64
import uuid

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from apps.common.errors import BadRequest
from apps.common.validation import validated
from apps.messaging import serializers

FAST = hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def maybe(valid):
    """Mostly a valid value, sometimes junk: frames near the edge of valid."""
    return st.one_of(valid, valid, valid, junk)


ids_of = lambda prefix: st.integers(1, 2**63 - 1).map(lambda n: f"{prefix}_{n}")  # noqa: E731
b64 = st.binary(min_size=0, max_size=40).map(lambda b: base64.b64encode(b).decode())
ciphertext = st.fixed_dictionaries(
    {
        "device": maybe(ids_of("d")),
        "envelope": maybe(st.sampled_from(["prekey", "message", "Message"])),
        "body": maybe(st.one_of(b64, st.just("not base64!"), st.just("QQ"))),
    }
)
send_frames = st.fixed_dictionaries(
    {
        "type": st.just("send"),
        "client_id": maybe(
            st.one_of(
                st.uuids().map(str),
                st.uuids().map(lambda u: u.hex),
                st.uuids().map(lambda u: str(u).upper()),
            )
        ),
        "conversation": maybe(st.one_of(ids_of("c"), ids_of("d"))),
        "kind": maybe(st.sampled_from(["text", "media", "TEXT", "location"])),
        "ciphertexts": maybe(st.lists(maybe(ciphertext), max_size=3)),
    },
    optional={
        "group_body": maybe(b64),
        "reply_to_seq": maybe(st.one_of(st.none(), st.integers(-2, 2**63 + 1))),
        "media_id": maybe(ids_of("f")),
    },
)


def outcome(serializer_class, frame):
    try:
        return ("ok", dict(validated(serializer_class, frame)))
    except BadRequest as error:
        return ("error", error.as_dict())


def normal(data):
    return {k: [dict(c) for c in v] if k == "ciphertexts" else v for k, v in data.items()}


@FAST
@given(send_frames)
def test_the_fast_send_check_returns_what_the_serializer_returns_or_declines(frame):
    fast = serializers.send_fast(frame)
    if fast is not None:
        assert outcome(serializers.MessageSendSerializer, frame) == ("ok", normal(fast))


@FAST
@given(st.fixed_dictionaries({"type": st.just("ack"), "cursor": maybe(st.integers(-1, 2**64))}))
def test_the_fast_ack_check_returns_what_the_serializer_returns_or_declines(frame):
    fast = serializers.cursor_fast(frame)
    if fast is not None:
        assert outcome(serializers.CursorSerializer, frame) == ("ok", fast)


def test_a_well_formed_send_takes_the_fast_path():
    frame = {
        "type": "send",
        "client_id": str(uuid.uuid4()),
        "conversation": "c_12",
        "kind": "text",
        "ciphertexts": [{"device": "d_7", "envelope": "message", "body": "aGk="}],
        "reply_to_seq": 3,
    }
    assert serializers.send_fast(frame) == normal(
        outcome(serializers.MessageSendSerializer, frame)[1]
    )


def test_a_bad_send_gets_the_serializers_error_through_validated():
    frame = {"client_id": "x", "conversation": "c_1", "kind": "text", "ciphertexts": []}
    assert serializers.send_fast(frame) is None
    kind, error = outcome(serializers.MessageSendSerializer, frame)
    assert kind == "error" and error["code"] == "bad_request" and "client_id" in error["fields"]
