"""Sockets, polls and REST clients for the security suite."""

import asyncio
import uuid

from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from rest_framework.test import APIClient

from apps.messaging import services as messaging
from config.asgi import application
from tests.conftest import b64
from tests.presence.helpers import next_of

PASSWORD = "a long pass phrase 42"


def api(device=None) -> APIClient:
    """A REST client, with the device's bearer token when one is given."""
    client = APIClient()
    if device is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    return client


def socket(device=None, *, origin=b"http://127.0.0.1", client_ip=None, headers=()):
    headers = [(b"origin", origin), *headers] if origin else list(headers)
    if device is not None:
        headers.append((b"authorization", f"Bearer {device.token}".encode()))
    ws = WebsocketCommunicator(application, "/ws/v1/", headers=headers)
    if client_ip:
        ws.scope["client"] = (client_ip, 50000)
    return ws


async def open_socket(device, **kw) -> WebsocketCommunicator:
    """A connected socket of `device`, past its hello and drained."""
    ws = socket(device, **kw)
    ok, _ = await ws.connect()
    assert ok
    assert (await ws.receive_json_from(timeout=5))["type"] == "hello"
    await next_of(ws, "drained")
    return ws


async def reply_to(ws, frame: dict, timeout: float = 5) -> dict:
    """Send a frame and return the reply that names it (ack, ok, pong or error)."""
    await ws.send_json_to(frame)
    async with asyncio.timeout(timeout):
        while True:
            reply = await ws.receive_json_from(timeout=timeout)
            if reply.get("ref") == frame.get("id") and reply["type"] != "event":
                return reply


async def closed_with(ws, timeout: float = 5) -> int:
    """The close code the server sends next (skipping frames before it)."""
    async with asyncio.timeout(timeout):
        while True:
            output = await ws.receive_output(timeout=timeout)
            if output["type"] == "websocket.close":
                return output["code"]


async def poll(device=None, query: bytes = b"timeout=0", *, client_ip=None, headers=()):
    """One long-poll through the consumer; (status, headers dict, body bytes)."""
    all_headers = list(headers)
    if device is not None:
        all_headers.append((b"authorization", f"Bearer {device.token}".encode()))
    comm = HttpCommunicator(application, "GET", "/api/v1/events", headers=all_headers)
    comm.scope["query_string"] = query
    if client_ip:
        comm.scope["client"] = (client_ip, 50000)
    response = await comm.get_response(timeout=10)
    return response["status"], dict(response["headers"]), response["body"]


def send_frame(conversation, devices, *, body=b"sealed", client_id=None, frame_id="s1", **extra):
    return {
        "type": "send",
        "id": frame_id,
        "client_id": str(client_id or uuid.uuid4()),
        "conversation": conversation.public_id,
        "kind": "text",
        "ciphertexts": [
            {"device": d.public_id, "envelope": "message", "body": b64(body)} for d in devices
        ],
        **extra,
    }


def send_body(conversation, devices, *, body=b"sealed", client_id=None, **extra) -> dict:
    frame = send_frame(conversation, devices, body=body, client_id=client_id, **extra)
    del frame["type"], frame["id"]
    return frame


@database_sync_to_async
def direct_chat(people, *names):
    """Users with one device each (keys published) and the first two's direct chat."""
    users = [people.user(name) for name in names]
    devices = [people.device(u) for u in users]
    conversation, _ = messaging.conversation_direct_get_or_create(
        user=users[0], other_user_id=users[1].id
    )
    return users, devices, conversation
