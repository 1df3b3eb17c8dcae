#!/usr/bin/env python3
"""Drive a running Natter server through presence, typing and heartbeats; print the frames.

    .venv/bin/python scripts/presence_transcript.py --url http://127.0.0.1:8123

Starts nothing: point it at a server on a scratch database (it registers users).
Run the server with a short heartbeat (`HEARTBEAT_S=2`), so the silent socket at the
end is closed after 5 s rather than 75 s. Raw HTTP (httpx) and raw WebSocket
(websockets), so what is printed is what travelled; tokens show as `<token>`.

    B1 -> {...}     a frame the client sent       B1 <- {...}   a frame the server sent
    B2 > PUT ...    a request and its body        B2 < 200 ...  the answer
"""

import argparse
import asyncio
import contextlib
import json
import time
import uuid

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

PASSWORD = "correct horse battery staple"


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Device:
    def __init__(self, name: str, url: str, login: dict):
        self.name, self.url = name, url
        self.user, self.id, self.token = login["user"]["id"], login["device"]["id"], login["token"]
        self.http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=40
        )
        self.ws = None

    async def open(self, ping: bool = True):
        self.ws = await connect(
            self.url.replace("http", "ws", 1) + "/ws/v1/",
            additional_headers={"Authorization": f"Bearer {self.token}"},
            ping_interval=None,
        )
        await self.recv_until("drained")
        if ping:
            self.pinger = asyncio.ensure_future(self.keep_pinging())

    async def keep_pinging(self):
        # The heartbeat, not printed: {"type":"ping"} -> {"type":"pong"} every second.
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(1)
                await self.ws.send('{"type":"ping"}')

    async def send(self, frame: dict):
        print(f"{self.name} -> {dumps(frame)}")
        await self.ws.send(dumps(frame))

    async def recv_until(self, kind: str, timeout: float = 15) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["type"] == "pong":
                    continue
                print(f"{self.name} <- {dumps(frame)}")
                if frame["type"] == kind:
                    return frame

    async def request(self, method: str, path: str, body=None, quiet_body=False):
        print(f"{self.name} > {method} {path}")
        if body is not None:
            print(f"{self.name} > {dumps(body)}")
        started = time.monotonic()
        r = await self.http.request(method, path, json=body)
        took = (
            f"  ({time.monotonic() - started:.1f} s)" if path.startswith("/api/v1/events") else ""
        )
        print(f"{self.name} < {r.status_code} {r.reason_phrase}{took}")
        if "retry-after" in r.headers:
            print(f"{self.name} <   retry-after: {r.headers['retry-after']}")
        if r.content:
            print(f"{self.name} < {r.text}")
        return r


async def login(url: str, handle: str, device: str) -> dict:
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/api/v1/auth/login",
            json={"username": handle, "password": PASSWORD, "device_name": device},
        )
        r.raise_for_status()
        return r.json()


