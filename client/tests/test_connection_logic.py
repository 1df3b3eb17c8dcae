"""Queue, de-duplication and ack bookkeeping of a Connection, fed by hand (no network)."""

import pytest

from natter_client import ConnectionClosed, NatterClient
from natter_client.transport import Connection


class HandFed(Connection):
    """A Connection whose events are delivered by the test and whose acks are recorded."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.acks: list[int] = []

    async def _push_ack(self) -> None:
        self.acks.append(self._ack_target)

    def feed(self, cursor, event):
        return self._deliver(cursor, event)


def message(message_id, seq=1):
    return {
        "type": "message",
        "message_id": message_id,
        "conversation": "c_1",
        "seq": seq,
        "body": "aGk=",
    }


@pytest.mark.asyncio
async def test_each_message_id_is_handed_over_once_but_still_acked():
    conn = HandFed()
    conn.feed(1, message("m_1"))
    conn.feed(2, message("m_1"))  # e.g. the same message under a new row
    conn.feed(3, message("m_2", seq=2))
    first = await conn.next_event(timeout=1)
    second = await conn.next_event(timeout=1)
    assert (first.cursor, first["body"]) == (1, b"hi")
    assert (second.cursor, second["message_id"]) == (3, "m_2")
    assert conn.ack_cursor == 3


@pytest.mark.asyncio
async def test_a_cursor_pushed_again_after_reconnect_is_dropped():
    conn = HandFed()
    assert conn.feed(5, {"type": "receipt", "status": "read", "up_to_seq": 2})
    assert not conn.feed(5, {"type": "receipt", "status": "read", "up_to_seq": 2})
    assert conn.feed(4, {"type": "device", "action": "added"})  # a late, lower cursor is new
    assert (await conn.next_event(timeout=1)).cursor == 5
    assert (await conn.next_event(timeout=1)).cursor == 4
    with pytest.raises(TimeoutError):
        await conn.next_event(timeout=0.01)


@pytest.mark.asyncio
async def test_auto_ack_only_covers_what_the_application_has_taken():
    conn = HandFed()
    conn.feed(1, message("m_1"))
    conn.feed(2, message("m_2"))
    assert conn.ack_cursor == 0
    await conn.next_event(timeout=1)
    assert conn.ack_cursor == 1


@pytest.mark.asyncio
async def test_manual_ack_moves_only_when_asked():
    conn = HandFed(auto_ack=False)
    conn.feed(1, message("m_1"))
    event = await conn.next_event(timeout=1)
    assert conn.ack_cursor == 0
    await conn.ack(event.cursor)
    assert conn.ack_cursor == 1 and conn.acks == [1]


@pytest.mark.asyncio
async def test_type_filter_skips_other_events_and_acks_them():
    conn = HandFed()
    conn.feed(1, {"type": "prekeys_low", "remaining": 3})
    conn.feed(2, {"type": "receipt", "status": "delivered"})
    event = await conn.next_event(timeout=1, type="receipt")
    assert event.cursor == 2 and conn.ack_cursor == 2


@pytest.mark.asyncio
async def test_unknown_event_types_pass_through():
    conn = HandFed()
    conn.feed(1, {"type": "from_the_future", "x": 1})
    event = await conn.next_event(timeout=1)
    assert event.type == "from_the_future" and event["x"] == 1


@pytest.mark.asyncio
async def test_malformed_event_is_ignored():
    conn = HandFed()
    assert not conn.feed("7", {"type": "message"})
    assert not conn.feed(7, "not an object")


@pytest.mark.asyncio
async def test_iteration_ends_after_close_and_raises_the_failure_otherwise():
    conn = HandFed()
    conn.feed(1, message("m_1"))
    conn._closing = True
    conn._finish()
    assert [e.cursor async for e in conn.events()] == [1]
    with pytest.raises(ConnectionClosed):
        await conn.next_event(timeout=1)


def test_ws_url_and_origin_follow_the_base_url():
    client = NatterClient("https://chat.example:8443/natter/")
    assert client.ws_url == "wss://chat.example:8443/natter/ws/v1/"
    assert client.origin == "https://chat.example:8443"
    assert NatterClient("http://127.0.0.1:8000").ws_url == "ws://127.0.0.1:8000/ws/v1/"
