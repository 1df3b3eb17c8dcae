"""Attachments in the web UI: encrypted in the browser, uploaded with progress,
thumbnails, opened (downloaded and decrypted) on click, and an expired blob."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from apps.common import ids
from apps.media import services
from apps.media.models import Media
from tests.e2e.web_helpers import (
    chromium,
    media_api_or_skip,
    open_chat,
    png,
    screenshot,
    sign_up,
    start_chat,
    wait_status,
    web_server_fixture,  # noqa: F401  (the web_server fixture)
)

pytestmark = [pytest.mark.asyncio]

# Remembers whether an upload progress bar was ever on screen (uploads to localhost are quick).
WATCH_PROGRESS = """() => {
    window.__sawProgress = false;
    new MutationObserver(() => {
        if (document.querySelector('.progress progress')) window.__sawProgress = true;
    }).observe(document.body, {subtree: true, childList: true});
}"""


async def test_an_image_and_a_file_go_encrypted_and_an_expired_one_says_so(web_server, settings):
    media_api_or_skip(web_server.url)
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        bob = await sign_up(browser, web_server, "Bob")
        a, b = alice.page, bob.page
        conversation = await start_chat(alice, bob.username)
        await a.evaluate(WATCH_PROGRESS)

        # A photo: the thumbnail travels in the encrypted message, the full image on click.
        photo = png(640, 400)
        await a.locator("#file-input").set_input_files(
            files=[{"name": "sunset.png", "mimeType": "image/png", "buffer": photo}]
        )
        sent = a.locator("li.msg", has=a.locator(".media-image"))
        await sent.and_(a.locator("[data-seq]")).wait_for()
        assert await a.evaluate("window.__sawProgress")
        await open_chat(bob, "Alice")
        thumb = b.locator("li.msg .media-image img")
        await thumb.wait_for()
        src = await thumb.get_attribute("src")
        assert src.startswith("data:image/jpeg;base64,") and len(src) < 24 + 8192 * 4 / 3 + 4
        await wait_status(a, "", "read")
        await screenshot(b, "media")
        await b.get_by_role("button", name="Open image sunset.png").click()
        viewer = b.get_by_role("dialog").locator("img.viewer-img")
        await viewer.wait_for()
        await b.wait_for_function(
            "document.querySelector('img.viewer-img').naturalWidth === 640", timeout=10000
        )
        await b.keyboard.press("Escape")

        # A file: downloaded, checked and decrypted on click, byte for byte.
        notes = bytes(range(256)) * 800  # 200 KiB: several secretstream chunks
        await a.locator("#file-input").set_input_files(
            files=[{"name": "notes.bin", "mimeType": "application/octet-stream", "buffer": notes}]
        )
        button = b.get_by_role("button", name="Download notes.bin")
        await button.wait_for()
        async with b.expect_download() as download_info:
            await button.click()
        download = await download_info.value
        assert download.suggested_filename == "notes.bin"
        assert await asyncio.to_thread((await download.path()).read_bytes) == notes

        # A blob the server has expired: the UI says what to do.
        await a.locator("#file-input").set_input_files(
            files=[{"name": "late.txt", "mimeType": "text/plain", "buffer": b"too late"}]
        )
        late = b.get_by_role("button", name="Download late.txt")
        await late.wait_for()
        backend = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(web_server.env["MEDIA_ROOT"])},
        }
        settings.STORAGES = {**settings.STORAGES, "media": backend}
        key = ids.decode(ids.CONVERSATION, conversation)

        def expire():
            newest = Media.objects.filter(conversation_id=key).order_by("-created_at")[:1]
            Media.objects.filter(id__in=list(newest.values_list("id", flat=True))).update(
                expires_at=timezone.now()
            )
            return services.media_expire()

        assert (await database_sync_to_async(expire)())["expired"] == 1
        await late.click()
        await b.locator(
            ".media-error", has_text="download failed — ask the sender to resend"
        ).wait_for()

        assert alice.errors + bob.errors == [], alice.errors + bob.errors
