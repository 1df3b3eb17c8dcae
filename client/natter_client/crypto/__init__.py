"""End-to-end encryption of Natter (docs/crypto.md): X3DH, the Double Ratchet, Sender Keys.

Built on PyNaCl (libsodium) and byte-compatible with the browser implementation; the shared
vectors in tests/vectors/crypto.json pin every step.
"""

from .content import decode_content, encode_content
from .keys import (
    IdentityKeyPair,
    PreKey,
    SignedPreKey,
    generate_one_time_prekeys,
    verify_signed_prekey,
)
from .primitives import (
    BadSignature,
    CryptoError,
    DecryptError,
    DeterministicRandom,
    DuplicateMessage,
    MalformedMessage,
    Random,
    SystemRandom,
    TooManySkipped,
    aead_decrypt,
    aead_encrypt,
    dh,
    ed25519_keypair,
    ed25519_public_to_x25519,
    ed25519_secret_to_x25519,
    ed25519_sign,
    ed25519_verify,
    from_b64,
    kdf,
    to_b64,
    x25519_keypair,
)
from .safety import safety_number
from .sender_keys import SenderKey, SenderKeyReceiver, SenderKeyRing, group_body_key_id
from .session import (
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    Bundle,
    PreKeyMessage,
    Session,
    accept_prekey_message,
    parse_prekey_message,
)

__all__ = [
    "MAX_SKIP",
    "MAX_STORED_SKIPPED",
    "BadSignature",
    "Bundle",
    "CryptoError",
    "DecryptError",
    "DeterministicRandom",
    "DuplicateMessage",
    "IdentityKeyPair",
    "MalformedMessage",
    "PreKey",
    "PreKeyMessage",
    "Random",
    "SenderKey",
    "SenderKeyReceiver",
    "SenderKeyRing",
    "Session",
    "SignedPreKey",
    "SystemRandom",
    "TooManySkipped",
    "accept_prekey_message",
    "aead_decrypt",
    "aead_encrypt",
    "decode_content",
    "dh",
    "ed25519_keypair",
    "ed25519_public_to_x25519",
    "ed25519_secret_to_x25519",
    "ed25519_sign",
    "ed25519_verify",
    "encode_content",
    "from_b64",
    "generate_one_time_prekeys",
    "group_body_key_id",
    "kdf",
    "parse_prekey_message",
    "safety_number",
    "to_b64",
    "verify_signed_prekey",
    "x25519_keypair",
]
