"""Traffic for the fault suite: people, senders that never give up, and the tally.

Every message a scenario sends is one logical message (its client_id), sent until
the server acks it, with the same client_id on every retry as a real client does.
Every recipient device records what its connection hands over; the tally then says:

- attempted / acked: logical messages tried, and acked by the server;
- delivered: (device, message) pairs that arrived, out of acked × recipients;
- lost: acked pairs that never arrived;
- duplicated: pairs that arrived under more than one message_id, i.e. stored twice
  by the server; de-duplicating by message_id cannot hide those;
- redelivered: message events a device's transport received again after it had
  them once (at-least-once at work; the SDK and the app drop them by message_id);
- p50 / p99: first send attempt → arrival at the recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from natter_client import ApiError, ConnectionClosed, NatterClient, NatterError
from natter_client.wire import new_client_id

from .harness import Row

PASSWORD = "a long pass phrase 42"


async def person(url: str, name: str, *, keys: bool = True, timeout: float = 10) -> NatterClient:
    """A new user with one logged-in device (with published keys unless `keys=False`)."""
    client = NatterClient(url, timeout=timeout)
    handle = f"{name}_{uuid.uuid4().hex[:8]}"
    await client.register(handle, PASSWORD, name)
    await client.login(handle, PASSWORD, device_name=name, publish_keys=keys)
    return client


async def crowd(url: str, n: int, *, parallel: int = 16) -> list[NatterClient]:
    """`n` people with one device each, without keys (group traffic needs none)."""
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> NatterClient:
        async with gate:
            return await person(url, f"c{i}", keys=False)

    return await asyncio.gather(*(one(i) for i in range(n)))


def same_device(client: NatterClient, url: str | None = None) -> NatterClient:
    """Another NatterClient for the same device (same token), e.g. a second socket."""
    other = NatterClient(url or client.base_url, token=client.token)
    other.user, other.device = client.user, client.device
    return other


@dataclass
class Sent:
    client_id: str
    recipients: frozenset[str]
    t0: float
    attempts: int = 0
    message_id: str | None = None
    acked_at: float | None = None
    errors: list[str] = field(default_factory=list)


def retryable(exc: ApiError) -> bool:
    return exc.code == "unavailable" or exc.status in (502, 503, 504)


class Tally:
    """What was sent and what arrived where; see the module docstring."""

    def __init__(self, scenario: str):
        self.scenario = scenario
        self.sent: dict[str, Sent] = {}
        # device -> client_id -> {(message_id, arrival time)}
        self.arrived: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        self.raw_seen: dict[str, set[str]] = defaultdict(set)
        self.redelivered = 0
        self.stray = 0  # arrivals of messages this tally did not send to that device
        self._changed = asyncio.Event()

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self,
        send: Callable[[str], Awaitable],
        recipients,
        *,
        on_error: Callable[[Sent, BaseException], None] | None = None,
        give_up_s: float = 90,
    ) -> Sent:
        """Send one logical message until acked; `send(client_id)` does one attempt."""
        s = Sent(new_client_id(), frozenset(recipients), time.monotonic())
        self.sent[s.client_id] = s
        deadline = s.t0 + give_up_s
        while True:
            s.attempts += 1
            try:
                ack = await send(s.client_id)
            except ApiError as exc:
                if not retryable(exc):
                    raise
                s.errors.append(exc.code)
                if on_error:
                    on_error(s, exc)
                delay = float(exc.details.get("retry_after") or 1)
            except (TimeoutError, httpx.TransportError, ConnectionClosed, OSError) as exc:
                s.errors.append(type(exc).__name__)
                if on_error:
                    on_error(s, exc)
                delay = 0.2
            else:
                assert ack.client_id == s.client_id
                s.message_id, s.acked_at = ack.message_id, time.monotonic()
                self._changed.set()
                return s
            if time.monotonic() + delay > deadline:
                raise AssertionError(f"{s.client_id} not acked in {give_up_s}s: {s.errors[-5:]}")
            await asyncio.sleep(delay)

    # -- receiving ----------------------------------------------------------------------------

    def watch(self, conn, device_id: str) -> asyncio.Task:
        """Count every message event `conn` receives for `device_id`, and consume it."""
        self.watch_raw(conn, device_id)
        return asyncio.create_task(self.consume(conn, device_id))

    def watch_raw(self, conn, device_id: str) -> None:
        """Count the message events `conn`'s transport receives, before any de-duplication."""
        original = conn._deliver

        def deliver(cursor, event):
            if isinstance(event, dict) and event.get("type") == "message":
                self.on_raw(device_id, event)
            return original(cursor, event)

        conn._deliver = deliver  # instrumentation of the SDK's one entry for inbox events

    async def consume(self, conn, device_id: str) -> None:
        with contextlib.suppress(ConnectionClosed, NatterError, asyncio.CancelledError):
            while True:
                event = await conn.next_event(type="message")
                self.on_app(device_id, event)

    def on_raw(self, device_id: str, event: dict) -> None:
        message_id = str(event.get("message_id"))
        if message_id in self.raw_seen[device_id]:
            self.redelivered += 1
        self.raw_seen[device_id].add(message_id)

    def on_app(self, device_id: str, event) -> None:
        """A message handed to the application (after the SDK's de-duplication)."""
        client_id = str(event.get("client_id"))
        s = self.sent.get(client_id)
        if s is None or device_id not in s.recipients:
            self.stray += 1
            return
        seen = self.arrived[device_id].setdefault(client_id, {})
        seen.setdefault(str(event["message_id"]), time.monotonic())
        self._changed.set()

    # -- results ------------------------------------------------------------------------------

    def expected(self) -> set[tuple[str, str]]:
        return {(d, s.client_id) for s in self.sent.values() if s.message_id for d in s.recipients}

    def delivered_pairs(self) -> set[tuple[str, str]]:
        return {(d, cid) for d, by in self.arrived.items() for cid in by}

    def missing(self) -> set[tuple[str, str]]:
        return self.expected() - self.delivered_pairs()

    def duplicated(self) -> int:
        return sum(len(ids) - 1 for by in self.arrived.values() for ids in by.values())

    def latencies_ms(self) -> list[float]:
        out = []
        for by in self.arrived.values():
            for cid, ids in by.items():
                out.append((min(ids.values()) - self.sent[cid].t0) * 1000)
        return out

    def caught_up(self, since: float, *, sent_before: float | None = None) -> float:
        """Seconds after `since` until every message first tried before `sent_before`
        (default: `since`) had arrived everywhere."""
        sent_before = since if sent_before is None else sent_before
        times = [
            min(ids.values())
            for by in self.arrived.values()
            for cid, ids in by.items()
            if self.sent[cid].t0 <= sent_before
        ]
        return max(0.0, max(times, default=since) - since)

    def last_arrival(self) -> float | None:
        times = [t for by in self.arrived.values() for ids in by.values() for t in ids.values()]
        return max(times) if times else None

    async def wait_all(self, timeout: float) -> float:
        """Wait until every acked message reached every recipient; return when (monotonic)."""
        deadline = time.monotonic() + timeout
        while self.missing():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return self.last_arrival() or time.monotonic()

    async def wait_arrivals(self, n: int, timeout: float) -> None:
        """Wait until `n` (device, message) pairs arrived, acked or not."""
        deadline = time.monotonic() + timeout
        while len(self.delivered_pairs()) < n and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    def row(self, recovery_s: float | None) -> Row:
        lat = sorted(self.latencies_ms())

        def pct(p: float) -> float | None:
            if not lat:
                return None
            if len(lat) == 1:
                return lat[0]
            return statistics.quantiles(lat, n=100, method="inclusive")[int(p) - 1]

        delivered = len(self.delivered_pairs() & self.expected())
        return Row(
            scenario=self.scenario,
            attempted=len(self.sent),
            acked=sum(1 for s in self.sent.values() if s.message_id),
            delivered=delivered,
            lost=len(self.missing()),
            duplicated=self.duplicated(),
            redelivered=self.redelivered,
            p50_ms=pct(50),
            p99_ms=pct(99),
            recovery_s=recovery_s,
        )


async def until(predicate: Callable[[], object], timeout: float, what: str, every_s=0.01):
    """Wait on the loop until `predicate()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every_s)


async def paced(n: int, every_s: float, make: Callable[[int], Awaitable]) -> list:
    """Start `make(i)` every `every_s` seconds, n times; gather the results."""
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(make(i)))
        await asyncio.sleep(every_s)
    return await asyncio.gather(*tasks)


async def close_all(*things) -> None:
    """aclose() connections and clients, ignoring what already failed."""
    for thing in things:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(thing.aclose(), 5)
