"""`/metrics` of a live daphne: sockets, long-polls, pushes and delivery latency."""

import asyncio
import uuid

import httpx
import pytest

from natter_client import NatterClient
from tests.e2e.conftest import METRICS_TOKEN
from tests.test_metrics import sample

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200
    return r.text


async def test_a_live_server_reports_sockets_waiting_polls_and_delivery(natter_server):
    url = natter_server.url
    people = []
    for name in ("alice", "bob", "carol"):
        client = NatterClient(url)
        handle = f"{name}_{uuid.uuid4().hex[:8]}"
        await client.register(handle, PASSWORD)
        await client.login(handle, PASSWORD)
        people.append(client)
    alice, bob, carol = people
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    before = await scrape(url)
    async with bob.connect("ws") as conn, carol.connect("longpoll", poll_timeout=20):
        await asyncio.sleep(1.0)
        during = await scrape(url)
        assert (
            sample(during, "natter_connected_sockets")
            >= sample(before, "natter_connected_sockets") + 1
        )
        assert sample(during, "natter_longpolls_waiting") >= 1
        await alice.send_text(conversation, "hi")
        await conn.next_event(type="message", timeout=10)
    after = await scrape(url)
    count = "natter_delivery_latency_seconds_count"
    assert sample(after, count) >= sample(before, count) + 1
    assert sample(after, "natter_events_pushed_total", '{transport="ws"}') >= 1
    for client in people:
        await client.aclose()
