"""Encrypted media through a live daphne: SDK upload and download, expiry, limits, aborts."""

import asyncio
import hashlib
import os
import socket
import uuid

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from apps.media import services
from apps.media.models import Media
from natter_client import ApiError, NatterClient

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"
# A tiny but real JPEG header, then noise: the SDK treats it as opaque bytes.
PHOTO = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(300_000) + b"\xff\xd9"


async def pair(url: str):
    people = []
    for name in ("alice", "bob"):
        client = NatterClient(url)
        handle = f"{name}_{uuid.uuid4().hex[:8]}"
        await client.register(handle, PASSWORD)
        await client.login(handle, PASSWORD)
        people.append(client)
    alice, bob = people
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    return alice, bob, conversation


async def next_media(client: NatterClient, timeout: float = 15):
    async with client.connect("ws", auto_ack=False) as conn:
        async with asyncio.timeout(timeout):
            async for item in client.receive(conn):
                if item.type == "message" and item["kind"] == "media":
                    return item


async def test_an_image_goes_end_to_end_encrypted_and_the_server_holds_only_ciphertext(
    natter_server,
):
    alice, bob, conversation = await pair(natter_server.url)
    ack = await alice.send_media(
        conversation,
        PHOTO,
        mime="image/jpeg",
        name="cat.jpg",
        caption="our cat",
        thumbnail=b"tiny jpeg",
        width=640,
        height=480,
    )
    item = await next_media(bob)
    assert item["message_id"] == ack.message_id and item.error is None
    content = item.content
    assert content["type"] == "media" and content["name"] == "cat.jpg"
    assert content["size"] == len(PHOTO) and content["caption"] == "our cat"
    assert await bob.download_media(content) == PHOTO

    media = await database_sync_to_async(Media.objects.get)(id=int(content["media_id"][2:]))
    stored = (natter_server.media_root / media.blob).read_bytes()
    assert PHOTO[20:4000] not in stored  # ciphertext only
    assert hashlib.sha256(stored).hexdigest() == content["sha256"] == media.sha256
    assert media.referenced_at is not None
    for client in (alice, bob):
        await client.aclose()


async def test_a_file_from_disk_streams_both_ways_and_a_range_resumes(natter_server, tmp_path):
    alice, bob, conversation = await pair(natter_server.url)
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    await alice.send_media(conversation, source, mime="application/octet-stream")
    content = (await next_media(bob)).content
    target = await bob.download_media(content, tmp_path / "got.bin")
    assert target.read_bytes() == source.read_bytes()
    async with bob.http.stream(
        f"/api/v1/media/{content['media_id']}", headers={"Range": "bytes=1000-1999"}
    ) as response:
        part = await response.aread()
    assert response.status_code == 206 and len(part) == 1000
    for client in (alice, bob):
        await client.aclose()


async def test_an_expired_blob_answers_410_and_the_sdk_says_so(natter_server, settings):
    alice, bob, conversation = await pair(natter_server.url)
    await alice.send_media(conversation, b"soon gone", name="note.txt", mime="text/plain")
    content = (await next_media(bob)).content
    media_key = int(content["media_id"][2:])
    backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": natter_server.media_root},
    }
    settings.STORAGES = {**settings.STORAGES, "media": backend}

    def expire():
        Media.objects.filter(id=media_key).update(expires_at=timezone.now())
        return services.media_expire()

    assert (await database_sync_to_async(expire)())["expired"] >= 1
    with pytest.raises(ApiError) as caught:
        await bob.download_media(content)
    assert caught.value.status == 410 and caught.value.code == "media_expired"
    for client in (alice, bob):
        await client.aclose()


def _raw_upload(
    url: str, token: str, conversation: str, length: int, send: int, hang_up: bool = False
) -> bytes:
    """Start an upload declaring `length` bytes, send `send` of them, return what came back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /api/v1/media?conversation={conversation} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b"\0" * 65536
        sent = 0
        while sent < send:
            sock.sendall(chunk[: send - sent])
            sent += min(len(chunk), send - sent)
        if hang_up:
            return b""
        return sock.recv(65536)


async def test_an_over_size_upload_is_refused_with_413_and_leaves_nothing(natter_server):
    """Declared too large: answered before Django reads it. Chunked: cut off at the limit.

    daphne receives a whole request body (into its own temporary file) before it
    calls the application, so the 413 comes after the upload; a proxy in front
    (nginx `client_max_body_size`, docs/operations.md) refuses it at the headers.
    """
    alice, _, conversation = await pair(natter_server.url)
    limit = 8 * 1024 * 1024  # MEDIA_SINGLE_MAX_BYTES: what one request may carry

    def stored():
        return sorted(p for p in natter_server.media_root.rglob("*") if p.is_file())

    before = await asyncio.to_thread(stored)
    answer = await asyncio.to_thread(
        _raw_upload, natter_server.url, alice.token, conversation, limit + 1, limit + 1
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"code":"too_large"' in answer and f'"max_bytes":{limit}'.encode() in answer

    async def chunked():
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    response = await alice.http._client.post(
        f"{natter_server.url}/api/v1/media",
        params={"conversation": conversation},
        content=chunked(),
        headers={"Authorization": f"Bearer {alice.token}"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["max_bytes"] == limit
    assert await asyncio.to_thread(stored) == before
    assert list(natter_server.upload_tmp.iterdir()) == []
    # A resumable upload over MEDIA_MAX_BYTES (16 MiB here) is refused before any byte.
    r = await alice.http._client.post(
        f"{natter_server.url}/api/v1/media/uploads",
        params={"conversation": conversation},
        json={"size": 16 * 1024 * 1024 + 1},
        headers={"Authorization": f"Bearer {alice.token}"},
    )
    assert r.status_code == 413 and r.json()["error"]["max_bytes"] == 16 * 1024 * 1024
    await alice.aclose()


async def test_an_aborted_upload_leaves_no_row_and_no_partial_file(natter_server):
    alice, _, conversation = await pair(natter_server.url)

    def stored():
        return sorted(p for p in natter_server.media_root.rglob("*") if p.is_file())

    before = await asyncio.to_thread(stored)
    count = await database_sync_to_async(Media.objects.count)()
    await asyncio.to_thread(
        _raw_upload, natter_server.url, alice.token, conversation, 3_000_000, 1_000_000, True
    )
    await asyncio.sleep(1.0)
    assert await asyncio.to_thread(stored) == before
    assert list(natter_server.upload_tmp.iterdir()) == []
    assert await database_sync_to_async(Media.objects.count)() == count
    # The server is fine afterwards.
    await alice.send_media(conversation, b"after the abort")
    await alice.aclose()
