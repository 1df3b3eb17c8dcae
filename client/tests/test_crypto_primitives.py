"""Primitives, keys, content padding and safety numbers (docs/crypto.md §0–§2, §7, §8)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from natter_client.crypto import (
    CryptoError,
    DecryptError,
    DeterministicRandom,
    IdentityKeyPair,
    MalformedMessage,
    PreKey,
    SignedPreKey,
    SystemRandom,
    aead_decrypt,
    aead_encrypt,
    decode_content,
    dh,
    ed25519_public_to_x25519,
    ed25519_secret_to_x25519,
    encode_content,
    generate_one_time_prekeys,
    kdf,
    safety_number,
    verify_signed_prekey,
    x25519_keypair,
)


@pytest.mark.parametrize("key_len", [0, 16, 32, 64])
@pytest.mark.parametrize("n", [1, 4, 16, 32, 56, 64])
def test_kdf_is_blake2b_as_hashlib_computes_it(key_len, n):
    key, msg = bytes(range(key_len)), b"natter" * 20
    assert kdf(key, msg, n) == hashlib.blake2b(msg, digest_size=n, key=key).digest()


def test_kdf_refuses_out_of_range_lengths():
    for n in (0, 65):
        with pytest.raises(ValueError):
            kdf(b"", b"", n)
    with pytest.raises(ValueError):
        kdf(bytes(65), b"", 32)


def test_deterministic_random_counts_every_call():
    seed = bytes(range(32))
    rng = DeterministicRandom(seed)
    outs = [rng.bytes(n) for n in (4, 32, 32)]
    for k, (n, out) in enumerate(zip((4, 32, 32), outs, strict=True)):
        assert out == hashlib.blake2b(k.to_bytes(4, "big"), digest_size=n, key=seed).digest()
    assert rng.calls == 3
    assert DeterministicRandom(seed).bytes(4) == outs[0]


def test_system_random_gives_fresh_bytes():
    rng = SystemRandom()
    assert len(rng.bytes(32)) == 32 and rng.bytes(32) != rng.bytes(32)


def test_x25519_agreement_and_low_order_refusal():
    a_priv, a_pub = x25519_keypair(SystemRandom())
    b_priv, b_pub = x25519_keypair(SystemRandom())
    assert dh(a_priv, b_pub) == dh(b_priv, a_pub)
    for low_order in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(CryptoError):
            dh(a_priv, low_order)
    with pytest.raises(CryptoError):
        dh(a_priv, b"short")


def test_identity_key_converts_to_matching_x25519_pair():
    identity = IdentityKeyPair.generate(SystemRandom())
    other_priv, other_pub = x25519_keypair(SystemRandom())
    x_pub = ed25519_public_to_x25519(identity.public)
    assert dh(ed25519_secret_to_x25519(identity.secret), other_pub) == dh(other_priv, x_pub)


def test_aead_round_trip_and_authentication():
    key, nonce = bytes(range(32)), bytes(range(24))
    sealed = aead_encrypt(key, nonce, b"plain", b"ad")
    assert len(sealed) == len(b"plain") + 16
    assert aead_decrypt(key, nonce, sealed, b"ad") == b"plain"
    for args in (
        (sealed, b"other ad"),
        (sealed[:-1] + bytes([sealed[-1] ^ 1]), b"ad"),
        (b"", b"ad"),
    ):
        with pytest.raises(DecryptError):
            aead_decrypt(key, nonce, *args)


def test_signed_prekey_verifies_only_with_its_identity():
    rng = SystemRandom()
    identity, stranger = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, 9, rng)
    assert verify_signed_prekey(identity.public, spk.public, spk.signature)
    assert not verify_signed_prekey(stranger.public, spk.public, spk.signature)
    # A bit flipped, not the last byte set to 0: an Ed25519 signature ends with the top
    # byte of a scalar below 2**253, which is 0 often enough (1 in 32) to be a no-op.
    tampered = spk.signature[:-1] + bytes([spk.signature[-1] ^ 0x01])
    assert not verify_signed_prekey(identity.public, spk.public, tampered)
    assert not verify_signed_prekey(identity.public, spk.public, b"short")


def test_key_generation_follows_the_draw_order():
    rng = DeterministicRandom(b"\x02" * 32)
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, 1, rng)
    opks = generate_one_time_prekeys(10, 3, rng)
    probe = DeterministicRandom(b"\x02" * 32)
    assert identity.seed == probe.bytes(32)
    assert spk.private == probe.bytes(32)
    assert [k.private for k in opks] == [probe.bytes(32) for _ in range(3)]
    assert [k.key_id for k in opks] == [10, 11, 12]


def test_key_round_trips_through_json():
    rng = SystemRandom()
    identity = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(identity, 5, rng)
    opk = PreKey.generate(6, rng)
    for value, cls in ((identity, IdentityKeyPair), (spk, SignedPreKey), (opk, PreKey)):
        assert cls.from_dict(json.loads(json.dumps(value.to_dict()))) == value


def test_prekey_ids_must_be_positive_u32():
    for key_id in (0, -1, 2**32):
        with pytest.raises(ValueError):
            PreKey.generate(key_id, SystemRandom())


# --- content ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text_len", [0, 37, 38, 39, 40, 101, 1000])
def test_content_is_padded_to_64_with_at_least_one_byte(text_len):
    value = {"type": "text", "text": "a" * text_len}
    encoded = encode_content(value)
    raw = json.dumps(value, separators=(",", ":")).encode()
    assert len(encoded) % 64 == 0 and len(encoded) > len(raw)
    assert encoded.startswith(raw + b"\x80") and set(encoded[len(raw) + 1 :]) <= {0}
    assert decode_content(encoded) == value


def test_content_keeps_unicode_as_utf8():
    encoded = encode_content({"type": "text", "text": "héllo 😀"})
    assert "héllo 😀".encode() in encoded


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 64,
        b'{"type":"text"}' + b"\x00" * 49,
        b'{"type":' + b"\x80",
        b"[1,2]\x80",
        b"\xff\xfe\x80",
        b"NaN\x80",
    ],
)
def test_bad_content_is_malformed(data):
    with pytest.raises(MalformedMessage):
        decode_content(data)


# --- safety numbers ---------------------------------------------------------------------------


def test_safety_number_is_symmetric_and_formatted():
    rng = SystemRandom()
    keys_a = [IdentityKeyPair.generate(rng).public for _ in range(2)]
    keys_b = [IdentityKeyPair.generate(rng).public]
    number = safety_number("u_1", keys_a, "u_2", keys_b)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)
    assert number == safety_number("u_2", keys_b, "u_1", keys_a[::-1])


def test_safety_number_changes_with_any_identity_key():
    rng = SystemRandom()
    keys_a = [IdentityKeyPair.generate(rng).public for _ in range(2)]
    keys_b = [IdentityKeyPair.generate(rng).public]
    number = safety_number("u_1", keys_a, "u_2", keys_b)
    changed = [keys_a[0], IdentityKeyPair.generate(rng).public]
    assert safety_number("u_1", changed, "u_2", keys_b) != number
    assert safety_number("u_1", keys_a, "u_3", keys_b) != number


def test_safety_number_matches_the_definition():
    key_a, key_b = bytes(range(32)), bytes(range(32, 64))

    def digits(user: str, keys: bytes) -> str:
        fp = hashlib.blake2b(
            b"natter-fp-v1" + user.encode() + b"\x00" + keys, digest_size=64
        ).digest()
        for _ in range(1023):
            fp = hashlib.blake2b(fp + keys, digest_size=64).digest()
        return "".join(
            f"{int.from_bytes(fp[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
        )

    expected = digits("u_10", key_b) + digits("u_9", key_a)  # "u_10" sorts before "u_9"
    got = safety_number("u_9", [key_a], "u_10", [key_b]).replace(" ", "")
    assert got == expected
