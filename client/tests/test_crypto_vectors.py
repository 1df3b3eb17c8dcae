"""The shared vectors (tests/vectors/crypto.json) hold for this implementation, read the way the
JavaScript tests read them, and the file is exactly what scripts/crypto_vectors.py writes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from natter_client.crypto import (
    Bundle,
    CryptoError,
    DeterministicRandom,
    IdentityKeyPair,
    PreKey,
    SenderKey,
    SenderKeyReceiver,
    Session,
    SignedPreKey,
    accept_prekey_message,
    decode_content,
    encode_content,
    from_b64,
    kdf,
    parse_prekey_message,
    safety_number,
)
from natter_client.crypto.primitives import x25519_public
from natter_client.crypto.session import x3dh_initiator, x3dh_responder

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "vectors" / "crypto.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "crypto_vectors", ROOT / "scripts" / "crypto_vectors.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vector_file_is_exactly_what_the_generator_writes():
    generator = load_generator()
    assert generator.render(generator.build_vectors()) == VECTORS_PATH.read_text(encoding="utf-8")


def test_generator_is_deterministic():
    generator = load_generator()
    assert generator.render(generator.build_vectors()) == generator.render(
        generator.build_vectors()
    )


def test_every_section_of_the_design_is_present():
    assert {
        "_about",
        "kdf",
        "random",
        "x3dh",
        "session",
        "sender_key",
        "content",
        "safety_number",
    } <= set(VECTORS)


@pytest.mark.parametrize("case", VECTORS["kdf"], ids=lambda c: f"n{c['n']}-key{len(c['key']) // 2}")
def test_kdf_vectors_match_both_pynacl_and_hashlib(case):
    key, msg, n = h(case["key"]), h(case["msg"]), case["n"]
    assert kdf(key, msg, n).hex() == case["out"]
    assert hashlib.blake2b(msg, digest_size=n, key=key).hexdigest() == case["out"]


def test_deterministic_random_vectors_match_hashlib_definition():
    seed = h(VECTORS["random"]["seed"])
    rng = DeterministicRandom(seed)
    for k, draw in enumerate(VECTORS["random"]["draws"]):
        expected = hashlib.blake2b(
            k.to_bytes(4, "big"), digest_size=draw["n"], key=seed
        ).hexdigest()
        assert draw["out"] == expected
        assert rng.bytes(draw["n"]).hex() == expected


def bob_keys(seed: bytes, spk_id: int, opk_ids: list[int]):
    rng = DeterministicRandom(seed)
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, spk_id, rng)
    opks = {key_id: PreKey.generate(key_id, rng) for key_id in opk_ids}
    return rng, identity, spk, opks


@pytest.mark.parametrize("case", VECTORS["x3dh"], ids=lambda c: f"opk-{c['opk_id']}")
def test_x3dh_vectors_agree_on_both_sides(case):
    _, bob, spk, opks = bob_keys(
        h(case["bob_seed"]), case["spk_id"], [case["opk_id"]] if case["opk_id"] else []
    )
    opk = opks.get(case["opk_id"]) if case["opk_id"] else None
    assert bob.public.hex() == case["bob_identity_key"]
    assert spk.public.hex() == case["spk_public"]
    assert spk.signature.hex() == case["spk_signature"]
    assert (opk.public.hex() if opk else None) == case["opk_public"]

    alice_rng = DeterministicRandom(h(case["alice_seed"]))
    alice = IdentityKeyPair.generate(alice_rng)
    assert alice.public.hex() == case["alice_identity_key"]
    bundle = Bundle(
        bob.public,
        spk.key_id,
        spk.public,
        spk.signature,
        case["opk_id"],
        opk.public if opk else None,
    )
    session = Session.initiate(alice, bundle, alice_rng)
    assert session.base_key.hex() == case["ek_public"]
    state = session.to_dict()
    assert bytes.fromhex(case["alice_root_key"]) == from_b64(state["root_key"])
    assert bytes.fromhex(case["alice_sending_chain_key"]) == from_b64(state["sending_chain"])
    ratchet_public = x25519_public(from_b64(state["sending_private"]))
    assert ratchet_public.hex() == case["alice_ratchet_public"]
    assert len(case["dh"]) == (4 if opk else 3)

    probe = DeterministicRandom(h(case["alice_seed"]))
    probe.bytes(32)
    ours = x3dh_initiator(alice, bundle, probe.bytes(32))
    theirs = x3dh_responder(bob, spk, opk, alice.public, h(case["ek_public"]))
    for result in (ours, theirs):
        assert [d.hex() for d in result.dh_outputs] == case["dh"]
        assert result.shared_secret.hex() == case["sk"]
        assert result.associated_data.hex() == case["ad"]


class Party:
    """An actor of the scripted session, following §9's reading rules."""

    def __init__(self, rng, identity, signed_prekeys=None, one_time_prekeys=None):
        self.rng = rng
        self.identity = identity
        self.session: Session | None = None
        self.signed_prekeys = signed_prekeys or {}
        self.one_time_prekeys = one_time_prekeys or {}

    def decrypt(self, envelope: str, body: bytes) -> bytes:
        if envelope == "prekey" and self.session is None:
            session, plaintext, used = accept_prekey_message(
                self.identity, self.signed_prekeys, self.one_time_prekeys, body, self.rng
            )
            self.session = session
            if used is not None:
                del self.one_time_prekeys[used]
            return plaintext
        assert self.session is not None
        if envelope == "prekey":
            body = parse_prekey_message(body).message
        return self.session.decrypt(body)


