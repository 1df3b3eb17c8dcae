"""Sender Keys (docs/crypto.md §6): signed group bodies, ordering, bounds and rotation."""

from __future__ import annotations

import json
import random

import pytest

from natter_client.crypto import (
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    BadSignature,
    DecryptError,
    DeterministicRandom,
    DuplicateMessage,
    MalformedMessage,
    SenderKey,
    SenderKeyReceiver,
    SenderKeyRing,
    SystemRandom,
    TooManySkipped,
    group_body_key_id,
)

GROUP, DEVICE = "c_77", "d_5"


def flip(body: bytes, index: int) -> bytes:
    data = bytearray(body)
    data[index] ^= 0x01
    return bytes(data)


def snapshot(receiver: SenderKeyReceiver) -> str:
    return json.dumps(receiver.to_dict(), sort_keys=True)


def test_receiver_opens_shuffled_bodies_once_each():
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    bodies = [(sender.encrypt(f"{i}".encode(), GROUP, DEVICE), f"{i}".encode()) for i in range(300)]
    random.Random(7).shuffle(bodies)
    for body, plaintext in bodies:
        assert receiver.decrypt(body, GROUP, DEVICE) == plaintext
    for body, _ in bodies[:20]:
        with pytest.raises(DuplicateMessage):
            receiver.decrypt(body, GROUP, DEVICE)
    assert receiver.skipped == {}


def test_body_names_its_key_id_and_iteration():
    sender = SenderKey.create(SystemRandom())
    body = sender.encrypt(b"x", GROUP, DEVICE)
    assert group_body_key_id(body) == sender.key_id
    assert body[0] == 1 and int.from_bytes(body[5:9], "big") == 0
    assert sender.iteration == 1


def test_creation_draws_key_id_chain_key_and_signing_seed_in_order():
    rng = DeterministicRandom(b"\x01" * 32)
    sender = SenderKey.create(rng)
    probe = DeterministicRandom(b"\x01" * 32)
    assert sender.key_id == int.from_bytes(probe.bytes(4), "big")
    assert sender.chain_key == probe.bytes(32)
    assert sender.signing_seed == probe.bytes(32)
    assert rng.calls == 3


def test_late_receiver_cannot_open_earlier_messages():
    sender = SenderKey.create(SystemRandom())
    early = [sender.encrypt(b"early", GROUP, DEVICE) for _ in range(3)]
    late_receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    later = sender.encrypt(b"later", GROUP, DEVICE)
    for body in early:
        with pytest.raises(DuplicateMessage):
            late_receiver.decrypt(body, GROUP, DEVICE)
    assert late_receiver.decrypt(later, GROUP, DEVICE) == b"later"


def test_body_is_bound_to_group_and_sender():
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    body = sender.encrypt(b"x", GROUP, DEVICE)
    before = snapshot(receiver)
    for group, device in ((GROUP + "0", DEVICE), (GROUP, DEVICE + "0"), (GROUP + "\x00", DEVICE)):
        with pytest.raises(DecryptError):
            receiver.decrypt(body, group, device)
        assert snapshot(receiver) == before
    assert receiver.decrypt(body, GROUP, DEVICE) == b"x"


@pytest.mark.parametrize("index", [1, 5, 9, 20, -1])
def test_tampered_body_fails_signature_and_changes_nothing(index):
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    sender.encrypt(b"skipped", GROUP, DEVICE)
    body = sender.encrypt(b"x", GROUP, DEVICE)
    before = snapshot(receiver)
    with pytest.raises((BadSignature, DecryptError)):
        receiver.decrypt(flip(body, index), GROUP, DEVICE)
    assert snapshot(receiver) == before
    assert receiver.decrypt(body, GROUP, DEVICE) == b"x"


def test_signature_from_another_signing_key_is_refused():
    sender = SenderKey.create(SystemRandom())
    other_seed = SenderKey.create(SystemRandom()).to_dict()["signing_seed"]
    impostor = SenderKey.from_dict({**sender.to_dict(), "signing_seed": other_seed})
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    with pytest.raises(BadSignature):
        receiver.decrypt(impostor.encrypt(b"forged", GROUP, DEVICE), GROUP, DEVICE)


