"""The web UI's transports: long-poll on request (?transport=longpoll) and by
itself when WebSockets are blocked, talking with a WebSocket user; reconnects."""

import re

import pytest

from tests.e2e.web_helpers import (
    chromium,
    message,
    open_chat,
    send,
    sign_up,
    start_chat,
    wait_connected,
    wait_status,
    web_server_fixture,  # noqa: F401  (the web_server fixture)
)

pytestmark = [pytest.mark.asyncio]
SOCKET = re.compile(r"/ws/v1/?$")


async def test_a_longpoll_browser_chats_with_a_websocket_browser(web_server):
    async with chromium() as browser:
        carol = await sign_up(browser, web_server, "Carol", query="?transport=longpoll")
        dave = await sign_up(browser, web_server, "Dave")
        c, d = carol.page, dave.page
        await wait_connected(c, "longpoll")
        await wait_connected(d, "ws")
        await c.locator(".banner", has_text="Long-poll mode").wait_for()
        assert await d.locator(".banner").is_hidden()

        await start_chat(carol, dave.username)
        await send(carol, "hello over long-poll")
        # Dave is on his chat list: delivered, not read.
        await d.locator("a.chat-item", has_text="hello over long-poll").wait_for()
        await wait_status(c, "hello over long-poll", "delivered")
        await open_chat(dave, "Carol")
        await wait_status(c, "hello over long-poll", "read")

        # Presence and typing reach a long-poll client through `ephemeral`, and leave it over REST.
        await c.locator("#chat-sub", has_text="online").wait_for()
        await d.locator("#chat-sub", has_text="online").wait_for()
        await d.locator("#composer-input").press_sequentially("answer", delay=20)
        await c.locator("#chat-sub", has_text="typing").wait_for()
        await d.locator("#composer-input").press("Enter")
        await message(c, "answer").wait_for()
        await wait_status(d, "answer", "read")
        await c.locator("#composer-input").press_sequentially("and back", delay=20)
        await d.locator("#chat-sub", has_text="typing").wait_for()
        await c.locator("#composer-input").press("Enter")
        await message(d, "and back").wait_for()

        assert carol.errors + dave.errors == [], carol.errors + dave.errors


async def test_the_socket_reconnects_and_falls_back_to_longpoll_when_websockets_are_blocked(
    web_server,
):
    async with chromium() as browser:
        erin = await sign_up(browser, web_server, "Erin")
        frank = await sign_up(browser, web_server, "Frank")
        e, f = erin.page, frank.page
        await start_chat(erin, frank.username)
        await send(erin, "before the drop")
        await open_chat(frank, "Erin")
        await message(f, "before the drop").wait_for()

        # The network drops Erin's socket: she reconnects by herself and goes on.
        routes, blocked = [], []

        async def network(ws):
            if blocked:
                await ws.close(code=4000, reason="blocked")
            else:
                ws.connect_to_server()
                routes.append(ws)

        await e.route_web_socket(SOCKET, network)
        await e.reload()
        await wait_connected(e, "ws")
        await routes[-1].close(code=4000, reason="network blip")
        await e.wait_for_function("document.body.dataset.connection !== 'online'")
        await wait_connected(e, "ws")
        assert len(routes) >= 2
        await send(erin, "after the drop")
        await message(f, "after the drop").wait_for()

        # Now every socket is refused while HTTP works (a proxy that drops WebSockets):
        # after failed attempts the page switches to long-poll by itself.
        blocked.append(True)
        await routes[-1].close(code=4000, reason="blocked from now on")
        await e.locator(".banner", has_text="Connecting").wait_for()
        await wait_connected(e, "longpoll", timeout=30000)
        await e.locator(".banner", has_text="WebSockets are blocked").wait_for()
        await send(erin, "via the fallback")
        await message(f, "via the fallback").wait_for()
        await send(frank, "got it")
        await message(e, "got it").wait_for()
        await wait_status(e, "via the fallback", "read")

        errors = [x for x in erin.errors if "WebSocket" not in x] + frank.errors
        assert errors == [], errors
