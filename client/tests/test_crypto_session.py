"""Pairwise sessions (docs/crypto.md §3–§5) with real randomness: ordering, bounds, forgery,
replay and persistence."""

from __future__ import annotations

import base64
import json
import random

import pytest

from natter_client.crypto import (
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    BadSignature,
    Bundle,
    DecryptError,
    DeterministicRandom,
    DuplicateMessage,
    IdentityKeyPair,
    MalformedMessage,
    Session,
    SignedPreKey,
    SystemRandom,
    TooManySkipped,
    accept_prekey_message,
    generate_one_time_prekeys,
    parse_prekey_message,
)


class Device:
    """A device's long-lived keys, as a test fixture."""

    def __init__(self, rng=None, opk_count: int = 5) -> None:
        rng = rng or SystemRandom()
        self.identity = IdentityKeyPair.generate(rng)
        self.spk = SignedPreKey.generate(self.identity, 1, rng)
        self.opks = {k.key_id: k for k in generate_one_time_prekeys(1, opk_count, rng)}

    def bundle(self, with_opk: bool = True) -> Bundle:
        opk = self.opks[min(self.opks)] if with_opk and self.opks else None
        return Bundle(
            identity_key=self.identity.public,
            spk_id=self.spk.key_id,
            spk_public=self.spk.public,
            spk_signature=self.spk.signature,
            opk_id=opk.key_id if opk else None,
            opk_public=opk.public if opk else None,
        )

    def accept(self, body: bytes):
        session, plaintext, used = accept_prekey_message(
            self.identity, {self.spk.key_id: self.spk}, self.opks, body
        )
        if used is not None:
            del self.opks[used]
        return session, plaintext


def pair(with_opk: bool = True) -> tuple[Session, Session]:
    """An established session: Alice sent one prekey message, Bob accepted it."""
    alice, bob = Device(), Device()
    alice_session = Session.initiate(alice.identity, bob.bundle(with_opk))
    _, body = alice_session.encrypt(b"hello")
    bob_session, plaintext = bob.accept(body)
    assert plaintext == b"hello"
    return alice_session, bob_session


def flip(body: bytes, index: int = -1) -> bytes:
    data = bytearray(body)
    data[index] ^= 0x01
    return bytes(data)


def state(session: Session) -> str:
    return json.dumps(session.to_dict(), sort_keys=True)


# --- X3DH and envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("with_opk", [True, False])
def test_prekey_envelope_until_first_reply_then_message(with_opk):
    alice, bob = Device(), Device()
    alice_session = Session.initiate(alice.identity, bob.bundle(with_opk))
    first = [alice_session.encrypt(f"m{i}".encode()) for i in range(3)]
    assert [envelope for envelope, _ in first] == ["prekey"] * 3
    prekey = parse_prekey_message(first[0][1])
    assert prekey.identity_key == alice.identity.public
    assert prekey.base_key == alice_session.base_key
    assert prekey.opk_id == (1 if with_opk else None)

    bob_session, plaintext = bob.accept(first[0][1])
    assert plaintext == b"m0"
    assert bob_session.base_key == alice_session.base_key
    assert bob_session.remote_identity_key == alice.identity.public
    assert alice_session.remote_identity_key == bob.identity.public
    for i, (_, body) in enumerate(first[1:], start=1):
        assert bob_session.decrypt(parse_prekey_message(body).message) == f"m{i}".encode()

    envelope, reply = bob_session.encrypt(b"reply")
    assert envelope == "message"
    assert alice_session.next_envelope == "prekey"
    assert alice_session.decrypt(reply) == b"reply"
    assert alice_session.encrypt(b"after")[0] == "message"


def test_accept_does_not_mutate_prekey_dicts_and_reports_used_opk():
    alice, bob = Device(), Device()
    _, body = Session.initiate(alice.identity, bob.bundle()).encrypt(b"x")
    spks = {bob.spk.key_id: bob.spk}
    opks = dict(bob.opks)
    _, _, used = accept_prekey_message(bob.identity, spks, opks, body)
    assert used == 1
    assert opks == bob.opks and spks == {bob.spk.key_id: bob.spk}


