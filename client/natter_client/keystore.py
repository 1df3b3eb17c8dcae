"""Everything secret a device holds, in one JSON document (docs/crypto.md).

The server deletes what it delivered, so this store is the device's memory: its
identity, its prekeys' private halves, one ratchet session per remote device (and
a few older ones for late messages), its own sender keys per group, the sender
keys others gave it, and the message ids it has already opened. `FileKeyStore`
keeps it in a file only the owner can read, written atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .crypto import (
    IdentityKeyPair,
    PreKey,
    SenderKey,
    SenderKeyRing,
    Session,
    SignedPreKey,
    from_b64,
    to_b64,
)

# Older sessions kept per remote device for decrypting late messages (docs/crypto.md §5).
OLD_SESSIONS_KEPT = 4
# How many opened message ids are remembered to drop redeliveries across restarts.
SEEN_KEPT = 20_000


@dataclass
class OwnSenderKey:
    """This device's sender key in one group, and the devices that already have it."""

    key: SenderKey
    given: set[str] = field(default_factory=set)


class KeyStore:
    """The device's secret state, kept in memory; `save()` is a no-op here."""

    def __init__(self) -> None:
        self.identity: IdentityKeyPair | None = None
        self.signed_prekeys: dict[int, SignedPreKey] = {}
        self.signed_prekey_id = 0
        self.one_time_prekeys: dict[int, PreKey] = {}
        self.next_prekey_id = 1
        # remote device id -> sessions, the one to send with first.
        self.sessions: dict[str, list[Session]] = {}
        # remote device id -> the identity key first seen for it (trust on first use).
        self.identities: dict[str, bytes] = {}
        # devices whose identity key changed since we first saw them; the UI shows it.
        self.identity_changes: set[str] = set()
        self.own_sender_keys: dict[str, OwnSenderKey] = {}
        # group id -> sender device id -> the sender keys it gave us (the two newest).
        self.sender_keys: dict[str, dict[str, SenderKeyRing]] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        # Who this device is, so a CLI can come back without logging in again.
        self.account: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[KeyStore]:
        """Hold the state for one operation, and save it afterwards.

        Ratchet state must never be used twice: two operations interleaving on stale
        copies would reuse a message key. In memory one asyncio lock is enough.
        """
        async with self._lock:
            try:
                yield self
            finally:
                self.save()

    # -- sessions ----------------------------------------------------------------------------

    def session_for(self, device_id: str) -> Session | None:
        sessions = self.sessions.get(device_id)
        return sessions[0] if sessions else None

    def session_put(self, device_id: str, session: Session) -> None:
        """Make `session` the one to send with; keep a few older ones for late messages."""
        others = [s for s in self.sessions.get(device_id, []) if s is not session]
        self.sessions[device_id] = [session, *others][: 1 + OLD_SESSIONS_KEPT]

    def device_forget(self, device_id: str) -> None:
        """Drop what we know of a remote device (revoked, or its identity changed)."""
        self.sessions.pop(device_id, None)
        for own in self.own_sender_keys.values():
            own.given.discard(device_id)

    def identity_check(self, device_id: str, identity_key: bytes) -> bool:
        """Remember a device's identity key; return False if it differs from the one we had."""
        known = self.identities.get(device_id)
        self.identities[device_id] = identity_key
        if known is not None and known != identity_key:
            self.identity_changes.add(device_id)
            return False
        return True

    # -- sender keys -------------------------------------------------------------------------

    def ring(self, group: str, sender: str) -> SenderKeyRing:
        return self.sender_keys.setdefault(group, {}).setdefault(sender, SenderKeyRing())

    # -- de-duplication ----------------------------------------------------------------------

    def first_time(self, message_id: str) -> bool:
        if message_id in self.seen:
            return False
        self.seen[message_id] = None
        while len(self.seen) > SEEN_KEPT:
            self.seen.popitem(last=False)
        return True

    # -- persistence -------------------------------------------------------------------------

    def save(self) -> None:
        """Persist the state; the in-memory store keeps nothing."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "account": self.account,
            "identity": self.identity.to_dict() if self.identity else None,
            "signed_prekeys": [k.to_dict() for k in self.signed_prekeys.values()],
            "signed_prekey_id": self.signed_prekey_id,
            "one_time_prekeys": [k.to_dict() for k in self.one_time_prekeys.values()],
            "next_prekey_id": self.next_prekey_id,
            "sessions": {d: [s.to_dict() for s in ss] for d, ss in self.sessions.items()},
            "identities": {d: to_b64(k) for d, k in self.identities.items()},
            "identity_changes": sorted(self.identity_changes),
            "own_sender_keys": {
                g: {"key": o.key.to_dict(), "given": sorted(o.given)}
                for g, o in self.own_sender_keys.items()
            },
            "sender_keys": {
                g: {d: ring.to_dict() for d, ring in senders.items()}
                for g, senders in self.sender_keys.items()
            },
            "seen": list(self.seen),
        }

    def load_dict(self, data: dict[str, Any]) -> None:
        self.account = data.get("account") or {}
        identity = data.get("identity")
        self.identity = IdentityKeyPair.from_dict(identity) if identity else None
        self.signed_prekeys = {
            k.key_id: k for k in map(SignedPreKey.from_dict, data.get("signed_prekeys", []))
        }
        self.signed_prekey_id = data.get("signed_prekey_id", 0)
        self.one_time_prekeys = {
            k.key_id: k for k in map(PreKey.from_dict, data.get("one_time_prekeys", []))
        }
        self.next_prekey_id = data.get("next_prekey_id", 1)
        self.sessions = {
            d: [Session.from_dict(s) for s in ss] for d, ss in data.get("sessions", {}).items()
        }
        self.identities = {d: from_b64(k) for d, k in data.get("identities", {}).items()}
        self.identity_changes = set(data.get("identity_changes", []))
        self.own_sender_keys = {
            g: OwnSenderKey(SenderKey.from_dict(o["key"]), set(o["given"]))
            for g, o in data.get("own_sender_keys", {}).items()
        }
        self.sender_keys = {
            g: {d: SenderKeyRing.from_dict(ring) for d, ring in senders.items()}
            for g, senders in data.get("sender_keys", {}).items()
        }
        self.seen = OrderedDict.fromkeys(data.get("seen", []))


class FileKeyStore(KeyStore):
    """A KeyStore kept in a JSON file readable by its owner only, replaced atomically.

    Several processes may share one file (a `natter listen` beside a `natter send`):
    each operation takes an exclusive lock on `<file>.lock`, re-reads the file if
    another process changed it, and writes it back before letting go.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._reload()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self.load_dict(json.loads(self.path.read_text()))
        self._stamp = stamp

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[KeyStore]:
        async with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                self._reload()
                try:
                    yield self
                finally:
                    self.save()
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keystore-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(self.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._stamp = self._file_stamp()