async def main(url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    handles = {n: f"{n}_{tag}" for n in ("alice", "bob", "carol", "dave")}
    async with httpx.AsyncClient(base_url=url) as http:
        for name, handle in handles.items():
            body = {"username": handle, "password": PASSWORD, "display_name": name.title()}
            (await http.post("/api/v1/auth/register", json=body)).raise_for_status()
    a1 = Device("A1", url, await login(url, handles["alice"], "laptop"))
    b1 = Device("B1", url, await login(url, handles["bob"], "phone"))
    b2 = Device("B2", url, await login(url, handles["bob"], "cli"))
    c1 = Device("C1", url, await login(url, handles["carol"], "phone"))
    dave = (await login(url, handles["dave"], "phone"))["user"]["id"]
    chat = (await a1.http.post("/api/v1/conversations/direct", json={"user_id": b1.user})).json()
    conversation = chat["id"]
    # carol shares a chat with alice only, and shows her presence to contacts only.
    await c1.http.post("/api/v1/conversations/direct", json={"user_id": a1.user})
    await c1.http.patch("/api/v1/me", json={"last_seen_visibility": "contacts"})
    ids = {"alice": a1.user, "bob": b1.user, "carol": c1.user}
    print("# ids", dumps({**ids, "alice-bob": conversation}))
    cursor = (await b2.http.get("/api/v1/events?timeout=0&limit=500")).json()["next_cursor"]

    print("\n## Subscribing: a snapshot at once (carol hides from non-contacts)")
    await b1.open()
    await b1.send({"type": "presence.subscribe", "id": "p1", "user_ids": [a1.user, c1.user]})
    await b1.recv_until("ok")

    print("\n## alice comes online; carol too, which bob is not allowed to see")
    await c1.open(ping=False)
    await a1.open()
    await b1.recv_until("presence")

    print("\n## Typing, to a socket and to a waiting long-poll")
    poll = asyncio.ensure_future(b2.request("GET", f"/api/v1/events?cursor={cursor}&timeout=25"))
    await asyncio.sleep(1)
    await a1.send(
        {"type": "typing", "id": "t1", "conversation": conversation, "state": "composing"}
    )
    await a1.recv_until("ok")
    await b1.recv_until("typing")
    await poll
    await a1.send({"type": "typing", "conversation": conversation, "state": "paused"})
    await b1.recv_until("typing")

    print("\n## Typing errors")
    await c1.send(
        {"type": "typing", "id": "t2", "conversation": conversation, "state": "composing"}
    )
    await c1.recv_until("error")
    print("C1 -> 12 typing frames at once, ids r0…r11, in its chat with dave")
    theirs = (await c1.http.post("/api/v1/conversations/direct", json={"user_id": dave})).json()
    for i in range(12):
        frame = {
            "type": "typing",
            "id": f"r{i}",
            "conversation": theirs["id"],
            "state": "composing",
        }
        await c1.ws.send(dumps(frame))
    oks = 0
    while (frame := json.loads(await c1.ws.recv()))["type"] == "ok":
        oks += 1
    print(f"C1 <- … {oks} x ok …")
    print(f"C1 <- {dumps(frame)}")
    while frame["ref"] != "r11":
        frame = json.loads(await c1.ws.recv())
    print("C1 <- … the same error for r10 and r11 …")
    await c1.send(
        {"type": "presence.subscribe", "id": "p2", "user_ids": [f"u_{i}" for i in range(1, 102)]}
    )
    await c1.recv_until("error")
    print("C1 (from now on silent)")
    c1_silent_since = time.monotonic()

    print("\n## Long-poll subscriptions and typing over REST")
    await b2.request("PUT", "/api/v1/presence/subscriptions", {"user_ids": [a1.user, c1.user]})
    await b2.request("POST", "/api/v1/typing", {"conversation": conversation, "state": "composing"})
    await a1.recv_until("typing")

    print("\n## alice leaves while composing: paused at once, offline after the grace period")
    await a1.send({"type": "typing", "conversation": conversation, "state": "composing"})
    await b1.recv_until("typing")
    poll = asyncio.ensure_future(b2.request("GET", f"/api/v1/events?cursor={cursor}&timeout=25"))
    await asyncio.sleep(0.5)
    a1.pinger.cancel()
    await a1.ws.close()
    print("A1 xx closed by the client")
    await b1.recv_until("typing")
    await poll  # answered by the paused notice
    await b2.request("GET", f"/api/v1/events?cursor={cursor}&timeout=25")  # the offline
    await b1.recv_until("presence")
    await b2.request("GET", f"/api/v1/events?cursor={cursor}&timeout=0")  # nothing new

    print("\n## alice hides her last seen")
    await a1.request("PATCH", "/api/v1/me", {"last_seen_visibility": "nobody"})
    await b1.recv_until("presence")

    print("\n## A silent socket")
    try:
        while True:
            print(f"C1 <- {await asyncio.wait_for(c1.ws.recv(), 120)}")
    except ConnectionClosed:
        took = time.monotonic() - c1_silent_since
        print(f"C1 xx closed by server: {c1.ws.close_code} after {took:.1f} s of silence")
    for d in (a1, b1, b2, c1):
        await d.http.aclose()
    b1.pinger.cancel()
    await b1.ws.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    asyncio.run(main(parser.parse_args().url))
