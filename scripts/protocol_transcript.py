#!/usr/bin/env python3
"""Drive a running Natter server through the wire protocol and print a transcript.

    .venv/bin/python scripts/protocol_transcript.py --url http://127.0.0.1:8123 > transcript.md

It starts nothing: point it at a server you started (daphne, on Postgres and Redis,
on a scratch database: it registers users). It speaks raw HTTP (httpx) and raw
WebSocket (websockets), not the natter_client SDK, so every request, frame and
answer is shown exactly as it travelled; only secrets are replaced: bearer tokens
by `<token>`, cookie values by `<session>` / `<csrftoken>`, and long base64 bodies
by `<N base64 chars>` in what *we* sent.

Lines in the transcript:

    A1 > POST /api/v1/messages        a request (headers worth seeing below it)
    A1 > {"client_id": ...}           its JSON body, byte for byte
    A1 < 201 Created                  the status (and headers worth seeing)
    A1 < {"client_id": ...}           the answer body, byte for byte
    A1 -> {"type":"send",...}         a WebSocket frame the client sent
    A1 <- {"type":"ack",...}          a WebSocket frame the server sent
    A1 xx closed by server: 4409      the server closed the socket

Each step states what the protocol promises; an answer that differs is listed in a
"Deviations" section at the end and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from natter_client.crypto import (
    IdentityKeyPair,
    SignedPreKey,
    SystemRandom,
    generate_one_time_prekeys,
    to_b64,
)

PASSWORD = "correct horse battery staple"
SHOWN_HEADERS = ("www-authenticate", "retry-after", "set-cookie")


def dumps(obj: Any) -> str:
    """The exact bytes we put on the wire: compact JSON, like the server's own."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fake_ciphertext() -> str:
    # The server never looks inside: random bytes stand in for real ciphertext.
    return b64(os.urandom(24))


def ct(device: str, envelope: str = "message") -> dict:
    return {"device": device, "envelope": envelope, "body": fake_ciphertext()}


