"""bench.floor_durable: the floor's relay plus the least a store-and-forward must store.

It is a lower bound on a durable server only if it really stores: a send is in
Postgres before its ack comes back, and the recipient's ack deletes it.
"""

import asyncio
from pathlib import Path

import pytest

from bench.load import connection as bench_connection
from bench.population import make_pairs
from tests.bench_apps import floor_rows, serving

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def durable_floor_url(tmp_path: Path):
    with serving("bench.floor_durable:application", tmp_path) as url:
        yield url


def stored_bodies() -> list[bytes]:
    return [body for _, body in floor_rows()]


def test_a_send_is_stored_before_its_ack_and_deleted_by_the_recipients_ack(durable_floor_url):
    sender, receiver, conversation = make_pairs(1, "durable")[0]

    async def exchange():
        a = bench_connection(durable_floor_url, sender.token)
        b = bench_connection(durable_floor_url, receiver.token, auto_ack=False)
        await a.start()
        await b.start()
        try:
            await a.send(conversation, {receiver.device_id: b"first"}, timeout=5)
            at_the_senders_ack = await asyncio.to_thread(stored_bodies)
            event = await b.next_event(timeout=5)
            await b.ack(event.cursor)
            receipt = await a.next_event(timeout=5)  # sent once the ack's delete committed
            after_the_ack = await asyncio.to_thread(stored_bodies)
        finally:
            await a.aclose()
            await b.aclose()
        return at_the_senders_ack, event, receipt, after_the_ack

    at_the_senders_ack, event, receipt, after_the_ack = asyncio.run(exchange())
    assert at_the_senders_ack == [b"first"]
    assert event.type == "message" and event["body"] == b"first"
    assert (receipt.type, receipt["status"], receipt["up_to_seq"]) == ("receipt", "delivered", 1)
    assert after_the_ack == []


def test_sends_of_one_burst_each_get_their_own_rows(durable_floor_url):
    pairs = make_pairs(3, "burst")

    async def burst():
        senders = [bench_connection(durable_floor_url, s.token) for s, _, _ in pairs]
        for connection in senders:
            await connection.start()
        try:
            await asyncio.gather(
                *(
                    connection.send(conversation, {r.device_id: f"body {n}".encode()}, timeout=5)
                    for n, (connection, (_, r, conversation)) in enumerate(
                        zip(senders, pairs, strict=True)
                    )
                )
            )
        finally:
            for connection in senders:
                await connection.aclose()

    asyncio.run(burst())
    assert sorted(stored_bodies()) == [b"body 0", b"body 1", b"body 2"]
