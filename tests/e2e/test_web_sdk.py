"""The browser and the Python SDK talk to each other: the same protocol and the same
end-to-end encryption (pairwise sessions, Sender Keys, safety numbers) on both sides."""

import asyncio

import pytest

from natter_client import NatterClient
from natter_client.e2e import EndToEnd
from natter_client.keystore import KeyStore
from tests.e2e.web_helpers import (
    PASSWORD,
    chromium,
    handle,
    message,
    open_chat,
    screenshot,
    send,
    sign_up,
    start_chat,
    wait_status,
    web_server_fixture,  # noqa: F401  (the web_server fixture)
)

pytestmark = [pytest.mark.asyncio]


async def next_item(client: NatterClient, conn, want, timeout: float = 15):
    """The next decrypted inbox item for which want(item) is true."""
    async with asyncio.timeout(timeout):
        async for item in client.receive(conn):
            if want(item):
                return item
    raise AssertionError("the inbox ended")


def text_is(text):
    return lambda item: item.type == "message" and item.text == text


async def test_the_browser_and_the_python_sdk_chat_with_each_other(web_server):
    sdk = NatterClient(web_server.url)
    username = handle("sam")
    await sdk.register(username, PASSWORD, "Sam")
    await sdk.login(username, PASSWORD, device_name="sdk")
    try:
        async with chromium() as browser, sdk.connect("ws", auto_ack=False) as conn:
            alice = await sign_up(browser, web_server, "Alice")
            a = alice.page
            alice_id = await alice.user_id()
            conversation = await start_chat(alice, username)

            # Browser → SDK: the SDK opens it; its ack and its read turn the checks.
            await send(alice, "hello from the browser")
            got = await next_item(sdk, conn, text_is("hello from the browser"))
            assert got["conversation"] == conversation and got["envelope"] == "prekey"
            await wait_status(a, "hello from the browser", "delivered")
            await sdk.read(conversation, got["seq"])
            await wait_status(a, "hello from the browser", "read")

            # SDK → browser, as a reply; the browser reads it and the SDK gets the receipt.
            ack = await sdk.send_text(
                conversation, "hello from Python", reply_to_seq=got["seq"], connection=conn
            )
            reply = message(a, "hello from Python")
            await reply.wait_for()
            assert "hello from the browser" in await reply.locator(".quote").inner_text()
            receipt = await next_item(
                sdk,
                conn,
                lambda i: (
                    i.type == "receipt" and i["status"] == "read" and i["up_to_seq"] >= ack.seq
                ),
            )
            assert receipt["by_user"] == alice_id

            # Both sides compute the same safety number.
            await a.get_by_role("button", name="Verify security code").click()
            number = a.get_by_role("dialog").locator(".safety-number[data-number]")
            await number.wait_for()
            before = await number.get_attribute("data-number")
            assert before == await sdk.safety_number(alice_id)
            assert len(before.split()) == 12
            await screenshot(a, "safety-number")
            await a.keyboard.press("Escape")

            # A group: Sender Keys handed over pairwise, in both directions.
            group = await sdk.create_group("Interop", [alice_id])
            await sdk.send_text(group["id"], "group hello from Python", connection=conn)
            await open_chat(alice, "Interop")
            await message(a, "group hello from Python").wait_for()
            await send(alice, "group answer from the browser")
            await next_item(sdk, conn, text_is("group answer from the browser"))

            # The SDK device gets new keys (a reinstall): the browser says so, and both
            # sides start new sessions.
            sdk.keystore = KeyStore()
            sdk.e2e = EndToEnd(sdk, sdk.keystore)
            await sdk.e2e.publish()
            await a.locator("li.notice", has_text="Sam’s security code changed").wait_for()
            await open_chat(alice, "Sam")
            await a.locator("li.notice", has_text="Sam’s security code changed").wait_for()
            await a.get_by_role("button", name="Verify security code", exact=True).click()
            dialog = a.get_by_role("dialog")
            await dialog.locator(".safety-changed").wait_for()
            await dialog.locator(".safety-number[data-number]").wait_for()
            changed = await dialog.locator(".safety-number").get_attribute("data-number")
            assert changed == await sdk.safety_number(alice_id) != before
            await a.keyboard.press("Escape")
            await send(alice, "after your new keys")
            await next_item(sdk, conn, text_is("after your new keys"))
            await sdk.send_text(conversation, "and back with them", connection=conn)
            await message(a, "and back with them").wait_for()
            assert await a.locator("li.msg .undecryptable").count() == 0

            assert alice.errors == [], alice.errors
    finally:
        await sdk.aclose()


async def test_the_browser_tops_up_its_one_time_prekeys_when_told_they_run_low(web_server):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        alice_id = await alice.user_id()
        count = "async () => (await (await fetch('/api/v1/keys/count')).json()).one_time_prekeys"
        assert await alice.page.evaluate(count) == 100
        # Others claim her prekeys (30 a minute per claimer and user): below 10 she gets
        # `prekeys_low` and uploads fresh ones.
        claimers = []
        for i in range(4):
            client = NatterClient(web_server.url)
            name = handle(f"claimer{i}")
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
            claimers.append(client)
        try:
            for i in range(91):
                (bundle,) = await claimers[i // 30].claim_bundles(alice_id)
                assert bundle["one_time_prekey"] is not None
            for _ in range(50):  # 9 left until she tops up
                if await alice.page.evaluate(count) == 100:
                    break
                await asyncio.sleep(0.3)
            assert await alice.page.evaluate(count) == 100
        finally:
            for client in claimers:
                await client.aclose()
        assert alice.errors == [], alice.errors