def abbreviate(obj: Any) -> Any:
    """A copy of a request body with long strings shortened, for printing only."""
    if isinstance(obj, dict):
        return {k: abbreviate(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [abbreviate(v) for v in obj]
    if isinstance(obj, str) and len(obj) > 200:
        return f"<{len(obj)} base64 chars>" if obj[:200].isascii() else f"<{len(obj)} chars>"
    return obj


class Transcript:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.deviations: list[str] = []
        self.in_block = False
        self.step = ""

    def secret(self, value: str, label: str) -> None:
        if value:
            self.secrets[value] = label

    def redact(self, text: str) -> str:
        for value, label in self.secrets.items():
            text = text.replace(value, label)
        return text

    def section(self, title: str, note: str = "") -> None:
        self.close_block()
        self.step = title
        print(f"\n## {title}\n")
        if note:
            print(note.strip() + "\n")

    def note(self, text: str) -> None:
        self.close_block()
        print(text.strip() + "\n")

    def line(self, text: str) -> None:
        if not self.in_block:
            print("```text")
            self.in_block = True
        print(self.redact(text))

    def close_block(self) -> None:
        if self.in_block:
            print("```\n")
            self.in_block = False

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.deviations.append(f"{self.step}: {what}")
            self.line(f"!! DEVIATION: {what}")

    def finish(self) -> int:
        self.close_block()
        print("\n## Deviations\n")
        if not self.deviations:
            print("None: every answer was the one the protocol promises.")
            return 0
        for d in self.deviations:
            print(f"- {d}")
        return 1


class Party:
    """One device of one user: its label in the transcript, its token, its socket."""

    def __init__(self, t: Transcript, http: httpx.AsyncClient, label: str) -> None:
        self.t, self.http, self.label = t, http, label
        self.token: str | None = None
        self.user_id = self.device_id = ""
        self.ws: ClientConnection | None = None

    # --- REST -----------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict | None = None,
        auth: bool = True,
        token: str | None = None,
        headers: dict | None = None,
        expect: int | None = None,
        quiet_body: bool = False,
    ) -> httpx.Response:
        t, who = self.t, self.label
        url = path + ("?" + urlencode(params) if params else "")
        send_headers = dict(headers or {})
        bearer = token if token is not None else (self.token if auth else None)
        if bearer:
            send_headers["Authorization"] = f"Bearer {bearer}"
        content = None
        if body is not None:
            content = dumps(body).encode() if not isinstance(body, bytes) else body
            send_headers["Content-Type"] = "application/json"
        t.line(f"{who} > {method} {url}")
        for name, value in send_headers.items():
            if name != "Content-Type":
                t.line(f"{who} >   {name}: {value}")
        if body is not None:
            t.line(f"{who} > {dumps(abbreviate(body))}")
        started = time.monotonic()
        response = await self.http.request(method, url, content=content, headers=send_headers)
        # Cookies travel only where a step sets a Cookie header itself.
        self.http.cookies.clear()
        elapsed = time.monotonic() - started
        took = f"  ({elapsed:.1f} s)" if elapsed >= 0.5 else ""
        self.learn_secrets(response)
        t.line(f"{who} < {response.status_code} {response.reason_phrase}{took}")
        for name in SHOWN_HEADERS:
            for value in response.headers.get_list(name):
                if name == "set-cookie":
                    value = value.split(";", 1)[0]
                t.line(f"{who} <   {name}: {value}")
        if response.content and not quiet_body:
            t.line(f"{who} < {response.text}")
        if expect is not None:
            t.expect(
                response.status_code == expect,
                f"{method} {url} answered {response.status_code}, expected {expect}",
            )
        return response

    def learn_secrets(self, response: httpx.Response) -> None:
        """Register tokens and cookie values of an answer before it is printed."""
        for name, value in response.cookies.items():
            self.t.secret(value, "<session>" if name == "sessionid" else f"<{name}>")
        if response.headers.get("content-type", "").startswith("application/json"):
            data = response.json()
            if isinstance(data, dict) and isinstance(data.get("token"), str):
                self.t.secret(data["token"], "<token>")

    async def login(self, username: str, device_name: str, **extra) -> dict:
        body = {"username": username, "password": PASSWORD, "device_name": device_name, **extra}
        response = await self.call("POST", "/api/v1/auth/login", body, auth=False, expect=201)
        data = response.json()
        self.token = data["token"]
        self.t.secret(self.token, "<token>")
        self.user_id, self.device_id = data["user"]["id"], data["device"]["id"]
        await self.publish_keys()
        return data

    async def publish_keys(self) -> None:
        """Publish real keys, as every client does at once: until then nobody sends to us."""
        rng = SystemRandom()
        identity = IdentityKeyPair.generate(rng)
        spk = SignedPreKey.generate(identity, 1, rng)
        body = {
            "identity_key": to_b64(identity.public),
            "signed_prekey": {
                "key_id": 1,
                "public_key": to_b64(spk.public),
                "signature": to_b64(spk.signature),
            },
            "one_time_prekeys": [
                {"key_id": k.key_id, "public_key": to_b64(k.public)}
                for k in generate_one_time_prekeys(1, 3, rng)
            ],
        }
        await self.call("PUT", "/api/v1/keys", body, expect=200)

    # --- WebSocket --------------------------------------------------------------------

    async def open(
        self,
        ws_url: str,
        *,
        headers: dict | None = None,
        origin: str | None = None,
        bearer: bool = True,
        describe: str = "",
    ) -> ClientConnection:
        send_headers = dict(headers or {})
        if bearer and self.token:
            send_headers["Authorization"] = f"Bearer {self.token}"
        self.t.line(f"{self.label} -> (connect) GET /ws/v1/ {describe}".rstrip())
        for name, value in send_headers.items():
            self.t.line(f"{self.label} ->   {name}: {value}")
        if origin:
            self.t.line(f"{self.label} ->   Origin: {origin}")
        self.ws = await connect(
            ws_url,
            additional_headers=send_headers,
            origin=origin,  # type: ignore[arg-type]
            ping_interval=None,
            max_size=None,
            open_timeout=10,
        )
        return self.ws

    async def send(self, frame: Any, *, raw: str | bytes | None = None, shown: str = "") -> None:
        assert self.ws is not None
        if raw is None:
            raw = dumps(frame)
            shown = shown or dumps(abbreviate(frame))
        self.t.line(f"{self.label} -> {shown or raw}")
        await self.ws.send(raw)

    async def recv(self, timeout: float = 5.0) -> dict | None:
        """The next frame from the server, printed; None after `timeout` seconds."""
        assert self.ws is not None
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return None
        self.t.line(f"{self.label} <- {text}")
        return json.loads(text)

    async def until(self, predicate, timeout: float = 5.0, what: str = "") -> list[dict]:
        """Frames up to and including the first one `predicate` accepts."""
        frames: list[dict] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = await self.recv(left)
            if frame is None:
                break
            frames.append(frame)
            if predicate(frame):
                return frames
        self.t.expect(False, f"{self.label} did not get {what or 'the expected frame'}")
        return frames

    async def idle(self, seconds: float = 0.6) -> list[dict]:
        """Every frame that arrives within `seconds`."""
        frames = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = await self.recv(left)
            if frame is None:
                break
            frames.append(frame)
        return frames

    async def closed(self, expect: int | None, timeout: float = 5.0) -> int | None:
        """Read (and print) frames until the server closes; return its close code."""
        assert self.ws is not None
        code = None
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                text = await asyncio.wait_for(self.ws.recv(), left)
                self.t.line(f"{self.label} <- {text}")
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is None:
                # No close frame: the TCP connection was dropped (1006, abnormal closure).
                code = 1006
                self.t.line(f"{self.label} xx connection dropped, no close frame (1006)")
            else:
                code = rcvd.code
                reason = f" {rcvd.reason!r}" if rcvd.reason else ""
                self.t.line(f"{self.label} xx closed by server: {code}{reason}")
        except TimeoutError:
            self.t.line(f"{self.label} .. still open after {timeout:.0f} s")
        if expect is not None:
            self.t.expect(code == expect, f"{self.label} close code {code}, expected {expect}")
        self.ws = None
        return code

    async def ack_all(self, frames: list[dict]) -> None:
        cursors = [f["cursor"] for f in frames if f.get("type") == "event"]
        if cursors:
            await self.send({"type": "ack", "cursor": max(cursors)})

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None


def is_type(name: str, **fields):
    def predicate(frame: dict) -> bool:
        if frame.get("type") != name:
            return False
        return all(frame.get(k) == v for k, v in fields.items())

    return predicate


def is_event(event_type: str, **fields):
    def predicate(frame: dict) -> bool:
        if frame.get("type") != "event" or frame["event"].get("type") != event_type:
            return False
        return all(frame["event"].get(k) == v for k, v in fields.items())

    return predicate


async def run(base: str) -> int:
    t = Transcript()
    parsed = urlparse(base)
    ws_url = ("wss" if parsed.scheme == "https" else "ws") + f"://{parsed.netloc}/ws/v1/"
    origin_ok = f"{parsed.scheme}://{parsed.netloc}"
    tag = secrets.token_hex(3)
    alice, bob, carol = f"alice_{tag}", f"bob_{tag}", f"carol_{tag}"

    async with httpx.AsyncClient(base_url=base, timeout=40) as http:
        A1, A2 = Party(t, http, "A1"), Party(t, http, "A2")
        B1, B2 = Party(t, http, "B1"), Party(t, http, "B2")
        C1, C2 = Party(t, http, "C1"), Party(t, http, "C2")
        anon = Party(t, http, "--")

        print("# Natter protocol transcript\n")
        print(f"Server: `{base}`. Users `{alice}`, `{bob}`, `{carol}`. Devices: A1 = alice's")
        print("laptop, A2 = alice's phone, B1 = bob's phone (WebSocket), B2 = bob's CLI")
        print("(long-poll), C1 = carol's CLI, C2 = carol's browser (session cookie).")
        print("Ciphertext bodies are random bytes: the server never looks inside.")

        # --- §1 accounts ----------------------------------------------------------------
        t.section(
            "1. Register", "`POST /api/v1/auth/register` answers 201 with the public profile."
        )
        users = {}
        for name, display in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
            r = await anon.call(
                "POST",
                "/api/v1/auth/register",
                {"username": name, "password": PASSWORD, "display_name": display},
                expect=201,
            )
            users[name] = r.json()["user"]["id"]
        t.note("A handle is unique regardless of case (409 `conflict`); weak passwords are 400.")
        await anon.call(
            "POST",
            "/api/v1/auth/register",
            {"username": alice.upper(), "password": PASSWORD},
            expect=409,
        )
        await anon.call(
            "POST",
            "/api/v1/auth/register",
            {"username": f"dave_{tag}", "password": "123"},
            expect=400,
        )

        t.section(
            "2. Log in: one device per login",
            "Every login creates a device with its own token (shown once) and inbox.",
        )
        await A1.login(alice, "laptop")
        await A2.login(alice, "phone")
        await B1.login(bob, "phone")
        await C1.login(carol, "cli")
        await anon.call(
            "POST",
            "/api/v1/auth/login",
            {"username": alice, "password": "wrong", "device_name": "x"},
            expect=401,
        )

        t.section("3. Me")
        await A1.call("GET", "/api/v1/me", expect=200)
        await A1.call("PATCH", "/api/v1/me", {"last_seen_visibility": "contacts"}, expect=200)

        t.section("4. Look a user up by exact handle")
        await A1.call("GET", "/api/v1/users", params={"handle": bob}, expect=200)
        await A1.call("GET", "/api/v1/users", params={"handle": bob[:-1]}, expect=404)

        t.section("5. Devices of a user")
        await A1.call("GET", f"/api/v1/users/{B1.user_id}/devices", expect=200)
        await A1.call("GET", f"/api/v1/users/{A1.user_id}/devices", expect=200)

        # --- §3 direct conversations ----------------------------------------------------
        t.section(
            "6. Open the direct conversation",
            "201 when it is created, 200 with the same conversation afterwards.",
        )
        r = await A1.call(
            "POST", "/api/v1/conversations/direct", {"user_id": B1.user_id}, expect=201
        )
        conv = r.json()["id"]
        r = await A1.call(
            "POST", "/api/v1/conversations/direct", {"user_id": B1.user_id}, expect=200
        )
        t.expect(r.json()["id"] == conv, "the second open gave another conversation")
        r = await C1.call(
            "POST", "/api/v1/conversations/direct", {"user_id": B1.user_id}, expect=201
        )
        conv_bc = r.json()["id"]
        await A1.call("POST", "/api/v1/conversations/direct", {"user_id": A1.user_id}, expect=400)

        t.section("7. List conversations")
        await A1.call("GET", "/api/v1/conversations", expect=200)

        # --- §5 WebSocket -----------------------------------------------------------------
        t.section(
            "8. WebSocket: hello, the waiting inbox, drained",
            "A1's inbox holds a `device` event: A2 logged in after A1.",
        )
        await A1.open(ws_url)
        frames = await A1.until(is_type("drained"), what="hello ... drained")
        t.expect(frames and frames[0].get("type") == "hello", "the first frame is not hello")
        cursor = max(f["cursor"] for f in frames if f["type"] == "event")
        await A1.send({"type": "ack", "id": "a1", "cursor": cursor})
        await A1.until(is_type("ok", ref="a1"), what="ok for the ack")

        t.section(
            "9. Send a message over the WebSocket",
            "One ciphertext for every active device of bob and for alice's other devices.",
        )
        client_id = str(uuid.uuid4())
        send_frame = {
            "type": "send",
            "id": "s1",
            "client_id": client_id,
            "conversation": conv,
            "kind": "text",
            "ciphertexts": [ct(B1.device_id, "prekey"), ct(A2.device_id, "prekey")],
        }
        await A1.send(send_frame)
        acks = await A1.until(is_type("ack", ref="s1"), what="the ack")
        first_ack = acks[-1] if acks else {}

        t.section(
            "10. The recipients connect: offline queue, then drained",
            "B1 and A2 were offline when the message was sent.",
        )
        await B1.open(ws_url)
        b_frames = await B1.until(is_type("drained"), what="hello ... drained")
        await A2.open(ws_url)
        a2_frames = await A2.until(is_type("drained"), what="hello ... drained")

        t.section(
            "11. Acknowledge: delivered receipt to the sender",
            "B1 acks its cursor; the sender's devices get a `receipt` `delivered` event.",
        )
        b_cursor = max(f["cursor"] for f in b_frames if f["type"] == "event")
        await B1.send({"type": "ack", "id": "b1", "cursor": b_cursor})
        await B1.until(is_type("ok", ref="b1"), what="ok for the ack")
        got = await A1.until(is_event("receipt", status="delivered"), what="receipt delivered")
        await A1.ack_all(got)
        got = await A2.until(is_event("receipt", status="delivered"), what="receipt delivered")
        await A2.ack_all(a2_frames + got)

        t.section("12. Read: blue checks")
        await B1.send({"type": "read", "id": "r1", "conversation": conv, "up_to_seq": 1})
        await B1.until(is_type("ok", ref="r1"), what="ok for the read")
        got = await A1.until(is_event("receipt", status="read"), what="receipt read")
        await A1.ack_all(got)
        got = await A2.until(is_event("receipt", status="read"), what="receipt read")
        await A2.ack_all(got)

        t.section("13. Heartbeat", "`ping` with and without an id; unknown fields are ignored.")
        await A1.send({"type": "ping", "id": "p1"})
        await A1.until(is_type("pong"), what="pong")
        await A1.send({"type": "ping"})
        await A1.until(is_type("pong"), what="pong")
        await A1.send({"type": "ping", "id": 7, "x_future_field": {"anything": True}})
        await A1.until(is_type("pong"), what="pong")

        t.section(
            "14. Resend with the same client_id",
            "Same ack (same message_id and seq); nothing is stored or pushed again.",
        )
        await A1.send({**send_frame, "id": "s1-again"})
        acks = await A1.until(is_type("ack", ref="s1-again"), what="the ack")
        again = acks[-1] if acks else {}
        t.expect(
            {k: v for k, v in again.items() if k != "ref"}
            == {k: v for k, v in first_ack.items() if k != "ref"},
            "the duplicate's ack differs from the original",
        )
        await B1.send({"type": "ping", "id": "check"})
        got = await B1.until(is_type("pong"), what="pong")
        t.expect(len(got) == 1, "B1 got a frame before its pong after a duplicate send")

        t.section(
            "15. Errors on the WebSocket",
            "Every bad frame gets an `error` frame with `ref` = its id; the socket stays open.",
        )
        await A1.send(None, raw="this is not json")
        await A1.until(is_type("error", code="bad_request"), what="bad_request")
        await A1.send(None, raw=b"\x00\x01 binary", shown="<binary frame: 9 bytes>")
        await A1.until(is_type("error", code="bad_request"), what="bad_request")
        await A1.send(None, raw="[1,2,3]")
        await A1.until(is_type("error", code="bad_request"), what="bad_request")
        await A1.send({"type": "subscribe", "id": "e1"})
        await A1.until(is_type("error", code="unknown_type"), what="unknown_type")

        def bad_send(frame_id: str, **overrides) -> dict:
            return {
                "type": "send",
                "id": frame_id,
                "client_id": str(uuid.uuid4()),
                "conversation": conv,
                "kind": "text",
                "ciphertexts": [ct(B1.device_id), ct(A2.device_id)],
                **overrides,
            }

        t.note("`device_mismatch`, missing: A2 (alice's own other device) is left out.")
        await A1.send(bad_send("e2", ciphertexts=[ct(B1.device_id)]))
        await A1.until(is_type("error", code="device_mismatch"), what="device_mismatch")
        t.note("`device_mismatch`, extra: A1 is the sending device itself, not a recipient.")
        await A1.send(
            bad_send("e3", ciphertexts=[ct(B1.device_id), ct(A2.device_id), ct(A1.device_id)])
        )
        await A1.until(is_type("error", code="device_mismatch"), what="device_mismatch")
        t.note("`too_large`: one ciphertext of 64 KiB + 1 byte.")
        big = {"device": B1.device_id, "envelope": "message", "body": b64(os.urandom(65537))}
        await A1.send(bad_send("e4", ciphertexts=[big, ct(A2.device_id)]))
        await A1.until(is_type("error", code="too_large"), what="too_large")
        t.note("`not_member`: the conversation of bob and carol.")
        await A1.send(bad_send("e5", conversation=conv_bc))
        await A1.until(is_type("error", code="not_member"), what="not_member")
        t.note("`bad_request`: a client_id that is not a UUID; a cursor that is a string.")
        await A1.send(bad_send("e6", client_id="msg-1"))
        await A1.until(is_type("error", code="bad_request"), what="bad_request")
        await A1.send({"type": "ack", "id": "e7", "cursor": "5"})
        await A1.until(is_type("error", code="bad_request"), what="bad_request")
        await A1.send({"type": "ping", "id": "still-open"})
        await A1.until(is_type("pong"), what="pong: the socket stays open")

        # --- REST sending -------------------------------------------------------------------
        t.section(
            "16. Sending over REST",
            "`POST /api/v1/messages` takes the same fields as the `send` frame.",
        )
        rest_id = str(uuid.uuid4())
        rest_body = {
            "client_id": rest_id,
            "conversation": conv,
            "kind": "text",
            "ciphertexts": [ct(B1.device_id), ct(A2.device_id)],
            "reply_to_seq": 1,
        }
        r1 = await A1.call("POST", "/api/v1/messages", rest_body, expect=201)
        got = await B1.until(is_event("message"), what="the message event")
        await B1.ack_all(got)
        got = await A2.until(is_event("message"), what="the message event")
        await A2.ack_all(got)
        t.note("The same client_id again: 200 and the original ack.")
        r2 = await A1.call("POST", "/api/v1/messages", rest_body, expect=200)
        t.expect(r1.json() == r2.json(), "the duplicate's body differs from the original")
        t.note("Errors: 409 `device_mismatch`, 413 `too_large`, 404 `not_member`, 400, 401.")
        await A1.call(
            "POST",
            "/api/v1/messages",
            {**rest_body, "client_id": str(uuid.uuid4()), "ciphertexts": [ct(A2.device_id)]},
            expect=409,
        )
        await A1.call(
            "POST",
            "/api/v1/messages",
            {**rest_body, "client_id": str(uuid.uuid4()), "ciphertexts": [big, ct(A2.device_id)]},
            expect=413,
        )
        await A1.call(
            "POST",
            "/api/v1/messages",
            {**rest_body, "client_id": str(uuid.uuid4()), "conversation": conv_bc},
            expect=404,
        )
        await A1.call(
            "POST",
            "/api/v1/messages",
            {**rest_body, "client_id": "msg-1", "kind": "sticker"},
            expect=400,
        )
        await A1.call("POST", "/api/v1/messages", rest_body, auth=False, expect=401)
        await A1.call("POST", "/api/v1/messages", rest_body, token="not-a-token", expect=401)

        # --- a new device: device events and the device_mismatch loop --------------------
        t.section(
            "17. A new device of bob, and the device_mismatch loop",
            "B2 logs in: alice's devices and bob's other device get a `device` event. "
            "A1 sends with its old device set, learns B2 from `missing`, fetches bob's "
            "devices (a real client would claim B2's key bundle) and resends with the "
            "same client_id.",
        )
        await B2.login(bob, "cli")
        got = await A1.until(is_event("device", action="added"), what="device added")
        await A1.ack_all(got)
        got = await B1.until(is_event("device", action="added"), what="device added")
        await B1.ack_all(got)
        got = await A2.until(is_event("device", action="added"), what="device added")
        await A2.ack_all(got)
        loop_id = str(uuid.uuid4())
        loop_body = {
            "client_id": loop_id,
            "conversation": conv,
            "kind": "text",
            "ciphertexts": [ct(B1.device_id), ct(A2.device_id)],
        }
        await A1.call("POST", "/api/v1/messages", loop_body, expect=409)
        await A1.call("GET", f"/api/v1/users/{B1.user_id}/devices", expect=200)
        loop_body["ciphertexts"].append(ct(B2.device_id, "prekey"))
        await A1.call("POST", "/api/v1/messages", loop_body, expect=201)

        # --- long-poll --------------------------------------------------------------------
        t.section(
            "18. Long-poll: pages, has_more, cursor acks",
            "Two more messages, so B2 has three waiting; it reads them two at a time.",
        )
        last_seq = 0
        for _ in range(2):
            r = await A1.call(
                "POST",
                "/api/v1/messages",
                {
                    "client_id": str(uuid.uuid4()),
                    "conversation": conv,
                    "kind": "text",
                    "ciphertexts": [ct(B1.device_id), ct(A2.device_id), ct(B2.device_id)],
                },
                expect=201,
            )
            last_seq = r.json()["seq"]
        r = await B2.call(
            "GET", "/api/v1/events", params={"cursor": 0, "limit": 2, "timeout": 0}, expect=200
        )
        page = r.json()
        t.expect(page["has_more"] is True and len(page["events"]) == 2, "a full page, has_more")
        r = await B2.call(
            "GET",
            "/api/v1/events",
            params={"cursor": page["next_cursor"], "limit": 2, "timeout": 0},
            expect=200,
        )
        page = r.json()
        t.expect(page["has_more"] is False, "the last page has has_more false")
        t.note("Nothing waiting: the poll is held `timeout` seconds, then answers empty.")
        await B2.call(
            "GET",
            "/api/v1/events",
            params={"cursor": page["next_cursor"], "timeout": 2},
            expect=200,
        )
        t.note("A held poll answers as soon as an event arrives (A1 sends ~1 s later).")
        poll = asyncio.create_task(
            B2.http.get(
                "/api/v1/events",
                params={"cursor": page["next_cursor"], "timeout": 25},
                headers={"Authorization": f"Bearer {B2.token}"},
            )
        )
        t.line(f"B2 > GET /api/v1/events?cursor={page['next_cursor']}&timeout=25")
        t.line("B2 >   Authorization: Bearer <token>")
        started = time.monotonic()
        await asyncio.sleep(1.0)
        r = await A1.call(
            "POST",
            "/api/v1/messages",
            {
                "client_id": str(uuid.uuid4()),
                "conversation": conv,
                "kind": "text",
                "ciphertexts": [ct(B1.device_id), ct(A2.device_id), ct(B2.device_id)],
            },
            expect=201,
        )
        last_seq = r.json()["seq"]
        held = await poll
        t.line(
            f"B2 < {held.status_code} {held.reason_phrase}  ({time.monotonic() - started:.1f} s)"
        )
        t.line(f"B2 < {held.text}")
        t.expect(held.status_code == 200 and held.json()["events"], "the held poll got the event")
        t.expect(time.monotonic() - started < 10, "the held poll answered at once")
        last_cursor = held.json()["next_cursor"]
        t.note("An explicit ack, without waiting for more events:")
        await B2.call("POST", "/api/v1/events/ack", {"cursor": last_cursor}, expect=200)
        t.note("Bounds: timeout ≤ 30, limit ≤ 500; no credentials → 401.")
        await B2.call("GET", "/api/v1/events", params={"cursor": 0, "timeout": 31}, expect=400)
        await B2.call("GET", "/api/v1/events", params={"limit": 501, "timeout": 0}, expect=400)
        await B2.call("GET", "/api/v1/events", params={"timeout": 0}, auth=False, expect=401)

        t.section(
            "19. Delivered receipts for the REST messages; read over REST",
            "B1 pushes and acks the same messages on its socket; A1 hears `delivered` "
            "once per batch, then `read` after `POST /api/v1/read`.",
        )
        got = await B1.idle(0.8)
        await B1.ack_all(got)
        got = await A1.until(
            is_event("receipt", status="delivered", up_to_seq=last_seq), what="delivered"
        )
        await A1.ack_all(got)
        await B2.call(
            "POST", "/api/v1/read", {"conversation": conv, "up_to_seq": last_seq}, expect=200
        )
        # Left unacknowledged on purpose: step 20 shows it pushed again.
        await A1.until(is_event("receipt", status="read", up_to_seq=last_seq), what="read")
        await A1.send({"type": "ping", "id": "p-sync"})
        await A1.until(is_type("pong"), what="pong")
        await A2.ack_all(await A2.idle(0.8))

        t.section(
            "20. One socket per device: 4409",
            "A second socket with A1's token; the first is closed with 4409. The read "
            "receipt A1 never acked is pushed again on the new socket (at-least-once).",
        )
        first_socket = A1.ws
        A1b = Party(t, http, "A1'")
        A1b.token, A1b.user_id, A1b.device_id = A1.token, A1.user_id, A1.device_id
        await A1b.open(ws_url)
        await A1b.until(is_type("drained"), what="hello ... drained")
        A1.ws = first_socket
        await A1.closed(expect=4409)

        t.section(
            "21. Log out: 4401 on that device's socket",
            "A2 logs out; its socket is closed with 4401, its token stops working and "
            "the other devices get a `device` `removed` event.",
        )
        await A2.call("POST", "/api/v1/auth/logout", expect=204)
        await A2.closed(expect=4401)
        got = await A1b.until(is_event("device", action="removed"), what="device removed")
        await A1b.ack_all(got)
        await A2.call("GET", "/api/v1/me", expect=401)

        t.section(
            "22. A held long-poll of a device that logs out",
            "B2 first takes what is waiting (A2's `device` `removed`), then holds a poll "
            "and logs out with the same token: the held poll answers 401 at once.",
        )
        r = await B2.call(
            "GET", "/api/v1/events", params={"cursor": last_cursor, "timeout": 0}, expect=200
        )
        last_cursor = r.json()["next_cursor"]
        poll = asyncio.create_task(
            B2.http.get(
                "/api/v1/events",
                params={"cursor": last_cursor, "timeout": 25},
                headers={"Authorization": f"Bearer {B2.token}"},
            )
        )
        t.line(f"B2 > GET /api/v1/events?cursor={last_cursor}&timeout=25   (held)")
        await asyncio.sleep(1.0)
        await B2.call("POST", "/api/v1/auth/logout", expect=204)
        held = await poll
        t.line(f"B2 < {held.status_code} {held.reason_phrase}   (the held poll)")
        t.line(f"B2 < {held.text}")
        t.expect(held.status_code == 401, "the held poll of a revoked device answered 401")
        await B1.ack_all(await B1.idle(0.5))

        # --- browser sessions ---------------------------------------------------------------
        t.section(
            "23. Browser session bound to a device",
            '`"session": true` also logs the browser\'s session in, bound to the new device. '
            "Cookie-authenticated writes need the CSRF token; the long-poll needs "
            "`X-Natter-Session: 1`; the WebSocket needs an allowed Origin.",
        )
        jar: dict[str, str] = {}
        r = await C2.call(
            "POST",
            "/api/v1/auth/login",
            {"username": carol, "password": PASSWORD, "device_name": "browser", "session": True},
            auth=False,
            expect=201,
        )
        C2.device_id = r.json()["device"]["id"]
        for name, value in r.cookies.items():
            jar[name] = value
        cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
        csrf = jar.get("csrftoken", "")
        await C2.call("GET", "/api/v1/me", headers={"Cookie": cookie}, expect=200)
        await C2.call(
            "POST",
            "/api/v1/conversations/direct",
            {"user_id": B1.user_id},
            headers={"Cookie": cookie},
            expect=403,
        )
        await C2.call(
            "POST",
            "/api/v1/conversations/direct",
            {"user_id": B1.user_id},
            headers={"Cookie": cookie, "X-CSRFToken": csrf},
            expect=200,
        )
        await C2.call(
            "GET", "/api/v1/events", params={"timeout": 0}, headers={"Cookie": cookie}, expect=401
        )
        await C2.call(
            "GET",
            "/api/v1/events",
            params={"timeout": 0},
            headers={"Cookie": cookie, "X-Natter-Session": "1"},
            expect=200,
        )
        await C2.open(ws_url, headers={"Cookie": cookie}, origin=origin_ok, bearer=False)
        frames = await C2.until(is_type("drained"), what="hello ... drained")
        t.expect(bool(frames) and frames[0]["type"] == "hello", "cookie socket got hello")
        await C2.close()
        await C2.open(
            ws_url, headers={"Cookie": cookie}, origin="https://evil.example", bearer=False
        )
        await C2.closed(expect=4401)
        await C2.open(ws_url, headers={"Cookie": cookie}, bearer=False, describe="(no Origin)")
        await C2.closed(expect=4401)

        t.section("24. Unauthenticated sockets: 4401 before any frame")
        await anon.open(ws_url)
        await anon.closed(expect=4401)
        await anon.open(ws_url, headers={"Authorization": "Bearer not-a-token"})
        await anon.closed(expect=4401)

        t.section(
            "25. rate_limited",
            "Logins are limited to 20 a minute per username; the 21st attempt:",
        )
        ghost = f"nobody_{tag}"
        for _ in range(20):
            await http.post(
                "/api/v1/auth/login", json={"username": ghost, "password": "x", "device_name": "x"}
            )
        await anon.call(
            "POST",
            "/api/v1/auth/login",
            {"username": ghost, "password": "x", "device_name": "x"},
            expect=429,
        )

        t.section(
            "26. Frame size limits",
            "A frame over FRAME_MAX_BYTES (256 KiB) gets `too_large` and the socket stays "
            "open. A message over 1 MiB never reaches Natter: daphne (autobahn) drops the "
            "TCP connection without a close frame, which clients see as 1006.",
        )
        await C1.open(ws_url)
        await C1.until(is_type("drained"), what="hello ... drained")
        pad = "x" * (300 * 1024)
        await C1.send(
            None,
            raw=dumps({"type": "ping", "id": "big", "pad": pad}),
            shown=f'{{"type":"ping","id":"big","pad":"<{len(pad)} x>"}}',
        )
        await C1.until(is_type("error", code="too_large"), what="too_large")
        await C1.send({"type": "ping", "id": "after"})
        await C1.until(is_type("pong"), what="pong")
        huge = "x" * (1024 * 1024 + 1)
        await C1.send(
            None,
            raw=dumps({"type": "ping", "pad": huge}),
            shown=f'{{"type":"ping","pad":"<{len(huge)} x>"}}',
        )
        await C1.closed(expect=1006)

        t.section(
            "27. Repeated abuse: 4429",
            "More than SOCKET_ABUSE_ERRORS (30) error frames within 10 s close the socket. "
            "Frames 2..30 are elided.",
        )
        await C1.open(ws_url)
        await C1.until(is_type("drained"), what="hello ... drained")
        await C1.send(None, raw="junk 1")
        await C1.recv()
        t.line("       ... 29 more junk frames, 29 more error frames ...")
        assert C1.ws is not None
        for i in range(2, 31):
            await C1.ws.send(f"junk {i}")
            await asyncio.wait_for(C1.ws.recv(), 5)
        await C1.send(None, raw="junk 31")
        await C1.closed(expect=4429)

        t.section("28. The OpenAPI schema")
        r = await http.get("/api/schema/")
        t.line("-- > GET /api/schema/")
        t.line(
            f"-- < {r.status_code} {r.reason_phrase}  "
            f"content-type: {r.headers.get('content-type')}  ({len(r.content)} bytes)"
        )
        t.expect(r.status_code == 200, "the schema is served")

        for party in (A1b, B1, C1, C2):
            await party.close()
    return t.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8123")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.url.rstrip("/"))))


if __name__ == "__main__":
    main()