def test_used_one_time_prekey_cannot_start_a_second_session():
    alice, bob = Device(), Device()
    _, body = Session.initiate(alice.identity, bob.bundle()).encrypt(b"x")
    bob.accept(body)
    with pytest.raises(DecryptError):
        bob.accept(body)


def test_bad_signed_prekey_signature_aborts_initiation():
    alice, bob = Device(), Device()
    bundle = bob.bundle()
    forged = Bundle(
        bundle.identity_key,
        bundle.spk_id,
        bundle.spk_public,
        flip(bundle.spk_signature, 0),
        bundle.opk_id,
        bundle.opk_public,
    )
    with pytest.raises(BadSignature):
        Session.initiate(alice.identity, forged)
    other = Device()
    substituted = Bundle(
        other.identity.public, bundle.spk_id, bundle.spk_public, bundle.spk_signature
    )
    with pytest.raises(BadSignature):
        Session.initiate(alice.identity, substituted)


def test_initiation_draws_exactly_two_values_after_the_identity():
    bob = Device()
    rng = DeterministicRandom(bytes(32))
    alice = IdentityKeyPair.generate(rng)
    Session.initiate(alice, bob.bundle(), rng)
    assert rng.calls == 3


def test_bundle_from_wire_parses_protocol_shape():
    bob = Device()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    wire = {
        "device_id": "d_1",
        "identity_key": b64(bob.identity.public),
        "signed_prekey": {
            "key_id": bob.spk.key_id,
            "public_key": b64(bob.spk.public),
            "signature": b64(bob.spk.signature),
        },
        "one_time_prekey": {"key_id": 3, "public_key": b64(bob.opks[3].public)},
    }
    bundle = Bundle.from_wire(wire)
    assert bundle == Bundle(
        bob.identity.public, 1, bob.spk.public, bundle.spk_signature, 3, bob.opks[3].public
    )
    assert Bundle.from_wire({**wire, "one_time_prekey": None}).opk_id is None
    for broken in (
        {**wire, "identity_key": "not base64!"},
        {**wire, "identity_key": b64(b"short")},
        {**wire, "signed_prekey": {**wire["signed_prekey"], "key_id": 0}},
        {k: v for k, v in wire.items() if k != "signed_prekey"},
    ):
        with pytest.raises(MalformedMessage):
            Bundle.from_wire(broken)


# --- ordering ---------------------------------------------------------------------------------


