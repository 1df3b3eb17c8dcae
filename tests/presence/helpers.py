import asyncio

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.messaging import services as messaging
from config.asgi import application


async def open_socket(device) -> WebsocketCommunicator:
    """A connected socket of `device`, past its hello and drained."""
    ws = WebsocketCommunicator(
        application,
        "/ws/v1/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"authorization", f"Bearer {device.token}".encode()),
        ],
    )
    ok, _ = await ws.connect()
    assert ok
    assert (await ws.receive_json_from(timeout=5))["type"] == "hello"
    await next_of(ws, "drained")
    return ws


async def next_of(ws, kind: str, timeout: float = 5) -> dict:
    """The next frame of a type, skipping others (inbox events, drained...)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.receive_json_from(timeout=timeout)
            if frame["type"] == kind:
                return frame


async def none_of(ws, kind: str, within: float) -> list[dict]:
    """Every frame of a type that arrives within `within` seconds (expected: none).

    Polls with receive_nothing: a receive that times out would cancel the consumer.
    """
    found = []
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (left := end - loop.time()) > 0:
        if await ws.receive_nothing(timeout=min(0.05, left), interval=0.01):
            continue
        frame = await ws.receive_json_from(timeout=1)
        if frame["type"] == kind:
            found.append(frame)
    return found


async def subscribe(ws, *users, ref="s1") -> list[dict]:
    """Subscribe to users; return the snapshot frames (before the ok)."""
    await ws.send_json_to(
        {"type": "presence.subscribe", "id": ref, "user_ids": [u.public_id for u in users]}
    )
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] == "ok" and frame["ref"] == ref:
            return frames
        if frame["type"] == "presence":
            frames.append(frame)
        elif frame["type"] == "error":
            raise AssertionError(frame)


@database_sync_to_async
def direct_chat(a, b):
    conversation, _ = messaging.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    return conversation


def status_of(frame: dict) -> tuple[str, str | None]:
    return frame["status"], frame["last_seen"]