def test_session_script_replays_byte_for_byte():
    script = VECTORS["session"]
    bob_rng, bob_identity, spk, opks = bob_keys(
        h(script["bob_seed"]), script["spk_id"], script["opk_ids"]
    )
    alice_rng = DeterministicRandom(h(script["alice_seed"]))
    alice_identity = IdentityKeyPair.generate(alice_rng)
    opk = opks.get(script["bundle_opk_id"]) if script["bundle_opk_id"] is not None else None
    bundle = Bundle(
        bob_identity.public,
        spk.key_id,
        spk.public,
        spk.signature,
        opk.key_id if opk else None,
        opk.public if opk else None,
    )
    parties = {
        "alice": Party(alice_rng, alice_identity),
        "bob": Party(bob_rng, bob_identity, {spk.key_id: spk}, dict(opks)),
    }
    parties["alice"].session = Session.initiate(alice_identity, bundle, alice_rng)

    steps = script["steps"]
    for index, step in enumerate(steps):
        party = parties[step["actor"]]
        if step["action"] == "encrypt":
            envelope, body = party.session.encrypt(h(step["plaintext"]))
            assert (envelope, body.hex()) == (step["envelope"], step["body"]), f"step {index}"
            continue
        source = steps[step["ref"]]
        body = h(step.get("body", source["body"]))
        if step["action"] == "decrypt":
            assert party.decrypt(source["envelope"], body).hex() == step["plaintext"], (
                f"step {index}"
            )
        else:
            with pytest.raises(CryptoError) as caught:
                party.decrypt(source["envelope"], body)
            assert type(caught.value).__name__ == step["error"], f"step {index}"
    assert script["bundle_opk_id"] not in parties["bob"].one_time_prekeys


def test_session_script_covers_the_promised_situations():
    steps = VECTORS["session"]["steps"]
    envelopes = [s["envelope"] for s in steps if s["action"] == "encrypt" and s["actor"] == "alice"]
    assert envelopes[:3] == ["prekey"] * 3 and envelopes[3:] and set(envelopes[3:]) == {"message"}
    errors = [(s["error"], "body" in s) for s in steps if s["action"] == "decrypt_fails"]
    assert ("DuplicateMessage", False) in errors and ("DecryptError", True) in errors
    refs = [s["ref"] for s in steps if s["action"] == "decrypt" and s["actor"] == "bob"]
    assert refs[:3] == [0, 2, 1]


def test_sender_key_script_replays_byte_for_byte():
    script = VECTORS["sender_key"]
    conversation, device = script["conversation_id"], script["sender_device_id"]
    sender = SenderKey.create(DeterministicRandom(h(script["sender_seed"])))
    distribution = sender.distribution()
    assert {
        "key_id": distribution["key_id"],
        "iteration": distribution["iteration"],
        "chain_key": distribution["chain_key"].hex(),
        "signing_key": distribution["signing_key"].hex(),
    } == script["distribution"]
    for message in script["messages"]:
        assert (
            sender.encrypt(h(message["plaintext"]), conversation, device).hex() == message["body"]
        )

    receivers = {
        name: SenderKeyReceiver.from_distribution(
            {**d, "chain_key": h(d["chain_key"]), "signing_key": h(d["signing_key"])}
        )
        for name, d in script["receivers"].items()
    }
    assert any(d["iteration"] > 0 for d in script["receivers"].values())
    for index, step in enumerate(script["steps"]):
        body = h(step.get("body", script["messages"][step["ref"]]["body"]))
        receiver = receivers[step["actor"]]
        if step["action"] == "decrypt":
            assert receiver.decrypt(body, conversation, device).hex() == step["plaintext"], (
                f"step {index}"
            )
        else:
            with pytest.raises(CryptoError) as caught:
                receiver.decrypt(body, conversation, device)
            assert type(caught.value).__name__ == step["error"], f"step {index}"


@pytest.mark.parametrize("case", VECTORS["content"], ids=lambda c: c["value"]["type"])
def test_content_vectors_encode_and_decode(case):
    assert encode_content(case["value"]).hex() == case["encoded"]
    assert decode_content(h(case["encoded"])) == case["value"]
    assert len(h(case["encoded"])) % 64 == 0


@pytest.mark.parametrize(
    "case", VECTORS["safety_number"], ids=lambda c: f"{c['user_a']}-{c['user_b']}"
)
def test_safety_number_vectors(case):
    keys_a = [h(k) for k in case["keys_a"]]
    keys_b = [h(k) for k in case["keys_b"]]
    assert safety_number(case["user_a"], keys_a, case["user_b"], keys_b) == case["number"]
    assert safety_number(case["user_b"], keys_b, case["user_a"], keys_a) == case["number"]
