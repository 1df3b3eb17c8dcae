"""Groups in the web UI: three browsers, Sender Keys, group info, a removal."""

import asyncio

import pytest

from tests.e2e.web_helpers import (
    chromium,
    message,
    open_chat,
    screenshot,
    send,
    sign_up,
    wait_status,
    web_server_fixture,  # noqa: F401  (the web_server fixture)
)

pytestmark = [pytest.mark.asyncio]


def event(page, text: str):
    return page.locator("li.event", has_text=text)


async def answer_group_reads_late(page, seconds: float) -> asyncio.Queue:
    """Read each group from the server at once but hand the answer over late, so a
    change made meanwhile (a removal) reaches the page before the older answer does.
    The queue gets each read's status as soon as the server has answered it."""
    reads: asyncio.Queue = asyncio.Queue()

    async def late(route):
        response = await route.fetch()
        reads.put_nowait(response.status)
        await asyncio.sleep(seconds)
        await route.fulfill(response=response)

    await page.route("**/api/v1/groups/*", late)
    return reads


async def test_a_group_of_three_talks_then_removes_one_member(web_server):
    async with chromium() as browser:
        alice = await sign_up(browser, web_server, "Alice")
        bob = await sign_up(browser, web_server, "Bob")
        carol = await sign_up(browser, web_server, "Carol")
        a, b, c = alice.page, bob.page, carol.page
        # The removal below must hold even when it crosses Carol's refresh of the group.
        carol_reads = await answer_group_reads_late(c, 1.0)

        # Alice makes the group from the dialog, adding people by exact username.
        await a.get_by_role("button", name="New group").click()
        dialog = a.get_by_role("dialog")
        await dialog.get_by_label("Group name").fill("Climbing")
        for person in (bob, carol):
            await dialog.get_by_label("Add members by exact username").fill(person.username)
            await dialog.get_by_label("Add members by exact username").press("Enter")
            await dialog.locator(".chip", has_text=person.display_name).wait_for()
        await dialog.get_by_role("button", name="Create group").click()
        await event(a, "You created the group “Climbing”").wait_for()

        await send(alice, "Welcome to the group")
        for person in (bob, carol):
            row = person.page.locator("a.chat-item", has_text="Climbing")
            await row.locator(".preview", has_text="Alice: Welcome to the group").wait_for()
        await wait_status(a, "Welcome to the group", "delivered")

        # Blue only once everyone has read it.
        await open_chat(bob, "Climbing")
        await event(b, "Alice created the group “Climbing”").wait_for()
        await asyncio.sleep(1)
        assert await message(a, "Welcome to the group").get_attribute("data-status") == "delivered"
        await open_chat(carol, "Climbing")
        await wait_status(a, "Welcome to the group", "read")

        await send(bob, "Hi all")
        for page in (a, c):
            await message(page, "Hi all").locator(".sender", has_text="Bob").wait_for()
        await send(carol, "Hello from Carol")
        await message(a, "Hello from Carol").wait_for()
        await message(b, "Hello from Carol").wait_for()

        # Group info: members and admins; Alice promotes Bob, then removes Carol.
        await a.get_by_role("button", name="Group info", exact=True).click()
        info = a.get_by_role("dialog")
        await info.locator(".member").nth(2).wait_for()
        assert await info.locator(".member").count() == 3
        assert await info.locator(".member", has_text="You").locator(".admin-badge").count() == 1
        while not carol_reads.empty():
            carol_reads.get_nowait()
        await info.get_by_role("button", name="Make Bob an admin").click()
        await info.locator(".member", has_text="Bob").locator(".admin-badge").wait_for()
        await screenshot(a, "group-info")
        # Carol's page reads the group after the promotion; she is removed while that
        # answer is still on its way to her.
        assert await asyncio.wait_for(carol_reads.get(), 10) == 200
        await info.get_by_role("button", name="Remove Carol").click()
        await info.locator(".member", has_text="Carol").wait_for(state="detached")
        await info.press("Escape")
        await info.wait_for(state="detached")

        await event(a, "You made Bob an admin").wait_for()
        await event(a, "You removed Carol").wait_for()
        await event(b, "Alice made you an admin").wait_for()
        await event(b, "Alice removed Carol").wait_for()
        await event(c, "Alice removed you").wait_for()
        await c.locator(".left-note", has_text="no longer a member").wait_for()
        assert await c.locator("#composer-input").is_hidden()

        # The two who remain go on (with new sender keys); Carol gets nothing more.
        await send(alice, "Just the two of us now")
        await message(b, "Just the two of us now").wait_for()
        await send(bob, "Indeed")
        await message(a, "Indeed").wait_for()
        await wait_status(a, "Just the two of us now", "read")
        await asyncio.sleep(1)
        assert await message(c, "Just the two of us now").count() == 0
        assert await message(c, "Indeed").count() == 0
        assert await c.locator(".left-note").is_visible(), "an older read undid the removal"

        # Alice adds Carol back from Group info: she reads what comes next, not what she missed.
        await a.get_by_role("button", name="Group info", exact=True).click()
        info = a.get_by_role("dialog")
        await info.get_by_label("Add a member by exact username").fill(carol.username)
        await info.get_by_role("button", name="Add", exact=True).click()
        await info.locator(".member", has_text="Carol").wait_for()
        await info.press("Escape")
        await event(a, "You added Carol").wait_for()
        await event(c, "Alice added you").wait_for()
        await c.locator("#composer-input").wait_for()
        await send(alice, "Welcome back, Carol")
        await message(c, "Welcome back, Carol").wait_for()
        await send(carol, "Glad to be back")
        await message(a, "Glad to be back").wait_for()
        await message(b, "Glad to be back").wait_for()
        assert await message(c, "Just the two of us now").count() == 0

        # Bob, now an admin, leaves; Alice sees it in the timeline.
        await b.get_by_role("button", name="Group info", exact=True).click()
        await b.get_by_role("dialog").get_by_role("button", name="Leave group").click()
        await (
            b.get_by_role("dialog", name="Leave the group?")
            .get_by_role("button", name="Leave")
            .click()
        )
        await event(a, "Bob left").wait_for()
        await b.locator(".left-note").wait_for()

        errors = alice.errors + bob.errors + carol.errors
        assert errors == [], errors
