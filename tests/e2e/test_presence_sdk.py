"""The SDK's presence and typing helpers, over both transports, against a live server."""

import pytest

from tests.e2e.test_direct_messaging import chat

pytestmark = pytest.mark.asyncio


async def next_notice(conn, kind: str, timeout: float = 10) -> dict:
    while True:
        notice = await conn.next_ephemeral(timeout=timeout)
        if notice.get("type") == kind:
            return notice


async def test_presence_and_typing_through_the_sdk_on_both_transports(natter_server):
    alice, bob, conversation = await chat(natter_server.url)
    async with alice.connect("ws") as a, bob.connect("longpoll", poll_timeout=5) as b:
        await a.wait_drained(timeout=10)
        await b.wait_drained(timeout=10)
        await a.subscribe_presence([bob.user_id])
        await b.subscribe_presence([alice.user_id])
        seen_by_alice = await next_notice(a, "presence")
        seen_by_bob = await next_notice(b, "presence")
        assert seen_by_alice["user"] == bob.user_id and seen_by_alice["status"] == "online"
        assert seen_by_bob["user"] == alice.user_id and seen_by_bob["status"] == "online"
        await b.typing(conversation)
        typing = await next_notice(a, "typing")
        assert typing == {
            "type": "typing",
            "conversation": conversation,
            "user": bob.user_id,
            "state": "composing",
        }
        await a.typing(conversation, "paused")
        typing = await next_notice(b, "typing")
        assert typing["user"] == alice.user_id and typing["state"] == "paused"
    for client in (alice, bob):
        await client.aclose()
