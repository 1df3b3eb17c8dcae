"""The web UI on a phone-sized screen, with the keyboard alone, and for screen readers.
Also takes the README's main screenshots (NATTER_SCREENSHOTS=1)."""

import pytest

from tests.e2e.web_helpers import (
    chat_item,
    chromium,
    media_api,
    message,
    open_chat,
    png,
    screenshot,
    send,
    sign_up,
    start_chat,
    wait_status,
    web_server_fixture,  # noqa: F401  (the web_server fixture)
)

pytestmark = [pytest.mark.asyncio]

# Every control has a name a screen reader can say; every field has a label.
UNNAMED = """() => {
    const bad = [];
    for (const b of document.querySelectorAll('button, a[href]')) {
        if (b.closest('[hidden]')) continue;
        const name = (b.getAttribute('aria-label') || b.textContent || '').trim();
        if (!name) bad.push(b.outerHTML.slice(0, 100));
    }
    for (const i of document.querySelectorAll('input:not([type=file]), textarea')) {
        if (!(i.labels && i.labels.length) && !i.getAttribute('aria-label')) bad.push(i.outerHTML.slice(0, 100));
    }
    return bad;
}"""
FOCUSED_ID = "() => document.activeElement && document.activeElement.id"


async def test_phone_screen_keyboard_and_screen_reader_labels(web_server):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        bob = await sign_up(browser, web_server, "Bob", phone=True)
        carol = await sign_up(browser, web_server, "Carol")
        a, b = alice.page, bob.page

        # Keyboard only: New chat, the username, Enter; the message box has focus; Enter sends.
        await a.locator("#new-chat").focus()
        await a.keyboard.press("Enter")
        await a.keyboard.type(bob.username)
        await a.keyboard.press("Enter")
        await a.wait_for_function(f"({FOCUSED_ID})() === 'composer-input'")
        await a.keyboard.type("Morning Bob! Coffee at 10?")
        await a.keyboard.press("Shift+Enter")
        await a.keyboard.type("The usual place.")
        await a.keyboard.press("Enter")
        first = message(a, "Morning Bob! Coffee at 10?")
        await first.wait_for()
        assert "The usual place." in await first.inner_text()  # Shift+Enter: one message

        # Escape closes a dialog and gives focus back to what opened it.
        await a.locator("#new-group").focus()
        await a.keyboard.press("Enter")
        await a.get_by_role("dialog", name="New group").wait_for()
        await a.keyboard.press("Escape")
        await a.get_by_role("dialog").wait_for(state="detached")
        assert await a.evaluate(FOCUSED_ID) == "new-group"

        # Bob's phone: the chat list alone, no sideways scrolling, the message read out.
        row = chat_item(b, "Alice")
        await row.locator(".badge").wait_for()
        assert await b.locator(".pane").is_hidden()
        assert await b.evaluate("document.documentElement.scrollWidth") <= 360
        assert "Alice: Morning Bob! Coffee at 10?" in await b.locator("#announcer").inner_text()
        await open_chat(bob, "Alice")
        assert await b.locator(".sidebar").is_hidden()
        assert await b.evaluate("document.documentElement.scrollWidth") <= 360
        await send(bob, "Yes! I'll bring the croissants")
        await wait_status(a, "Morning Bob! Coffee at 10?", "read")
        await message(a, "I'll bring the croissants").wait_for()

        # In the timeline: ArrowUp from the empty box picks the last message, R replies to it,
        # Escape drops the reply.
        await a.locator("#composer-input").focus()
        await a.keyboard.press("ArrowUp")
        assert await a.evaluate("document.activeElement.matches('li.msg')")
        await a.keyboard.press("r")
        await a.locator(".reply-bar", has_text="Replying to Bob").wait_for()
        await a.keyboard.press("Escape")
        await a.locator(".reply-bar").wait_for(state="hidden")
        await a.locator("#composer-input").press("ArrowUp")
        await a.keyboard.press("Enter")
        await a.keyboard.type("Perfect, you're the best")
        await a.keyboard.press("Enter")
        await message(b, "Perfect, you're the best").locator(".quote").wait_for()

        # A little more life for the screenshots: a photo, and a group with unread news.
        if media_api(web_server.url):
            await a.locator("#file-input").set_input_files(
                files=[{"name": "view.png", "mimeType": "image/png", "buffer": png(480, 320)}]
            )
            await b.locator("li.msg .media-image img").wait_for()
        await send(bob, "See you soon")
        await message(a, "See you soon").wait_for()
        await start_chat(carol, alice.username)
        await send(carol, "Are you coming climbing on Saturday?")
        await chat_item(a, "Carol").locator(".badge").wait_for()

        # Landmarks and names for screen readers, on both layouts.
        for page in (a, b):
            assert await page.get_by_role("main").count() == 1
            assert await page.evaluate(UNNAMED) == []
        assert await a.get_by_role("navigation", name="Chats").count() == 1
        assert await a.get_by_role("list", name="Bob").count() == 1  # the timeline is named

        await screenshot(a, "conversation")
        await screenshot(b, "phone-chat")
        await a.evaluate("location.hash = '#/'")
        await a.locator(".pane-empty").wait_for()
        await screenshot(a, "chat-list")
        await b.get_by_role("button", name="Back to chats").click()
        await b.locator(".sidebar").wait_for()
        assert await b.locator(".pane").is_hidden()
        assert await b.get_by_role("navigation", name="Chats").count() == 1
        await screenshot(b, "phone-chat-list")
        # The browser's own Back works too (the chat is in the URL).
        await open_chat(bob, "Alice")
        await b.go_back()
        await b.locator(".sidebar").wait_for()

        errors = alice.errors + bob.errors + carol.errors
        assert errors == [], errors
