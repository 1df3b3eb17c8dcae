"""The web UI in a real browser: two people sign up and chat, with checkmarks,
typing, presence, replies, history across a reload, and the offline outbox."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from apps.common import ids
from apps.messaging.models import InboxEntry, Message
from apps.messaging.tasks import inbox_expire_task
from tests.e2e.web_helpers import (
    Person,
    chat_item,
    chromium,
    log_in,
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

KEYSTORE_IDENTITY = """() => new Promise((resolve, reject) => {
    const open = indexedDB.open('natter');
    open.onsuccess = () => {
        const req = open.result.transaction('kv').objectStore('kv').get('keystore');
        req.onsuccess = () => resolve(req.result.identity.public);
        req.onerror = () => reject(req.error);
    };
})"""


async def test_two_browsers_sign_up_and_chat_with_checkmarks_typing_and_presence(web_server):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice", shot="login")
        bob = await sign_up(browser, web_server, "Bob")
        a, b = alice.page, bob.page

        # The browser made its keys, keeps them in IndexedDB, and published the public half.
        identity = await a.evaluate(KEYSTORE_IDENTITY)
        devices = await a.evaluate(
            "async (id) => (await (await fetch(`/api/v1/users/${id}/devices`)).json())",
            await alice.user_id(),
        )
        assert [d["identity_key"] for d in devices] == [identity]

        await start_chat(alice, bob.username)
        # Bob is on his chat list, not in the chat: delivered, not read.
        await send(alice, "Hi Bob! Are you there?")
        await wait_status(a, "Hi Bob! Are you there?", "delivered")
        row = chat_item(b, "Alice")
        await row.wait_for()
        assert await row.locator(".badge").inner_text() == "1"
        assert "Hi Bob! Are you there?" in await row.inner_text()

        await open_chat(bob, "Alice")
        await wait_status(a, "Hi Bob! Are you there?", "read")
        assert await row.locator(".badge").count() == 0

        # Online, and typing, in the header.
        await a.locator("#chat-sub", has_text="online").wait_for()
        await b.locator("#composer-input").press_sequentially("Yes, I am", delay=20)
        await a.locator("#chat-sub", has_text="typing").wait_for()
        await b.locator("#composer-input").press("Enter")
        await message(a, "Yes, I am").wait_for()
        await a.locator("#chat-sub", has_text="online").wait_for()

        # A reply quotes the message it answers.
        await message(a, "Yes, I am").hover()
        await message(a, "Yes, I am").get_by_role("button", name="Reply to Bob").click()
        await send(alice, "Great, see you at 8")
        quoted = message(b, "Great, see you at 8").locator(".quote")
        await quoted.wait_for()
        assert "Yes, I am" in await quoted.inner_text()
        await wait_status(a, "Great, see you at 8", "read")

        # A second tab of the same browser waits: one device, one copy of its ratchet state.
        tab = await alice.context.new_page()
        await tab.goto(web_server.url + "/")
        await tab.get_by_text("Natter is open in another tab").wait_for()
        await tab.get_by_role("button", name="Use here").click()
        await wait_connected(tab)
        await a.get_by_text("Natter is open in another tab").wait_for()  # the first gave way
        await open_chat(Person(alice.context, tab, alice.username, "Alice"), "Bob")
        await message(tab, "Great, see you at 8").wait_for()  # the same device, the same history
        await tab.locator("#composer-input").fill("Switched tabs")
        await tab.locator("#composer-input").press("Enter")
        await message(b, "Switched tabs").wait_for()

        assert alice.errors + bob.errors == [], alice.errors + bob.errors


HIDE = """() => {
    for (const [k, v] of [['visibilityState', 'hidden'], ['hidden', true]]) {
        Object.defineProperty(document, k, {configurable: true, get: () => v});
    }
    document.dispatchEvent(new Event('visibilitychange'));
}"""
SHOW = """() => {
    delete document.visibilityState;
    delete document.hidden;
    document.dispatchEvent(new Event('visibilitychange'));
}"""
KV_KEYS = """() => new Promise((resolve, reject) => {
    const open = indexedDB.open('natter');
    open.onsuccess = () => {
        const db = open.result;
        const names = ['kv', 'messages', 'conversations'].filter((n) => db.objectStoreNames.contains(n));
        if (!names.length) return resolve([]);
        const tx = db.transaction(names);
        const out = [];
        names.forEach((n) => {
            tx.objectStore(n).getAllKeys().onsuccess = (e) => out.push(...e.target.result);
        });
        tx.oncomplete = () => resolve(out);
        tx.onerror = () => reject(tx.error);
    };
})"""
OUTBOX = """() => new Promise((resolve, reject) => {
    const open = indexedDB.open('natter');
    open.onsuccess = () => {
        const req = open.result.transaction('outbox').objectStore('outbox').getAll();
        req.onsuccess = () => resolve(req.result.map((item) => item.client_id));
        req.onerror = () => reject(req.error);
    };
})"""


async def test_history_survives_a_reload_the_outbox_waits_offline_and_hidden_tabs_do_not_read(
    web_server,
):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        bob = await sign_up(browser, web_server, "Bob")
        a, b = alice.page, bob.page
        frames = []
        a.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(str(f))))
        await start_chat(alice, bob.username)
        await send(alice, "first message")
        await open_chat(bob, "Alice")
        await wait_status(a, "first message", "read")

        # A hidden tab receives (✓✓) but does not read (no blue) until it is shown.
        await b.evaluate(HIDE)
        await send(alice, "while you look away")
        await wait_status(a, "while you look away", "delivered")
        await asyncio.sleep(1.5)
        assert await message(a, "while you look away").get_attribute("data-status") == "delivered"
        await b.evaluate(SHOW)
        await wait_status(a, "while you look away", "read")

        # Offline: the message waits in the outbox with a clock, then goes with the same client_id.
        await alice.context.set_offline(True)
        await a.wait_for_function("document.body.dataset.connection === 'offline'")
        await a.locator(".banner", has_text="offline").wait_for()
        await send(alice, "written offline")
        await wait_status(a, "written offline", "pending")
        (client_id,) = await a.evaluate(OUTBOX)
        assert await message(a, "written offline").get_attribute("data-client-id") == client_id
        await asyncio.sleep(1)
        assert await message(b, "written offline").count() == 0
        await alice.context.set_offline(False)
        await wait_connected(a)
        await message(b, "written offline").wait_for()
        assert await message(b, "written offline").get_attribute("data-client-id") == client_id
        await wait_status(a, "written offline", "read")
        assert await a.evaluate(OUTBOX) == []

        # The server deleted what it delivered: a reload shows the history from IndexedDB.
        await b.reload()
        await wait_connected(b)
        for text in ("first message", "while you look away", "written offline"):
            await message(b, text).wait_for()
        await a.reload()
        await wait_connected(a)
        await wait_status(a, "written offline", "read")
        assert await a.locator("li.msg").count() == 3

        # Bob logs in on a second browser: Alice's cached device list is stale, the server
        # answers device_mismatch, she claims the new device's keys and resends.
        await send(alice, "one more before the tablet")  # Alice's page caches Bob's devices
        await message(b, "one more before the tablet").wait_for()
        bob_tablet = await log_in(browser, web_server, bob)
        await send(alice, "to both of your devices")
        await message(b, "to both of your devices").wait_for()
        await open_chat(bob_tablet, "Alice")
        await message(bob_tablet.page, "to both of your devices").wait_for()
        assert any("device_mismatch" in f for f in frames), "no device_mismatch was answered"
        assert await bob_tablet.page.locator("li.msg").count() == 1  # only what came after login

        # Logging out revokes the device; Bob then sees when Alice was last seen.
        alice_id = await alice.user_id()
        await a.get_by_role("button", name="Log out").click()
        await a.get_by_role("dialog").get_by_role("button", name="Log out").click()
        await a.get_by_role("tab", name="Log in").wait_for()
        devices = await b.evaluate(
            "async (id) => (await (await fetch(`/api/v1/users/${id}/devices`)).json())",
            alice_id,
        )
        assert devices == []
        assert await a.evaluate(KV_KEYS) == []  # keys and history are gone from the browser
        await b.locator("#chat-sub", has_text="last seen today at").wait_for(timeout=15000)

        assert alice.errors + bob.errors == [], alice.errors + bob.errors


async def test_a_message_that_never_arrives_shows_not_delivered_and_can_be_sent_again(
    web_server,
):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        bob = await sign_up(browser, web_server, "Bob")
        a = alice.page
        conversation = await start_chat(alice, bob.username)
        await bob.context.close()  # Bob's device stays, but never fetches again
        await send(alice, "are you still there?")
        await wait_status(a, "are you still there?", "sent")

        # RETENTION_DAYS pass: the expiry job drops the row and tells the sender.
        key = ids.decode(ids.CONVERSATION, conversation)

        @database_sync_to_async
        def age_everything():
            old = timezone.now() - timedelta(days=31)
            Message.objects.filter(conversation_id=key).update(created_at=old)
            InboxEntry.objects.filter(message__conversation_id=key).update(created_at=old)

        await age_everything()
        await database_sync_to_async(inbox_expire_task.delay)()
        row = message(a, "are you still there?")
        await wait_status(a, "are you still there?", "expired", timeout=20000)
        assert await row.get_by_role("img", name="Not delivered").count() == 1
        await row.get_by_role("button", name="Send again").click()
        await wait_status(a, "are you still there?", "sent")
        assert await message(a, "are you still there?").count() == 1

        assert alice.errors == [], alice.errors
