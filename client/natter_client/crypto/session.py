"""Pairwise sessions: X3DH (docs/crypto.md §3), the Double Ratchet (§4) and envelopes (§5)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .keys import IdentityKeyPair, PreKey, SignedPreKey, verify_signed_prekey
from .primitives import (
    AEAD_TAG_BYTES,
    ED25519_PUBLIC_BYTES,
    SIGNATURE_BYTES,
    U32_MAX,
    X25519_KEY_BYTES,
    BadSignature,
    CryptoError,
    DecryptError,
    DuplicateMessage,
    MalformedMessage,
    Random,
    SystemRandom,
    TooManySkipped,
    aead_decrypt,
    aead_encrypt,
    dh,
    ed25519_public_to_x25519,
    from_b64,
    kdf,
    read_u32,
    to_b64,
    u32,
    x25519_keypair,
    x25519_public,
)

MAX_SKIP = 1000
MAX_STORED_SKIPPED = 2000

VERSION = 0x01
HEADER_BYTES = 1 + 32 + 4 + 4
PREKEY_PREFIX_BYTES = 1 + 32 + 32 + 4 + 4

X3DH_LABEL = b"natter-x3dh-v1"
ROOT_LABEL = b"natter-rk-v1"
MESSAGE_KEY_LABEL = b"natter-mk-v1"

ENVELOPE_PREKEY = "prekey"
ENVELOPE_MESSAGE = "message"


# --- key derivation (§3, §4) ------------------------------------------------------------------


def x3dh_secret(dh_outputs: list[bytes]) -> bytes:
    """SK = H(32 x 0x00, label || 32 x 0xFF || DH1 || DH2 || DH3 [|| DH4], 32)."""
    return kdf(bytes(32), X3DH_LABEL + b"\xff" * 32 + b"".join(dh_outputs), 32)


def kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """KDF_RK: (new root key, new chain key)."""
    out = kdf(root_key, ROOT_LABEL + dh_out, 64)
    return out[:32], out[32:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: (next chain key, message key)."""
    return kdf(chain_key, b"\x02", 32), kdf(chain_key, b"\x01", 32)


def _expand_message_key(message_key: bytes) -> tuple[bytes, bytes]:
    """AEAD key and nonce from a single-use message key, so the nonce never needs randomness."""
    k = kdf(message_key, MESSAGE_KEY_LABEL, 56)
    return k[:32], k[32:]