def test_skip_bound_and_stored_key_cap():
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    bodies = [sender.encrypt(f"{i}".encode(), GROUP, DEVICE) for i in range(3 * MAX_SKIP + 3)]
    before = snapshot(receiver)
    with pytest.raises(TooManySkipped):
        receiver.decrypt(bodies[MAX_SKIP + 1], GROUP, DEVICE)
    assert snapshot(receiver) == before
    assert receiver.decrypt(bodies[MAX_SKIP], GROUP, DEVICE) == str(MAX_SKIP).encode()
    assert receiver.decrypt(bodies[2 * MAX_SKIP + 1], GROUP, DEVICE)
    assert receiver.decrypt(bodies[3 * MAX_SKIP + 2], GROUP, DEVICE)
    assert len(receiver.skipped) == MAX_STORED_SKIPPED
    for dropped in (0, MAX_SKIP - 1):  # the first 1000 skipped keys went, oldest first
        with pytest.raises(DuplicateMessage):
            receiver.decrypt(bodies[dropped], GROUP, DEVICE)
    assert receiver.decrypt(bodies[MAX_SKIP + 1], GROUP, DEVICE) == str(MAX_SKIP + 1).encode()


def test_round_trips_keep_both_sides_working():
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    bodies = [sender.encrypt(f"{i}".encode(), GROUP, DEVICE) for i in range(4)]
    assert receiver.decrypt(bodies[3], GROUP, DEVICE) == b"3"
    receiver = SenderKeyReceiver.from_dict(json.loads(json.dumps(receiver.to_dict())))
    sender = SenderKey.from_dict(json.loads(json.dumps(sender.to_dict())))
    assert receiver.decrypt(bodies[1], GROUP, DEVICE) == b"1"
    assert receiver.decrypt(sender.encrypt(b"4", GROUP, DEVICE), GROUP, DEVICE) == b"4"
    with pytest.raises(DuplicateMessage):
        receiver.decrypt(bodies[3], GROUP, DEVICE)


def test_ring_keeps_two_most_recent_key_ids():
    keys = [SenderKey.create(SystemRandom()) for _ in range(3)]
    ring = SenderKeyRing()
    bodies = []
    for key in keys:
        ring.add_distribution(key.distribution())
        bodies.append(key.encrypt(b"k", GROUP, DEVICE))
    assert ring.key_ids == [keys[1].key_id, keys[2].key_id]
    with pytest.raises(DecryptError):
        ring.decrypt(bodies[0], GROUP, DEVICE)
    assert ring.decrypt(bodies[1], GROUP, DEVICE) == b"k"
    assert ring.decrypt(bodies[2], GROUP, DEVICE) == b"k"
    ring = SenderKeyRing.from_dict(json.loads(json.dumps(ring.to_dict())))
    assert ring.key_ids == [keys[1].key_id, keys[2].key_id]


def test_ring_ignores_a_repeated_distribution_so_used_iterations_stay_closed():
    key = SenderKey.create(SystemRandom())
    ring = SenderKeyRing()
    first = key.distribution()
    assert ring.add_distribution(first)
    body = key.encrypt(b"once", GROUP, DEVICE)
    assert ring.decrypt(body, GROUP, DEVICE) == b"once"
    assert not ring.add_distribution(first)
    with pytest.raises(DuplicateMessage):
        ring.decrypt(body, GROUP, DEVICE)


def test_malformed_group_bodies_and_distributions_are_refused():
    sender = SenderKey.create(SystemRandom())
    receiver = SenderKeyReceiver.from_distribution(sender.distribution())
    for body in (b"", b"\x01" * 40, b"\x02" + sender.encrypt(b"x", GROUP, DEVICE)[1:]):
        with pytest.raises(MalformedMessage):
            receiver.decrypt(body, GROUP, DEVICE)
    with pytest.raises(MalformedMessage):
        SenderKeyReceiver.from_distribution({**sender.distribution(), "chain_key": b"short"})
    with pytest.raises(MalformedMessage):
        SenderKeyReceiver.from_distribution({**sender.distribution(), "iteration": -1})
