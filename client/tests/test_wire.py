import base64

import pytest

from natter_client import Backoff, Dedup, SendAck, b64decode, b64encode
from natter_client.wire import decode_event, encode_ciphertexts, new_client_id, send_payload


def test_backoff_stays_between_half_and_full_ceiling_and_caps():
    for rand in (lambda: 0.0, lambda: 0.5, lambda: 0.999999):
        backoff = Backoff(base=0.2, cap=10.0, rand=rand)
        delays = [backoff.next() for _ in range(20)]
        for attempt, delay in enumerate(delays):
            ceiling = min(10.0, 0.2 * 2**attempt)
            assert ceiling / 2 <= delay <= ceiling
        assert max(delays) <= 10.0
        assert delays[-1] >= 5.0


def test_backoff_grows_then_reset_starts_over():
    backoff = Backoff(base=0.2, cap=10.0, rand=lambda: 1.0)
    assert [backoff.next() for _ in range(4)] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.2)


def test_backoff_jitter_spreads_clients():
    delays = {Backoff().next() for _ in range(50)}
    assert len(delays) > 1


def test_b64_is_standard_with_padding_and_round_trips():
    data = bytes(range(256)) + b"\xff\xfe"
    text = b64encode(data)
    assert text == base64.standard_b64encode(data).decode()
    assert b64encode(b"a") == "YQ=="
    assert b64decode(text) == data


def test_b64decode_refuses_urlsafe_or_junk():
    with pytest.raises(ValueError):
        b64decode("-_-_")
    with pytest.raises(ValueError):
        b64decode("YQ")


def test_ciphertexts_use_default_envelope_or_per_device_override():
    encoded = encode_ciphertexts({"d_1": b"\x00\x01", "d_2": ("prekey", b"hi")}, "message")
    assert encoded == [
        {"device": "d_1", "envelope": "message", "body": "AAE="},
        {"device": "d_2", "envelope": "prekey", "body": "aGk="},
    ]


def test_ciphertexts_must_be_bytes():
    with pytest.raises(TypeError):
        encode_ciphertexts({"d_1": "not bytes"})  # type: ignore[dict-item]


def test_send_payload_omits_unset_optionals_and_encodes_group_body():
    payload = send_payload(client_id="cid", conversation="c_1", ciphertexts={"d_1": b"x"})
    assert payload == {
        "client_id": "cid",
        "conversation": "c_1",
        "kind": "text",
        "ciphertexts": [{"device": "d_1", "envelope": "message", "body": "eA=="}],
    }
    group = send_payload(
        client_id="cid", conversation="c_2", ciphertexts={}, group_body=b"g", reply_to_seq=41
    )
    assert group["group_body"] == "Zw==" and group["reply_to_seq"] == 41


def test_client_ids_are_unique_uuids():
    ids = {new_client_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 36 for i in ids)


def test_message_events_get_bytes_bodies_and_others_pass_through():
    message = {"type": "message", "message_id": "m_1", "body": "aGk=", "seq": 3}
    decoded = decode_event(message)
    assert decoded["body"] == b"hi" and decoded["seq"] == 3
    assert message["body"] == "aGk="  # the wire dict is not mutated
    future = {"type": "sticker_party", "body": "aGk="}
    assert decode_event(future) == future


def test_undecodable_body_does_not_raise():
    assert decode_event({"type": "message", "body": "%%%"})["body"] == "%%%"


def test_dedup_reports_first_time_only_and_forgets_oldest_beyond_maxlen():
    seen = Dedup(maxlen=3)
    assert seen.first_time("m_1")
    assert not seen.first_time("m_1")
    for key in ("m_2", "m_3", "m_4"):
        assert seen.first_time(key)
    assert len(seen) == 3
    assert "m_1" not in seen and "m_4" in seen
    assert seen.first_time("m_1")


def test_send_ack_from_wire():
    ack = SendAck.from_wire(
        {
            "type": "ack",
            "ref": "x",
            "client_id": "cid",
            "message_id": "m_1",
            "conversation": "c_1",
            "seq": "7",
            "server_ts": "2030-01-01T00:00:00Z",
        }
    )
    assert ack.seq == 7 and ack.message_id == "m_1"
