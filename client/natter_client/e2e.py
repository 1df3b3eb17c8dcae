"""End-to-end encryption for a NatterClient: keys, sessions, encrypt on send, decrypt on receive.

The application hands in plaintext content and gets plaintext back; what crosses
the server is ciphertext only (docs/crypto.md). Direct messages carry one pairwise
ciphertext per device; group messages one Sender Key body, with the sender's key
handed to devices that lack it over their pairwise sessions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .crypto import (
    Bundle,
    CryptoError,
    DuplicateMessage,
    IdentityKeyPair,
    SenderKey,
    Session,
    SignedPreKey,
    SystemRandom,
    accept_prekey_message,
    decode_content,
    encode_content,
    from_b64,
    generate_one_time_prekeys,
    parse_prekey_message,
    safety_number,
    to_b64,
)
from .errors import DeviceMismatch, NatterError
from .keystore import KeyStore, OwnSenderKey
from .wire import Event, SendAck, new_client_id

if TYPE_CHECKING:
    from .client import NatterClient
    from .transport import Connection

log = logging.getLogger("natter_client")

PREKEY_STOCK = 100
# Resends after a device_mismatch before giving up (each fetches the missing devices).
MISMATCH_RETRIES = 3


@dataclass(frozen=True)
class Received:
    """One inbox event after decryption: what an application shows.

    For a message, `content` is the decrypted content (`{"type": "text", "text": ...}`)
    or None with `error` saying why it could not be opened. Other events (receipts,
    group changes, device notices) carry their fields in `event`.
    """

    event: Event
    content: dict[str, Any] | None = None
    error: str | None = None

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def cursor(self) -> int:
        return self.event.cursor

    @property
    def text(self) -> str | None:
        return self.content.get("text") if self.content else None

    def __getitem__(self, key: str) -> Any:
        return self.event[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.event.get(key, default)


def sender_key_content(conversation: str, key: SenderKey) -> dict[str, Any]:
    """The `sender_key` content that gives a device our key for one group (§6, §7)."""
    d = key.distribution()
    return {
        "type": "sender_key",
        "conversation": conversation,
        "key_id": d["key_id"],
        "iteration": d["iteration"],
        "chain_key": to_b64(d["chain_key"]),
        "signing_key": to_b64(d["signing_key"]),
    }


class UndecryptableError(NatterError):
    """A message could not be encrypted for, or opened by, this device."""


class EndToEnd:
    """The crypto half of one device: owns the KeyStore, talks to the key directory."""

    def __init__(self, client: NatterClient, store: KeyStore) -> None:
        self.client = client
        self.store = store
        self.rng = SystemRandom()
        # conversation id -> (kind, [(user, device, identity_key)]), refreshed on mismatch.
        self._devices: dict[str, tuple[str, list[tuple[str, str, bytes]]]] = {}

    @property
    def device_id(self) -> str:
        device_id = self.client.device_id
        if not device_id:
            raise NatterError("log in before using end-to-end encryption")
        return device_id

    # -- publishing keys ---------------------------------------------------------------------

    async def publish(self) -> int:
        """Create this device's keys if it has none, upload them; return the prekey stock."""
        async with self.store.locked():
            return await self._publish()

    async def _publish(self) -> int:
        store = self.store
        body: dict[str, Any] = {}
        if store.identity is None:
            store.identity = IdentityKeyPair.generate(self.rng)
            store.signed_prekey_id = 1
            spk = SignedPreKey.generate(store.identity, 1, self.rng)
            store.signed_prekeys = {1: spk}
            body["signed_prekey"] = {
                "key_id": spk.key_id,
                "public_key": to_b64(spk.public),
                "signature": to_b64(spk.signature),
            }
        fresh = generate_one_time_prekeys(
            store.next_prekey_id, max(0, PREKEY_STOCK - len(store.one_time_prekeys)), self.rng
        )
        return await self._upload(body, fresh)

    async def top_up(self) -> int:
        """Upload one-time prekeys until the server holds PREKEY_STOCK again."""
        async with self.store.locked():
            return await self._top_up()

    async def _top_up(self) -> int:
        answer = await self.client.http.request("GET", "/api/v1/keys/count")
        missing = PREKEY_STOCK - int(answer["one_time_prekeys"])
        if missing <= 0:
            return int(answer["one_time_prekeys"])
        # Private halves of keys the server no longer holds were claimed: keep them
        # until a prekey message uses them (ids only grow, so nothing is reused).
        fresh = generate_one_time_prekeys(self.store.next_prekey_id, missing, self.rng)
        return await self._upload({}, fresh)

    async def _upload(self, body: dict[str, Any], fresh: list) -> int:
        store = self.store
        assert store.identity is not None
        for key in fresh:
            store.one_time_prekeys[key.key_id] = key
        if fresh:
            store.next_prekey_id = fresh[-1].key_id + 1
        store.save()  # the private halves exist before anybody can claim the public ones
        body = {
            "identity_key": to_b64(store.identity.public),
            **body,
            "one_time_prekeys": [
                {"key_id": k.key_id, "public_key": to_b64(k.public)} for k in fresh
            ],
        }
        answer = await self.client.http.request("PUT", "/api/v1/keys", json=body)
        return int(answer["one_time_prekeys"])

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        conversation: str,
        content: dict[str, Any],
        *,
        kind: str = "text",
        reply_to_seq: int | None = None,
        client_id: str | None = None,
        connection: Connection | None = None,
        timeout: float | None = None,
        media_id: str | None = None,
    ) -> SendAck:
        """Encrypt `content` for every device of the conversation and send it.

        A `device_mismatch` answer (a device was added or revoked meanwhile) refreshes
        the device list, claims the missing bundles and resends with the same client_id.
        """
        client_id = client_id or new_client_id()
        async with self.store.locked():
            return await self._send(
                conversation,
                encode_content(content),
                kind=kind,
                reply_to_seq=reply_to_seq,
                client_id=client_id,
                connection=connection,
                timeout=timeout,
                media_id=media_id,
            )

    async def _send(
        self,
        conversation,
        plaintext,
        *,
        kind,
        reply_to_seq,
        client_id,
        connection,
        timeout,
        media_id,
    ) -> SendAck:
        last_error: DeviceMismatch | None = None
        for attempt in range(1 + MISMATCH_RETRIES):
            kind_of, devices = await self._conversation_devices(conversation, refresh=attempt > 0)
            targets = [(u, d, k) for u, d, k in devices if d != self.device_id]
            await self._sessions_ensure(targets)
            group_body = None
            if kind_of == "group":
                own = self._own_sender_key(conversation)
                distribution = encode_content(sender_key_content(conversation, own.key))
                ciphertexts = self._encrypt_pairwise(
                    [d for _, d, _ in targets if d not in own.given], distribution
                )
                group_body = own.key.encrypt(plaintext, conversation, self.device_id)
            else:
                ciphertexts = self._encrypt_pairwise([d for _, d, _ in targets], plaintext)
            self.store.save()  # never send with a ratchet state that is not on disk
            try:
                ack = await self._send_raw(
                    conversation,
                    ciphertexts,
                    kind=kind,
                    group_body=group_body,
                    reply_to_seq=reply_to_seq,
                    client_id=client_id,
                    connection=connection,
                    timeout=timeout,
                    media_id=media_id,
                )
            except DeviceMismatch as exc:
                last_error = exc
                for device in exc.extra:
                    self.store.device_forget(device)
                continue
            if kind_of == "group":
                self.store.own_sender_keys[conversation].given.update(ciphertexts)
            return ack
        assert last_error is not None
        raise last_error

    async def _send_raw(self, conversation, ciphertexts, *, connection, **kwargs) -> SendAck:
        if connection is not None:
            return await connection.send(conversation, ciphertexts, **kwargs)
        return await self.client.send(conversation, ciphertexts, **kwargs)

    def _encrypt_pairwise(self, devices: list[str], plaintext: bytes) -> dict[str, tuple]:
        ciphertexts = {}
        for device in devices:
            session = self.store.session_for(device)
            if session is None:
                continue  # no bundle: the device has not published keys (yet)
            ciphertexts[device] = session.encrypt(plaintext)
        return ciphertexts

    def _own_sender_key(self, conversation: str) -> OwnSenderKey:
        own = self.store.own_sender_keys.get(conversation)
        if own is None:
            own = OwnSenderKey(SenderKey.create(self.rng))
            self.store.own_sender_keys[conversation] = own
        return own

    async def _conversation_devices(
        self, conversation: str, *, refresh: bool
    ) -> tuple[str, list[tuple[str, str, bytes]]]:
        cached = self._devices.get(conversation)
        # A group's members can change by someone else's hand at any moment, and the
        # server cannot tell that a new member lacks our sender key: ask every time.
        if refresh or cached is None or cached[0] == "group":
            answer = await self.client.conversation_devices(conversation)
            self._devices[conversation] = (
                answer["kind"],
                [(d["user"], d["device"], from_b64(d["identity_key"])) for d in answer["devices"]],
            )
        return self._devices[conversation]

    async def _sessions_ensure(self, targets: list[tuple[str, str, bytes]]) -> None:
        """Start a session with every target device we have none with, one claim per user."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for user, device, identity_key in targets:
            session = self.store.session_for(device)
            if session is not None and session.remote_identity_key == identity_key:
                continue
            wanted[user].append(device)
        for user, devices in wanted.items():
            bundles = await self.client.claim_bundles(user, device_ids=devices)
            for wire in bundles:
                bundle = Bundle.from_wire(wire)
                try:
                    session = Session.initiate(self.store.identity, bundle, self.rng)
                except CryptoError as exc:
                    log.warning("bundle of %s refused: %s", wire.get("device_id"), exc)
                    continue
                self.store.identity_check(wire["device_id"], bundle.identity_key)
                self.store.session_put(wire["device_id"], session)

    # -- receiving ---------------------------------------------------------------------------

    async def open(self, event: Event) -> Received | None:
        """Decrypt a message event, or act on a key, device or group event.

        Returns None for a message already opened before (a redelivery).
        """
        async with self.store.locked():
            if event.type == "message":
                return self._open_message(event)
            if event.type == "device":
                self._on_device(event)
            elif event.type == "group":
                self._on_group(event)
            elif event.type == "prekeys_low":
                await self._top_up()
            return Received(event)

    def _open_message(self, event: Event) -> Received | None:
        message_id = str(event.get("message_id"))
        if not self.store.first_time(message_id):
            return None
        conversation = event["conversation"]
        sender = event["sender"]["device"]
        envelope = event.get("envelope")
        try:
            if envelope == "group":
                content = self._open_group(conversation, sender, event["body"])
            else:
                content = self._open_pairwise(sender, envelope, event["body"])
                if content.get("type") == "sender_key":
                    self._install_sender_key(conversation, sender, content)
                    group_body = event.get("group_body")
                    content = (
                        self._open_group(conversation, sender, group_body)
                        if group_body is not None
                        else content
                    )
        except DuplicateMessage:
            return None
        except (CryptoError, UndecryptableError, KeyError, ValueError) as exc:
            log.warning("message %s from %s not opened: %s", message_id, sender, exc)
            return Received(event, error=f"{type(exc).__name__}: {exc}")
        return Received(event, content=content)

    def _open_pairwise(self, sender: str, envelope: str | None, body: bytes) -> dict[str, Any]:
        store = self.store
        if envelope == "prekey":
            prekey = parse_prekey_message(body)
            for session in store.sessions.get(sender, []):
                if session.base_key == prekey.base_key:
                    plaintext = session.decrypt(prekey.message)
                    store.session_put(sender, session)
                    return decode_content(plaintext)
            session, plaintext, used = accept_prekey_message(
                store.identity, store.signed_prekeys, store.one_time_prekeys, body, self.rng
            )
            if used is not None:
                store.one_time_prekeys.pop(used, None)
            store.identity_check(sender, session.remote_identity_key)
            store.session_put(sender, session)
            return decode_content(plaintext)
        if envelope != "message":
            raise UndecryptableError(f"unknown envelope {envelope!r}")
        last: CryptoError | None = None
        for session in list(store.sessions.get(sender, [])):
            try:
                plaintext = session.decrypt(body)
            except DuplicateMessage:
                raise
            except CryptoError as exc:
                last = exc
                continue
            return decode_content(plaintext)
        if last is not None:
            raise last
        raise UndecryptableError("no session with this device")

    def _install_sender_key(self, conversation: str, sender: str, content: dict) -> None:
        if content.get("conversation") != conversation:
            raise UndecryptableError("a sender key for another conversation")
        # A key id already held is ignored, so a repeat cannot reopen used iterations.
        self.store.ring(conversation, sender).add_distribution(
            {
                "key_id": content["key_id"],
                "iteration": content["iteration"],
                "chain_key": from_b64(content["chain_key"]),
                "signing_key": from_b64(content["signing_key"]),
            }
        )

    def _open_group(self, conversation: str, sender: str, body: bytes) -> dict[str, Any]:
        ring = self.store.sender_keys.get(conversation, {}).get(sender)
        if ring is None:
            raise UndecryptableError("no sender key from this device for this group")
        return decode_content(ring.decrypt(body, conversation, sender))

    def _on_device(self, event: Event) -> None:
        action, device = event.get("action"), event.get("device")
        if action in ("removed", "identity_changed") and device:
            self.store.device_forget(device)
            if action == "identity_changed":
                self.store.identity_changes.add(device)
            self._devices.clear()

    def _on_group(self, event: Event) -> None:
        conversation = event.get("conversation")
        self._devices.pop(conversation, None)
        if event.get("action") in ("removed", "left"):
            # Whoever went must not read what comes next: a new sender key, given
            # afresh to the members that remain (docs/crypto.md §6).
            self.store.own_sender_keys.pop(conversation, None)
            if self.client.user_id in (event.get("user_ids") or []):
                self.store.sender_keys.pop(conversation, None)

    # -- verification ------------------------------------------------------------------------

    async def safety_number(self, user_id: str) -> str:
        """The 60-digit number two people compare to know no one is in between."""
        mine = await self.client.devices_of(self.client.user_id)
        theirs = await self.client.devices_of(user_id)

        def keys(devices: list[dict[str, Any]]) -> list[bytes]:
            return [from_b64(d["identity_key"]) for d in devices if d.get("identity_key")]

        return safety_number(self.client.user_id, keys(mine), user_id, keys(theirs))