# --- bundles and prekey messages --------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """What a claim returns for one device: the keys an initiator needs for X3DH."""

    identity_key: bytes
    spk_id: int
    spk_public: bytes
    spk_signature: bytes
    opk_id: int | None = None
    opk_public: bytes | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Bundle:
        """Parse the PROTOCOL shape `{device_id, identity_key, signed_prekey, one_time_prekey}`."""
        try:
            spk = data["signed_prekey"]
            opk = data.get("one_time_prekey")
            bundle = cls(
                identity_key=from_b64(data["identity_key"]),
                spk_id=spk["key_id"],
                spk_public=from_b64(spk["public_key"]),
                spk_signature=from_b64(spk["signature"]),
                opk_id=None if opk is None else opk["key_id"],
                opk_public=None if opk is None else from_b64(opk["public_key"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"malformed key bundle: {exc!r}") from exc
        bundle._check()
        return bundle

    def _check(self) -> None:
        def key_id_ok(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= U32_MAX

        ok = (
            len(self.identity_key) == ED25519_PUBLIC_BYTES
            and key_id_ok(self.spk_id)
            and len(self.spk_public) == X25519_KEY_BYTES
            and len(self.spk_signature) == SIGNATURE_BYTES
        )
        if self.opk_id is None or self.opk_public is None:
            ok = ok and self.opk_id is None and self.opk_public is None
        else:
            ok = ok and key_id_ok(self.opk_id) and len(self.opk_public) == X25519_KEY_BYTES
        if not ok:
            raise MalformedMessage("malformed key bundle: bad lengths or key ids")


@dataclass(frozen=True)
class PreKeyMessage:
    """A parsed `prekey` body: the X3DH inputs of the initiator and the first ratchet message."""

    identity_key: bytes
    base_key: bytes
    spk_id: int
    opk_id: int | None
    message: bytes


def parse_prekey_message(body: bytes) -> PreKeyMessage:
    """Split `0x01 || IK_A || EK_A || u32(spk_id) || u32(opk_id or 0) || ratchet message`."""
    if len(body) < PREKEY_PREFIX_BYTES + HEADER_BYTES + AEAD_TAG_BYTES or body[0] != VERSION:
        raise MalformedMessage("not a version-1 prekey message")
    opk_id = read_u32(body, 69)
    return PreKeyMessage(
        identity_key=bytes(body[1:33]),
        base_key=bytes(body[33:65]),
        spk_id=read_u32(body, 65),
        opk_id=opk_id or None,
        message=bytes(body[PREKEY_PREFIX_BYTES:]),
    )


def _parse_header(body: bytes) -> tuple[bytes, bytes, int, int]:
    """(header bytes, ratchet_pub, pn, n) of a ratchet message."""
    if len(body) < HEADER_BYTES + AEAD_TAG_BYTES or body[0] != VERSION:
        raise MalformedMessage("not a version-1 ratchet message")
    header = bytes(body[:HEADER_BYTES])
    return header, header[1:33], read_u32(header, 33), read_u32(header, 37)


# --- X3DH -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class X3DHResult:
    """The agreed secret and associated data, with the DH outputs kept for the test vectors."""

    dh_outputs: list[bytes]
    shared_secret: bytes
    associated_data: bytes


def x3dh_initiator(
    identity: IdentityKeyPair, bundle: Bundle, ephemeral_private: bytes
) -> X3DHResult:
    """Alice's side of §3, once the bundle's signature has been checked."""
    spk = bundle.spk_public
    outputs = [
        dh(identity.x25519_private, spk),
        dh(ephemeral_private, ed25519_public_to_x25519(bundle.identity_key)),
        dh(ephemeral_private, spk),
    ]
    if bundle.opk_public is not None:
        outputs.append(dh(ephemeral_private, bundle.opk_public))
    return X3DHResult(outputs, x3dh_secret(outputs), identity.public + bundle.identity_key)


def x3dh_responder(
    identity: IdentityKeyPair,
    signed_prekey: SignedPreKey,
    one_time_prekey: PreKey | None,
    initiator_identity: bytes,
    base_key: bytes,
) -> X3DHResult:
    """Bob's side of §3: the same four agreements from the other halves."""
    outputs = [
        dh(signed_prekey.private, ed25519_public_to_x25519(initiator_identity)),
        dh(identity.x25519_private, base_key),
        dh(signed_prekey.private, base_key),
    ]
    if one_time_prekey is not None:
        outputs.append(dh(one_time_prekey.private, base_key))
    return X3DHResult(outputs, x3dh_secret(outputs), initiator_identity + identity.public)


# --- the Double Ratchet -----------------------------------------------------------------------


@dataclass
class _State:
    """Everything a session persists. Decryption works on a copy and keeps it only on success."""

    initiator: bool
    associated_data: bytes  # IK_A.pub || IK_B.pub
    base_key: bytes  # EK_A
    spk_id: int
    opk_id: int | None
    received: bool  # has decrypted a message from the other side
    root_key: bytes
    sending_private: bytes
    sending_public: bytes
    receiving_public: bytes | None
    sending_chain: bytes | None
    receiving_chain: bytes | None
    sent: int = 0  # Ns
    received_count: int = 0  # Nr
    previous_sent: int = 0  # PN
    skipped: OrderedDict[tuple[bytes, int], bytes] = field(default_factory=OrderedDict)

    def copy(self) -> _State:
        return dataclasses.replace(self, skipped=OrderedDict(self.skipped))


def _store_skipped(state: _State, until: int) -> None:
    """Derive and keep the keys of the receiving chain up to `until`, dropping the oldest."""
    if state.receiving_chain is None or state.receiving_public is None:
        return
    while state.received_count < until:
        state.receiving_chain, message_key = kdf_ck(state.receiving_chain)
        state.skipped[(state.receiving_public, state.received_count)] = message_key
        state.received_count += 1
    while len(state.skipped) > MAX_STORED_SKIPPED:
        state.skipped.popitem(last=False)


def _open(message_key: bytes, header: bytes, body: bytes, associated_data: bytes) -> bytes:
    key, nonce = _expand_message_key(message_key)
    return aead_decrypt(key, nonce, body[HEADER_BYTES:], associated_data + header)


class Session:
    """One Double Ratchet session with one remote device."""

    def __init__(self, state: _State, rng: Random | None = None) -> None:
        self._state = state
        self._rng: Random = rng or SystemRandom()

    # -- creation --

    @classmethod
    def initiate(
        cls, identity: IdentityKeyPair, bundle: Bundle, rng: Random | None = None
    ) -> Session:
        """X3DH as Alice and the ratchet's initial sending chain. Draws ek_priv, then ratchet_priv."""
        rng = rng or SystemRandom()
        if not verify_signed_prekey(bundle.identity_key, bundle.spk_public, bundle.spk_signature):
            raise BadSignature("signed prekey signature does not verify")
        ephemeral_private, ephemeral_public = x25519_keypair(rng)
        x3dh = x3dh_initiator(identity, bundle, ephemeral_private)
        ratchet_private, ratchet_public = x25519_keypair(rng)
        root_key, sending_chain = kdf_rk(x3dh.shared_secret, dh(ratchet_private, bundle.spk_public))
        state = _State(
            initiator=True,
            associated_data=x3dh.associated_data,
            base_key=ephemeral_public,
            spk_id=bundle.spk_id,
            opk_id=bundle.opk_id,
            received=False,
            root_key=root_key,
            sending_private=ratchet_private,
            sending_public=ratchet_public,
            receiving_public=bundle.spk_public,
            sending_chain=sending_chain,
            receiving_chain=None,
        )
        return cls(state, rng)

    # -- properties --

    @property
    def remote_identity_key(self) -> bytes:
        """The other device's Ed25519 identity key, as authenticated by X3DH."""
        ad = self._state.associated_data
        return ad[32:] if self._state.initiator else ad[:32]

    @property
    def local_identity_key(self) -> bytes:
        ad = self._state.associated_data
        return ad[:32] if self._state.initiator else ad[32:]

    @property
    def base_key(self) -> bytes:
        """EK_A: a `prekey` body with this base key belongs to this session (§5)."""
        return self._state.base_key

    @property
    def is_initiator(self) -> bool:
        return self._state.initiator

    @property
    def next_envelope(self) -> str:
        """`prekey` until this side has decrypted a message of the session, then `message`."""
        if self._state.initiator and not self._state.received:
            return ENVELOPE_PREKEY
        return ENVELOPE_MESSAGE

    # -- messages --

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        """Encrypt with the next sending key; returns (envelope, body)."""
        state = self._state
        if state.sending_chain is None:
            raise CryptoError("session has no sending chain")
        if state.sent > U32_MAX:
            raise CryptoError("sending chain exhausted")
        header = (
            bytes([VERSION]) + state.sending_public + u32(state.previous_sent) + u32(state.sent)
        )
        chain, message_key = kdf_ck(state.sending_chain)
        key, nonce = _expand_message_key(message_key)
        message = header + aead_encrypt(key, nonce, plaintext, state.associated_data + header)
        state.sending_chain = chain
        state.sent += 1
        envelope = self.next_envelope
        if envelope == ENVELOPE_PREKEY:
            prefix = (
                bytes([VERSION])
                + self.local_identity_key
                + state.base_key
                + u32(state.spk_id)
                + u32(state.opk_id or 0)
            )
            return envelope, prefix + message
        return envelope, message

    def decrypt(self, body: bytes) -> bytes:
        """Decrypt a ratchet message (§4). On any error the session is left exactly as it was."""
        state = self._state.copy()
        plaintext = _ratchet_decrypt(state, bytes(body), self._rng)
        self._state = state
        return plaintext

    # -- persistence --

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (bytes as base64). Contains secrets: store it as such."""
        s = self._state

        def opt(value: bytes | None) -> str | None:
            return None if value is None else to_b64(value)

        return {
            "version": 1,
            "initiator": s.initiator,
            "associated_data": to_b64(s.associated_data),
            "base_key": to_b64(s.base_key),
            "spk_id": s.spk_id,
            "opk_id": s.opk_id,
            "received": s.received,
            "root_key": to_b64(s.root_key),
            "sending_private": to_b64(s.sending_private),
            "receiving_public": opt(s.receiving_public),
            "sending_chain": opt(s.sending_chain),
            "receiving_chain": opt(s.receiving_chain),
            "sent": s.sent,
            "received_count": s.received_count,
            "previous_sent": s.previous_sent,
            "skipped": [[to_b64(pub), n, to_b64(key)] for (pub, n), key in s.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], rng: Random | None = None) -> Session:
        if data.get("version") != 1:
            raise ValueError(f"unsupported session state version {data.get('version')!r}")

        def opt(value: str | None) -> bytes | None:
            return None if value is None else from_b64(value)

        sending_private = from_b64(data["sending_private"])
        state = _State(
            initiator=bool(data["initiator"]),
            associated_data=from_b64(data["associated_data"]),
            base_key=from_b64(data["base_key"]),
            spk_id=int(data["spk_id"]),
            opk_id=data["opk_id"],
            received=bool(data["received"]),
            root_key=from_b64(data["root_key"]),
            sending_private=sending_private,
            sending_public=x25519_public(sending_private),
            receiving_public=opt(data["receiving_public"]),
            sending_chain=opt(data["sending_chain"]),
            receiving_chain=opt(data["receiving_chain"]),
            sent=int(data["sent"]),
            received_count=int(data["received_count"]),
            previous_sent=int(data["previous_sent"]),
            skipped=OrderedDict(
                ((from_b64(pub), int(n)), from_b64(key)) for pub, n, key in data["skipped"]
            ),
        )
        return cls(state, rng)


def _ratchet_decrypt(state: _State, body: bytes, rng: Random) -> bytes:
    """§4's decrypt on a working copy. The new sending key pair is drawn only once the message
    has authenticated, so a failed decryption neither changes the session nor draws."""
    header, ratchet_public, previous_count, number = _parse_header(body)
    ad = state.associated_data

    skipped_key = state.skipped.get((ratchet_public, number))
    if skipped_key is not None:
        plaintext = _open(skipped_key, header, body, ad)
        del state.skipped[(ratchet_public, number)]
        state.received = True
        return plaintext

    if state.receiving_public is not None and ratchet_public == state.receiving_public:
        if state.receiving_chain is None:
            raise DecryptError("no receiving chain for this ratchet key")
        if number < state.received_count:
            raise DuplicateMessage(f"message {number} of this chain was already decrypted")
        if number - state.received_count > MAX_SKIP:
            raise TooManySkipped(f"message {number} would skip more than {MAX_SKIP} keys")
        _store_skipped(state, number)
        state.receiving_chain, message_key = kdf_ck(state.receiving_chain)
        state.received_count += 1
        plaintext = _open(message_key, header, body, ad)
        state.received = True
        return plaintext

    # A new ratchet key from the other side: finish the old receiving chain, then step.
    old_chain_skips = 0
    if state.receiving_chain is not None:
        old_chain_skips = max(0, previous_count - state.received_count)
    if old_chain_skips + number > MAX_SKIP:
        raise TooManySkipped(f"header would skip more than {MAX_SKIP} keys")
    _store_skipped(state, previous_count)
    try:
        receive_dh = dh(state.sending_private, ratchet_public)
    except CryptoError as exc:
        raise DecryptError("unusable ratchet key") from exc
    state.previous_sent = state.sent
    state.sent = 0
    state.received_count = 0
    state.receiving_public = ratchet_public
    state.root_key, state.receiving_chain = kdf_rk(state.root_key, receive_dh)
    _store_skipped(state, number)
    state.receiving_chain, message_key = kdf_ck(state.receiving_chain)
    state.received_count += 1
    plaintext = _open(message_key, header, body, ad)
    # Authenticated: now the sending half of the step, with its draw.
    state.sending_private, state.sending_public = x25519_keypair(rng)
    state.root_key, state.sending_chain = kdf_rk(
        state.root_key, dh(state.sending_private, ratchet_public)
    )
    state.received = True
    return plaintext


# --- the responder ----------------------------------------------------------------------------


def accept_prekey_message(
    identity: IdentityKeyPair,
    signed_prekeys: dict[int, SignedPreKey],
    one_time_prekeys: dict[int, PreKey],
    body: bytes,
    rng: Random | None = None,
) -> tuple[Session, bytes, int | None]:
    """X3DH as Bob from a `prekey` body and its first decryption.

    Returns (session, plaintext, id of the one-time prekey used or None). The dicts are not
    touched: the caller deletes that one-time prekey once it has stored the session.
    """
    message = parse_prekey_message(body)
    signed_prekey = signed_prekeys.get(message.spk_id)
    if signed_prekey is None:
        raise DecryptError(f"unknown signed prekey {message.spk_id}")
    one_time_prekey = None
    if message.opk_id is not None:
        one_time_prekey = one_time_prekeys.get(message.opk_id)
        if one_time_prekey is None:
            raise DecryptError(f"unknown or already used one-time prekey {message.opk_id}")
    try:
        x3dh = x3dh_responder(
            identity, signed_prekey, one_time_prekey, message.identity_key, message.base_key
        )
    except CryptoError as exc:
        raise DecryptError("unusable keys in prekey message") from exc
    state = _State(
        initiator=False,
        associated_data=x3dh.associated_data,
        base_key=message.base_key,
        spk_id=message.spk_id,
        opk_id=message.opk_id,
        received=False,
        root_key=x3dh.shared_secret,
        sending_private=signed_prekey.private,
        sending_public=signed_prekey.public,
        receiving_public=None,
        sending_chain=None,
        receiving_chain=None,
    )
    session = Session(state, rng)
    plaintext = session.decrypt(message.message)
    return session, plaintext, message.opk_id
