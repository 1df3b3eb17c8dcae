"""The high-level client: one device's REST calls plus its inbox connection."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from .crypto import media
from .e2e import EndToEnd, Received
from .errors import ApiError, NatterError
from .http import NatterHttp
from .keystore import KeyStore
from .transport import Connection, LongPollConnection, WebSocketConnection
from .wire import (
    Backoff,
    Ciphertexts,
    Event,
    SendAck,
    b64decode,
    b64encode,
    new_client_id,
    send_payload,
)

# Files up to this size (encrypted) go up in one request; larger ones in parts.
UPLOAD_IN_ONE_REQUEST_MAX = 4 * 1024 * 1024
DOWNLOAD_PART_BYTES = 4 * 1024 * 1024


class NatterClient:
    """One device of one user: log in, look people up, then connect to receive and send.

    Every device holds end-to-end keys (a `KeyStore`, in memory unless one is given,
    e.g. a `FileKeyStore`): `login()` publishes them, `send_text()` encrypts and
    `receive()` decrypts. `send()` is the raw call for bodies encrypted elsewhere.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
        keystore: KeyStore | None = None,
    ) -> None:
        self.http = NatterHttp(base_url, token, timeout=timeout, client=http_client)
        self.user: dict[str, Any] | None = None
        self.device: dict[str, Any] | None = None
        self.keystore = keystore if keystore is not None else KeyStore()
        self.e2e = EndToEnd(self, self.keystore)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the HTTP connection pool (open Connections are closed by their owners)."""
        await self.http.aclose()

    @property
    def base_url(self) -> str:
        return self.http.base_url

    @property
    def token(self) -> str | None:
        return self.http.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.http.token = value

    @property
    def user_id(self) -> str | None:
        return self.user["id"] if self.user else None

    @property
    def device_id(self) -> str | None:
        return self.device["id"] if self.device else None

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint beside the REST base: http→ws, https→wss, + /ws/v1/."""
        parts = urlsplit(self.base_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/v1/", "", ""))

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    # -- accounts ----------------------------------------------------------------------------

    async def register(
        self, username: str, password: str, display_name: str | None = None
    ) -> dict[str, Any]:
        """Create a user (no device yet; log in for that) and return its public profile."""
        body = {
            "username": username,
            "password": password,
            "display_name": display_name or username,
        }
        answer = await self.http.request("POST", "/api/v1/auth/register", json=body)
        return answer["user"]

    async def login(
        self,
        username: str,
        password: str,
        device_name: str = "natter-client",
        *,
        publish_keys: bool = True,
    ) -> dict[str, Any]:
        """Create a new device for this user, keep its token, and publish its keys.

        Until a device has published keys nobody can encrypt for it, so it receives
        no direct messages; `publish_keys=False` is for tests of exactly that.
        """
        body = {"username": username, "password": password, "device_name": device_name}
        answer = await self.http.request("POST", "/api/v1/auth/login", json=body)
        self.user, self.device, self.token = answer["user"], answer["device"], answer["token"]
        self.keystore.account = {
            "base_url": self.base_url,
            "token": self.token,
            "user": self.user,
            "device": self.device,
        }
        if publish_keys:
            await self.e2e.publish()
        else:
            self.keystore.save()
        return answer

    async def logout(self) -> None:
        """Revoke this device on the server (its inbox is dropped) and forget the token."""
        await self.http.request("POST", "/api/v1/auth/logout")
        self.token = None
        self.device = None

    async def me(self) -> dict[str, Any]:
        return await self.http.request("GET", "/api/v1/me")

    async def update_me(
        self, *, display_name: str | None = None, last_seen_visibility: str | None = None
    ) -> dict[str, Any]:
        """Change only the fields given."""
        body = {
            key: value
            for key, value in (
                ("display_name", display_name),
                ("last_seen_visibility", last_seen_visibility),
            )
            if value is not None
        }
        return await self.http.request("PATCH", "/api/v1/me", json=body)

    async def user_by_handle(self, username: str) -> dict[str, Any]:
        """Find a user by exact username; raises ApiError(404) if there is none."""
        return await self.http.request("GET", "/api/v1/users", params={"handle": username})

    async def devices_of(self, user_id: str) -> list[dict[str, Any]]:
        """List a user's active devices with their identity keys."""
        return await self.http.request("GET", f"/api/v1/users/{quote(user_id, safe='')}/devices")

    async def claim_bundles(
        self, user_id: str, device_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Claim prekey bundles of a user's devices (only `device_ids` if given)."""
        body: dict[str, Any] = {"user_id": user_id}
        if device_ids is not None:
            body["device_ids"] = device_ids
        answer = await self.http.request("POST", "/api/v1/keys/claim", json=body)
        return answer["bundles"]

    async def safety_number(self, user_id: str) -> str:
        """The number you and `user_id` compare to check nobody is in between."""
        return await self.e2e.safety_number(user_id)

    # -- conversations -----------------------------------------------------------------------

    async def direct_conversation(self, user_id: str) -> dict[str, Any]:
        """Return the one direct conversation with a user, creating it the first time."""
        body = {"user_id": user_id}
        return await self.http.request("POST", "/api/v1/conversations/direct", json=body)

    async def conversations(self) -> list[dict[str, Any]]:
        return await self.http.request("GET", "/api/v1/conversations")

    # -- groups ------------------------------------------------------------------------------

    async def create_group(self, title: str, member_ids: list[str]) -> dict[str, Any]:
        """Create a group with these users (you are its first admin); returns the conversation."""
        body = {"title": title, "member_ids": member_ids}
        return await self.http.request("POST", "/api/v1/groups", json=body)

    async def group(self, group_id: str) -> dict[str, Any]:
        return await self.http.request("GET", self._group_path(group_id))

    async def rename_group(self, group_id: str, title: str) -> dict[str, Any]:
        return await self.http.request("PATCH", self._group_path(group_id), json={"title": title})

    async def add_members(self, group_id: str, user_ids: list[str]) -> dict[str, Any]:
        path = self._group_path(group_id, "members")
        return await self.http.request("POST", path, json={"user_ids": user_ids})

    async def remove_member(self, group_id: str, user_id: str) -> None:
        path = self._group_path(group_id, "members", user_id)
        await self.http.request("DELETE", path)

    async def promote(self, group_id: str, user_id: str) -> dict[str, Any]:
        path = self._group_path(group_id, "admins")
        return await self.http.request("POST", path, json={"user_id": user_id})

    async def leave_group(self, group_id: str) -> None:
        await self.http.request("POST", self._group_path(group_id, "leave"))

    @staticmethod
    def _group_path(group_id: str, *rest: str) -> str:
        parts = [quote(p, safe="") for p in (group_id, *rest)]
        return "/api/v1/groups/" + "/".join(parts)

    async def conversation_devices(self, conversation: str) -> dict[str, Any]:
        """The devices a send to `conversation` is encrypted for: {kind, devices}."""
        path = f"/api/v1/conversations/{quote(conversation, safe='')}/devices"
        return await self.http.request("GET", path)

    # -- end-to-end encrypted messages ----------------------------------------------------------

    async def send_text(
        self,
        conversation: str,
        text: str,
        *,
        reply_to_seq: int | None = None,
        client_id: str | None = None,
        connection: Connection | None = None,
        timeout: float | None = None,
    ) -> SendAck:
        """Encrypt a text for every device of the conversation and send it (REST or socket)."""
        return await self.e2e.send(
            conversation,
            {"type": "text", "text": text},
            kind="text",
            reply_to_seq=reply_to_seq,
            client_id=client_id,
            connection=connection,
            timeout=timeout,
        )

    async def send_content(
        self, conversation: str, content: dict[str, Any], *, kind: str = "text", **kwargs: Any
    ) -> SendAck:
        """Encrypt and send any content object (docs/crypto.md §7)."""
        return await self.e2e.send(conversation, content, kind=kind, **kwargs)

    async def send_media(
        self,
        conversation: str,
        source: bytes | str | os.PathLike[str],
        *,
        mime: str = "application/octet-stream",
        name: str | None = None,
        caption: str | None = None,
        thumbnail: bytes | None = None,
        width: int | None = None,
        height: int | None = None,
        connection: Connection | None = None,
        reply_to_seq: int | None = None,
    ) -> SendAck:
        """Encrypt a file with a fresh key, upload the ciphertext, then send its key.

        `source` is the bytes or a path; a path is read and encrypted in 64 KiB
        chunks while it uploads, so memory stays flat (docs/crypto.md §10).
        """
        if isinstance(source, bytes | bytearray):
            handle: BinaryIO = io.BytesIO(bytes(source))
            size = len(source)
        else:
            path = Path(source)
            handle = await asyncio.to_thread(path.open, "rb")
            size = (await asyncio.to_thread(path.stat)).st_size
            name = name or path.name
        key = media.media_key()
        digest = hashlib.sha256()
        try:
            chunks = media.encrypt_chunks(handle, key)

            async def blob() -> AsyncIterator[bytes]:
                while piece := await asyncio.to_thread(next, chunks, None):
                    digest.update(piece)
                    yield piece

            length = media.encrypted_size(size)
            if length <= UPLOAD_IN_ONE_REQUEST_MAX:
                answer = await self.http.upload(
                    "/api/v1/media", blob(), length=length, params={"conversation": conversation}
                )
            else:
                answer = await self._upload_in_parts(conversation, blob(), length)
        finally:
            handle.close()
        if answer["sha256"] != digest.hexdigest():
            raise NatterError("the server stored other bytes than were sent; not sending")
        content: dict[str, Any] = {
            "type": "media",
            "media_id": answer["media_id"],
            "key": b64encode(key),
            "sha256": answer["sha256"],
            "size": size,
            "mime": mime,
            "name": name or "file",
        }
        for field, value in (
            ("caption", caption),
            ("width", width),
            ("height", height),
            ("thumbnail", b64encode(thumbnail) if thumbnail else None),
        ):
            if value is not None:
                content[field] = value
        return await self.e2e.send(
            conversation,
            content,
            kind="media",
            media_id=answer["media_id"],
            connection=connection,
            reply_to_seq=reply_to_seq,
        )

    async def _upload_in_parts(
        self, conversation: str, blob: AsyncIterator[bytes], length: int
    ) -> dict[str, Any]:
        """The resumable upload: one part per request, resumed from the server's offset.

        daphne holds a request body in memory, so a large file goes up as parts of
        at most `part_max_bytes`. A part whose answer was lost is not sent twice:
        the server's `offset_mismatch` says how much it already has.
        """
        opened = await self.http.request(
            "POST",
            "/api/v1/media/uploads",
            params={"conversation": conversation},
            json={"size": length},
        )
        media_id, part_max = opened["media_id"], int(opened["part_max_bytes"])
        path = f"/api/v1/media/{quote(media_id, safe='')}"
        offset, buffer, answer = 0, bytearray(), opened
        backoff = Backoff()

        async def send_buffer() -> None:
            nonlocal offset, buffer, answer
            while buffer:
                try:
                    answer = await self.http.send_part(path, offset, bytes(buffer))
                except ApiError as exc:
                    if exc.code != "offset_mismatch":
                        raise
                    answer = {"offset": int(exc.details["offset"])}
                except httpx.TransportError:
                    await asyncio.sleep(backoff.next())
                    continue
                # The server may hold more than we knew (a lost answer): drop that much.
                done = int(answer["offset"]) - offset
                if not 0 <= done <= len(buffer):
                    raise NatterError(f"the server holds {answer['offset']} bytes of {media_id}")
                del buffer[:done]
                offset += done

        async for piece in blob:
            buffer += piece
            if len(buffer) >= part_max:
                whole, rest = buffer[:part_max], buffer[part_max:]
                buffer = bytearray(whole)
                await send_buffer()
                buffer = bytearray(rest)
        await send_buffer()
        if not answer.get("complete"):
            raise NatterError(f"upload {media_id} ended at {offset} of {length} bytes")
        return answer

    async def download_media(
        self, content: dict[str, Any], destination: str | os.PathLike[str] | None = None
    ) -> bytes | Path:
        """Fetch, check and decrypt a `media` content's file; bytes, or written to a path.

        Raises ApiError with code `media_expired` (410) once the server deleted it:
        show "download failed — ask the sender to resend".
        """
        key = b64decode(content["key"])
        digest = hashlib.sha256()
        decryptor = media.MediaDecryptor(key)
        out: BinaryIO = (
            io.BytesIO()
            if destination is None
            else await asyncio.to_thread(Path(destination).open, "wb")
        )
        try:
            path = f"/api/v1/media/{quote(content['media_id'], safe='')}"
            # In ranges, so the server never has more than one part in flight for us.
            start, total = 0, None
            while total is None or start < total:
                wanted = f"bytes={start}-{start + DOWNLOAD_PART_BYTES - 1}"
                async with self.http.stream(path, headers={"Range": wanted}) as response:
                    if response.status_code == 206:
                        total = int(response.headers["Content-Range"].rsplit("/", 1)[1])
                    else:  # the whole blob at once
                        total = int(response.headers.get("Content-Length", 0))
                    async for piece in response.aiter_bytes(media.CHUNK_BYTES):
                        start += len(piece)
                        digest.update(piece)
                        await asyncio.to_thread(out.write, decryptor.feed(piece))
                    if response.status_code != 206:
                        break
            if digest.hexdigest() != content["sha256"]:
                raise media.DecryptError("the downloaded file is not the one that was sent")
            await asyncio.to_thread(out.write, decryptor.finish())
            if destination is None:
                return out.getvalue()  # type: ignore[attr-defined]
            return Path(destination)
        except BaseException:
            if destination is not None:
                out.close()
                await asyncio.to_thread(Path(destination).unlink, missing_ok=True)
            raise
        finally:
            out.close()

    async def open(self, event: Event) -> Received | None:
        """Decrypt one inbox event (None for a message opened before)."""
        return await self.e2e.open(event)

    async def receive(self, connection: Connection) -> AsyncIterator[Received]:
        """Yield inbox events decrypted, acknowledging each once its keys are saved.

        Use a connection made with `auto_ack=False`, so nothing is acknowledged to the
        server before the ratchet state that opened it is stored.
        """
        async for event in connection.events():
            received = await self.e2e.open(event)
            if not connection.auto_ack:
                await connection.ack(event.cursor)
            if received is not None:
                yield received

    async def send(
        self,
        conversation: str,
        ciphertexts: Ciphertexts,
        *,
        kind: str = "text",
        envelope: str = "message",
        group_body: bytes | None = None,
        reply_to_seq: int | None = None,
        client_id: str | None = None,
        timeout: float | None = None,
        media_id: str | None = None,
    ) -> SendAck:
        """Send over REST without a connection, retrying network failures with one client_id."""
        client_id = client_id or new_client_id()
        payload = send_payload(
            client_id=client_id,
            conversation=conversation,
            ciphertexts=ciphertexts,
            kind=kind,
            envelope=envelope,
            group_body=group_body,
            reply_to_seq=reply_to_seq,
            media_id=media_id,
        )
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            answer = await self.http.request_until_answered(
                "POST", "/api/v1/messages", json=payload, deadline=deadline
            )
        except ApiError as exc:
            exc.client_id = client_id
            raise
        return SendAck.from_wire(answer)

    async def read(self, conversation: str, up_to_seq: int) -> dict[str, Any]:
        """Move the read pointer over REST; returns {conversation, read_seq}."""
        body = {"conversation": conversation, "up_to_seq": up_to_seq}
        return await self.http.request("POST", "/api/v1/read", json=body)

    async def ack(self, cursor: int) -> None:
        """Acknowledge this device's inbox up to cursor over REST."""
        await self.http.request("POST", "/api/v1/events/ack", json={"cursor": cursor})

    # -- the inbox ---------------------------------------------------------------------------

    def connect(
        self,
        transport: Literal["ws", "longpoll"] = "ws",
        *,
        auto_ack: bool = True,
        ack_timeout: float = 10.0,
        backoff: Backoff | None = None,
        poll_timeout: float = 25.0,
        poll_limit: int = 200,
    ) -> Connection:
        """Return an unstarted Connection; use `async with client.connect() as conn:`."""
        if not self.token:
            raise NatterError("log in (or pass a token) before connecting")
        common: dict[str, Any] = {
            "auto_ack": auto_ack,
            "ack_timeout": ack_timeout,
            "backoff": backoff,
        }
        if transport == "ws":
            return WebSocketConnection(
                self.ws_url, self.token, origin=self.origin, on_hello=self._on_hello, **common
            )
        if transport == "longpoll":
            return LongPollConnection(
                self.http, poll_timeout=poll_timeout, limit=poll_limit, **common
            )
        raise ValueError(f"unknown transport {transport!r}; use 'ws' or 'longpoll'")

    def _on_hello(self, hello: dict[str, Any]) -> None:
        # A client built from a bare token learns who it is from the socket's first frame.
        for field in ("user", "device"):
            value = hello.get(field)
            if getattr(self, field) is None and value:
                setattr(self, field, value if isinstance(value, dict) else {"id": value})