def test_long_random_conversation_with_shuffled_delivery():
    """Many turns, each side sending bursts that arrive shuffled; every message opens once."""
    alice, bob = pair()
    shuffle = random.Random(1234)
    sessions = {"alice": alice, "bob": bob}
    pending: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}  # to be received
    counter = 0
    for _turn in range(60):
        sender = shuffle.choice(["alice", "bob"])
        receiver = "bob" if sender == "alice" else "alice"
        for _ in range(shuffle.randint(1, 8)):
            counter += 1
            plaintext = f"{sender}-{counter}".encode()
            envelope, body = sessions[sender].encrypt(plaintext)
            if envelope == "prekey":
                body = parse_prekey_message(body).message
            pending[receiver].append((body, plaintext))
        # Deliver a random subset, in random order; the rest stays in flight.
        for name in ("alice", "bob"):
            shuffle.shuffle(pending[name])
            keep = shuffle.randint(0, len(pending[name]) // 2)
            deliver, pending[name] = pending[name][keep:], pending[name][:keep]
            for body, plaintext in deliver:
                assert sessions[name].decrypt(body) == plaintext
    for name in ("alice", "bob"):
        shuffle.shuffle(pending[name])
        for body, plaintext in pending[name]:
            assert sessions[name].decrypt(body) == plaintext
            with pytest.raises(DuplicateMessage):
                sessions[name].decrypt(body)


def test_messages_of_an_old_chain_still_open_after_several_ratchet_steps():
    alice, bob = pair()
    late = [alice.encrypt(f"late {i}".encode())[1] for i in range(3)]
    late = [parse_prekey_message(b).message for b in late]
    assert bob.decrypt(late[2]) == b"late 2"
    for i in range(4):
        assert alice.decrypt(bob.encrypt(f"b{i}".encode())[1]) == f"b{i}".encode()
        assert bob.decrypt(alice.encrypt(f"a{i}".encode())[1]) == f"a{i}".encode()
    assert bob.decrypt(late[0]) == b"late 0"
    assert bob.decrypt(late[1]) == b"late 1"


# --- bounds -----------------------------------------------------------------------------------


def test_skipping_exactly_max_skip_is_allowed():
    alice, bob = pair()
    for _ in range(MAX_SKIP):
        alice.encrypt(b"lost")
    body = parse_prekey_message(alice.encrypt(b"arrives")[1]).message
    assert bob.decrypt(body) == b"arrives"


def test_too_many_skipped_leaves_session_unchanged():
    alice, bob = pair()
    for _ in range(MAX_SKIP + 1):
        alice.encrypt(b"lost")
    body = parse_prekey_message(alice.encrypt(b"too far")[1]).message
    before = state(bob)
    with pytest.raises(TooManySkipped):
        bob.decrypt(body)
    assert state(bob) == before
    # Still usable in the other direction.
    assert alice.decrypt(bob.encrypt(b"still here")[1]) == b"still here"


def test_skip_bound_counts_both_chains_of_a_ratchet_step():
    alice, bob = pair()
    assert alice.decrypt(bob.encrypt(b"r")[1]) == b"r"
    for _ in range(600):
        alice.encrypt(b"old chain, lost")
    assert bob.decrypt(alice.encrypt(b"ratchet")[1]) == b"ratchet"  # Bob's DHr moves on
    for _ in range(600):
        alice.encrypt(b"lost too")  # pn will be 602 for Bob, who has seen 1 of that chain
    assert alice.decrypt(bob.encrypt(b"r2")[1]) == b"r2"  # Alice steps: new chain
    for _ in range(500):
        alice.encrypt(b"new chain, lost")
    body = alice.encrypt(b"far")[1]  # n = 500 on the new chain, 601 left on the old one
    before = state(bob)
    with pytest.raises(TooManySkipped):
        bob.decrypt(body)
    assert state(bob) == before


def test_stored_skipped_keys_are_capped_oldest_first():
    alice, bob = pair()
    first_chain = [alice.encrypt(f"{i}".encode())[1] for i in range(MAX_SKIP + 1)]
    first_chain = [parse_prekey_message(b).message for b in first_chain]
    assert bob.decrypt(first_chain[-1]) == str(MAX_SKIP).encode()  # stores 1000 keys
    assert alice.decrypt(bob.encrypt(b"turn")[1]) == b"turn"
    second_chain = [alice.encrypt(f"s{i}".encode())[1] for i in range(MAX_SKIP + 1)]
    assert bob.decrypt(second_chain[-1]) == f"s{MAX_SKIP}".encode()  # 1000 more
    assert alice.decrypt(bob.encrypt(b"turn")[1]) == b"turn"
    third_chain = [alice.encrypt(f"t{i}".encode())[1] for i in range(11)]
    assert bob.decrypt(third_chain[-1]) == b"t10"  # 10 more: the 10 oldest are dropped
    assert len(bob.to_dict()["skipped"]) == MAX_STORED_SKIPPED
    for dropped in first_chain[:10]:
        # Its key is gone and its chain is no longer the current one (§4: DecryptError).
        with pytest.raises(DecryptError):
            bob.decrypt(dropped)
    assert bob.decrypt(first_chain[10]) == b"10"
    assert bob.decrypt(second_chain[0]) == b"s0"
    assert bob.decrypt(third_chain[0]) == b"t0"


# --- forgery and replay -----------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 20, 33, 37, 41, -1])
def test_tampered_message_fails_and_changes_nothing(index):
    alice, bob = pair()
    assert alice.decrypt(bob.encrypt(b"x")[1]) == b"x"
    envelope, body = alice.encrypt(b"secret")
    assert envelope == "message"
    before = state(bob)
    with pytest.raises((DecryptError, MalformedMessage, TooManySkipped)):
        bob.decrypt(flip(body, index))
    assert state(bob) == before
    assert bob.decrypt(body) == b"secret"


def test_tampered_ratchet_step_does_not_draw_randomness():
    alice_device, bob_device = Device(), Device()
    alice = Session.initiate(alice_device.identity, bob_device.bundle())
    bob_rng = DeterministicRandom(b"\x07" * 32)
    bob, _, _ = accept_prekey_message(
        bob_device.identity,
        {1: bob_device.spk},
        bob_device.opks,
        alice.encrypt(b"hi")[1],
        bob_rng,
    )
    assert bob_rng.calls == 1
    assert alice.decrypt(bob.encrypt(b"r")[1]) == b"r"
    body = alice.encrypt(b"new chain")[1]
    with pytest.raises(DecryptError):
        bob.decrypt(flip(body))
    assert bob_rng.calls == 1
    assert bob.decrypt(body) == b"new chain"
    assert bob_rng.calls == 2


def test_replay_is_duplicate_and_changes_nothing():
    alice, bob = pair()
    bodies = [alice.encrypt(f"{i}".encode())[1] for i in range(3)]
    bodies = [parse_prekey_message(b).message for b in bodies]
    for b in (bodies[1], bodies[0], bodies[2]):
        bob.decrypt(b)
    before = state(bob)
    for b in bodies:
        with pytest.raises(DuplicateMessage):
            bob.decrypt(b)
    assert state(bob) == before


def test_message_from_another_session_does_not_open():
    alice, bob = pair()
    other_alice, _ = pair()
    body = other_alice.encrypt(b"x")[1]
    before = state(bob)
    with pytest.raises(DecryptError):
        bob.decrypt(parse_prekey_message(body).message)
    assert state(bob) == before


def test_malformed_bodies_are_refused():
    _, bob = pair()
    for body in (b"", b"\x01" * 10, b"\x02" + b"\x00" * 80):
        with pytest.raises(MalformedMessage):
            bob.decrypt(body)
        with pytest.raises(MalformedMessage):
            parse_prekey_message(body)


def test_low_order_ratchet_key_is_a_decrypt_error():
    alice, bob = pair()
    body = bytearray(alice.encrypt(b"x")[1][73:])
    body[1:33] = bytes(32)  # the all-zero point
    before = state(bob)
    with pytest.raises(DecryptError):
        bob.decrypt(bytes(body))
    assert state(bob) == before


# --- persistence ------------------------------------------------------------------------------


def test_round_trip_mid_conversation_keeps_working():
    alice, bob = pair()
    in_flight = [parse_prekey_message(alice.encrypt(f"f{i}".encode())[1]).message for i in range(4)]
    assert bob.decrypt(in_flight[3]) == b"f3"  # three skipped keys stored
    bob = Session.from_dict(json.loads(json.dumps(bob.to_dict())))
    alice = Session.from_dict(json.loads(json.dumps(alice.to_dict())))
    assert alice.next_envelope == "prekey"
    assert bob.decrypt(in_flight[1]) == b"f1"
    assert alice.decrypt(bob.encrypt(b"back")[1]) == b"back"
    alice = Session.from_dict(alice.to_dict())
    assert alice.next_envelope == "message"
    assert bob.decrypt(alice.encrypt(b"next")[1]) == b"next"
    bob = Session.from_dict(bob.to_dict())
    assert bob.decrypt(in_flight[0]) == b"f0"
    assert bob.decrypt(in_flight[2]) == b"f2"
    # A replay from an older chain looks like a new ratchet key and fails to open (§4).
    with pytest.raises(DecryptError):
        bob.decrypt(in_flight[3])
    current = alice.encrypt(b"current")[1]
    assert bob.decrypt(current) == b"current"
    bob = Session.from_dict(bob.to_dict())
    with pytest.raises(DuplicateMessage):
        bob.decrypt(current)


def test_round_trip_preserves_every_field():
    alice, bob = pair()
    for session in (alice, bob):
        copy = Session.from_dict(session.to_dict())
        assert copy.to_dict() == session.to_dict()
        assert copy.remote_identity_key == session.remote_identity_key
        assert copy.base_key == session.base_key


def test_encryption_is_deterministic_given_the_state():
    alice, _ = pair()
    copy = Session.from_dict(alice.to_dict())
    assert alice.encrypt(b"same") == copy.encrypt(b"same")
