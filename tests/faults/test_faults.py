"""The fault suite (issue 9): real processes, real faults, nothing lost, nothing doubled.

Each scenario drives the private stack (tests/faults/harness.py: its own Postgres,
Redis, daphne, Celery worker and beat) with the SDK, injects one fault, and prints
one row of the results table: attempted / acked / delivered / lost / duplicated /
redelivered, p50 / p99 delivery ms, recovery s. Every scenario asserts lost = 0 and
duplicated = 0 (after de-duplication by message_id), then what its fault promises.

Bodies are opaque bytes sent with the SDK's raw `send`: what is under test is
delivery, not the end-to-end crypto (tests/e2e covers that).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from dataclasses import dataclass

import pytest
import redis

from natter_client import ConnectedElsewhere, NatterClient

from .harness import FaultProxy, RawWebSocket, rss_kib, wait_for
from .traffic import Tally, close_all, crowd, paced, person, same_device, until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]

HEARTBEAT_S = 2  # harness.FAULT_ENV
CROWD = 200


@dataclass
class Member:
    user_id: str
    device_id: str
    token: str


@dataclass
class Crowd:
    sender: Member
    members: list[Member]
    group: str  # the sender and all 200 members
    half_group: str  # the sender and the first 100


def _member(c: NatterClient) -> Member:
    return Member(c.user_id, c.device_id, c.token)


@pytest.fixture(scope="session")
def the_crowd(stack) -> Crowd:
    """200 people in one group with a sender: made once, used by the big scenarios."""

    async def make() -> Crowd:
        people = await crowd(stack.natter.url, CROWD + 1)
        sender, members = people[0], people[1:]
        group = await sender.create_group("crowd", [m.user_id for m in members])
        half = await sender.create_group("half", [m.user_id for m in members[: CROWD // 2]])
        result = Crowd(_member(sender), [_member(m) for m in members], group["id"], half["id"])
        await close_all(*people)
        return result

    return asyncio.run(make())


def client_of(url: str, m: Member, **kwargs) -> NatterClient:
    c = NatterClient(url, token=m.token, **kwargs)
    c.user, c.device = {"id": m.user_id}, {"id": m.device_id}
    return c


async def connect_all(clients, transport: str = "ws", **kwargs) -> list:
    gate = asyncio.Semaphore(50)

    async def one(c):
        async with gate:
            conn = c.connect(transport, **kwargs)
            await conn.start()
            return conn

    return await asyncio.gather(*(one(c) for c in clients))


async def in_thread(fn, *args):
    """Blocking harness calls run off the loop, so the SDK's heartbeats keep going."""
    return await asyncio.to_thread(fn, *args)


def count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


# --- 1. A Celery worker killed with SIGKILL in the middle of a group fan-out ------------------


async def test_worker_killed_mid_group_fanout(natter, the_crowd, results):
    """The fan-out job is the row, not the task: beat's sweeper queues it again.

    100 members online; 20 group messages; the worker is SIGKILLed while it runs
    one of their fan-outs and restarted a second later. Every member gets every
    message exactly once (and the database holds one inbox row per device and
    message). Recovery: the kill → every message delivered (the restart included).
    """
    n = natter.natter
    tally = Tally("worker SIGKILL mid group fan-out")
    members = the_crowd.members[: CROWD // 2]
    sender = client_of(n.url, the_crowd.sender)
    clients = [client_of(n.url, m) for m in members]
    recipients = [m.device_id for m in members]
    conns = await connect_all(clients)
    watchers = [tally.watch(c, m.device_id) for c, m in zip(conns, members, strict=True)]
    await asyncio.gather(*(c.wait_drained(30) for c in conns))

    log_from = len(n.log("worker"))

    def fanouts() -> tuple[int, int]:
        text = n.log("worker")[log_from:]
        received = count(r"fanout_message_task\[[^\]]+\] received", text)
        return received, count(r"fanout_message_task\[[^\]]+\] succeeded", text)

    async def one(i: int):
        return await tally.send(
            lambda cid: sender.send(
                the_crowd.half_group, {}, group_body=b"fanout %d" % i, client_id=cid, timeout=20
            ),
            recipients,
        )

    sending = asyncio.ensure_future(paced(20, 0.02, one))
    # Kill once a few fan-outs are done, while the worker is inside the next one.
    await until(lambda: (f := fanouts())[1] >= 3 and f[0] > f[1], 30, "fan-outs under way")
    await in_thread(n.kill, "worker", signal.SIGKILL)
    killed = time.monotonic()
    received, succeeded = fanouts()
    await sending
    pending = (await in_thread(n.sql, PENDING_FANOUTS))[0][0]
    await asyncio.sleep(1)
    repaired = await in_thread(n.start, "worker")
    await tally.wait_all(60)

    rows = await in_thread(
        n.sql,
        "SELECT count(*), count(DISTINCT (device_id, message_id)) FROM messaging_inboxentry"
        " WHERE message_id IN (SELECT id FROM messaging_message WHERE conversation_id = %s)",
        int(the_crowd.half_group[2:]),
    )
    left = (await in_thread(n.sql, PENDING_FANOUTS))[0][0]
    for w in watchers:
        w.cancel()
    await close_all(*conns, sender, *clients)
    row = tally.row(recovery_s=tally.caught_up(killed, sent_before=repaired))
    results.emit(
        row,
        f"killed inside fan-out {succeeded + 1} of 20, {pending} still pending then;"
        " beat's sweeper queued them again",
    )
    assert row.attempted == row.acked == 20
    assert row.lost == 0, sorted(tally.missing())[:5]
    assert row.duplicated == 0
    # The kill hit a fan-out in progress, with more still to do.
    assert received > succeeded and pending > 0
    assert left == 0
    # Never two inbox rows of one message for one device (whatever is still unacked).
    assert rows[0][0] == rows[0][1]


PENDING_FANOUTS = "SELECT count(*) FROM messaging_message WHERE fanout_pending"


# --- 2. Redis restarted mid-traffic ------------------------------------------------------------


async def test_redis_restarted_mid_traffic(natter, results):
    """Redis comes back empty: no groups, no queue, no registry. Nothing durable was there.

    8 direct chats (senders on WebSockets; recipients half on WebSockets, half on
    long-poll) and a group of the 8 recipients send through a restart of Redis.
    Sends during the gap are answered `unavailable` and retried with the same
    client_id; fan-outs whose Celery task vanished with the queue are swept again;
    sockets re-join their channel-layer groups, so pushes are live again. Recovery:
    Redis stopping → every message sent before it answered again delivered.
    """
    n = natter.natter
    stack = natter
    tally = Tally("Redis restarted mid-traffic")
    pairs = 8
    senders = await asyncio.gather(*(person(n.url, f"rs{i}") for i in range(pairs)))
    receivers = await asyncio.gather(*(person(n.url, f"rr{i}") for i in range(pairs)))
    convs = [
        (await s.direct_conversation(r.user_id))["id"]
        for s, r in zip(senders, receivers, strict=True)
    ]
    group = (await senders[0].create_group("redis", [r.user_id for r in receivers]))["id"]
    s_conns = await connect_all(senders)
    ws_recv = await connect_all(receivers[: pairs // 2])
    lp_recv = await connect_all(receivers[pairs // 2 :], "longpoll", poll_timeout=5)
    r_conns = ws_recv + lp_recv
    watchers = [tally.watch(c, r.device_id) for c, r in zip(r_conns, receivers, strict=True)]
    await asyncio.gather(*(c.wait_drained(10) for c in [*s_conns, *r_conns]))
    ws_devices = [r.device_id for r in receivers[: pairs // 2]]

    stop = asyncio.Event()

    async def direct(i: int):
        k = 0
        sends = []
        while not stop.is_set():
            body = b"direct %d/%d" % (i, k)
            sends.append(
                asyncio.ensure_future(
                    tally.send(
                        lambda cid, body=body: s_conns[i].send(
                            convs[i], {receivers[i].device_id: body}, client_id=cid, timeout=10
                        ),
                        [receivers[i].device_id],
                    )
                )
            )
            k += 1
            await asyncio.sleep(0.25)
        await asyncio.gather(*sends)

    async def grouped():
        sends = []
        k = 0
        while not stop.is_set():
            sends.append(
                asyncio.ensure_future(
                    tally.send(
                        lambda cid, k=k: s_conns[0].send(
                            group, {}, group_body=b"group %d" % k, client_id=cid, timeout=10
                        ),
                        [r.device_id for r in receivers],
                    )
                )
            )
            k += 1
            await asyncio.sleep(0.5)
        await asyncio.gather(*sends)

    traffic = asyncio.gather(*(direct(i) for i in range(pairs)), grouped())
    await asyncio.sleep(2)
    stopped = time.monotonic()
    await in_thread(stack.redis.stop)
    await asyncio.sleep(0.5)
    await in_thread(stack.redis.start)
    repaired = time.monotonic()
    # The restarted Redis has no groups: each socket joins its device's group again
    # (on reconnecting, or on its next heartbeat), so doorbells reach it again.
    layer = redis.Redis(port=stack.redis.port)
    keys = [f"asgi:group:device.{d[2:]}" for d in ws_devices]
    await in_thread(
        wait_for, lambda: all(layer.zcard(k) for k in keys), 4 * HEARTBEAT_S, "group re-joins"
    )
    rejoined_s = time.monotonic() - repaired
    await asyncio.sleep(4)
    stop.set()
    await traffic
    await tally.wait_all(60)

    errors = [e for s in tally.sent.values() for e in s.errors]
    for w in watchers:
        w.cancel()
    await close_all(*s_conns, *r_conns, *senders, *receivers)
    row = tally.row(recovery_s=tally.caught_up(stopped, sent_before=repaired))
    retried = ", ".join(f"{errors.count(e)} × {e}" for e in sorted(set(errors))) or "none"
    results.emit(
        row,
        f"sends retried after: {retried}; every socket back in its device group"
        f" {rejoined_s:.1f} s after Redis answered",
    )
    assert row.attempted == row.acked
    assert row.lost == 0, sorted(tally.missing())[:5]
    assert row.duplicated == 0
    assert all(n.alive(p) for p in ("daphne", "worker", "beat"))


# --- 3. daphne killed with 200 connected sockets -------------------------------------------------


async def test_daphne_killed_with_200_sockets(natter, the_crowd, results):
    """A crashed web process loses nothing: inboxes are rows, clients resume by cursor.

    200 members of a group hold a WebSocket each; a sender posts group messages
    (REST) before, during and after daphne is SIGKILLed and started again. Every
    socket reconnects on its own (backoff) and resumes from its cursor; events that
    were pushed but not acked come again and are dropped by message_id. Recovery:
    the kill → every message sent before daphne answered again delivered (the
    restart included).
    """
    n = natter.natter
    tally = Tally(f"daphne SIGKILL, {CROWD} sockets")
    sender = client_of(n.url, the_crowd.sender, timeout=5)
    clients = [client_of(n.url, m) for m in the_crowd.members]
    recipients = [m.device_id for m in the_crowd.members]
    conns = await connect_all(clients)
    hellos = [0] * len(conns)
    for i, conn in enumerate(conns):
        # Count the sockets each connection opened (the SDK reconnects by itself).
        def on_hello(hello, i=i, original=conn._on_hello):
            hellos[i] += 1
            original(hello)

        conn._on_hello = on_hello
    watchers = [tally.watch(c, m.device_id) for c, m in zip(conns, the_crowd.members, strict=True)]
    await asyncio.gather(*(c.wait_drained(30) for c in conns))

    async def one(i: int):
        return await tally.send(
            lambda cid: sender.send(
                the_crowd.group, {}, group_body=b"crash %d" % i, client_id=cid, timeout=30
            ),
            recipients,
        )

    sending = asyncio.ensure_future(paced(16, 0.25, one))
    await asyncio.sleep(1.5)
    await in_thread(n.kill, "daphne", signal.SIGKILL)
    killed = time.monotonic()
    repaired = await in_thread(n.start, "daphne")
    await sending
    await tally.wait_all(90)
    reconnected = sum(1 for h in hellos if h >= 1)
    up = sum(1 for c in conns if c._up and c.error is None)
    for w in watchers:
        w.cancel()
    await close_all(*conns, sender, *clients)
    row = tally.row(recovery_s=tally.caught_up(killed, sent_before=repaired))
    results.emit(row, f"{reconnected} of {CROWD} sockets reconnected by themselves")
    assert row.attempted == row.acked
    assert row.lost == 0, sorted(tally.missing())[:5]
    assert row.duplicated == 0
    assert reconnected == up == CROWD


# --- 4. Postgres stopped for 10 s -----------------------------------------------------------------


@dataclass
class Attempt:
    transport: str
    start: float
    end: float
    outcome: str  # "ack", "503" (with Retry-After), "unavailable", or what else came


async def test_postgres_stopped_for_10s(natter, results):
    """While the database is down a send is refused, explicitly and retryably, never acked.

    4 direct chats: two senders on WebSockets (SDK), two over REST (plain HTTP, to
    see each status and header); recipients on WebSockets and long-poll. Postgres
    gets a fast shutdown and comes back 10 s later. During the outage every send
    is answered 503 + Retry-After (REST) or an `unavailable` error frame (socket),
    and no send is acked; senders retry with the same client_id, and every acked
    message arrives. Recovery: Postgres back → every message sent before delivered.
    """
    import httpx

    from natter_client import ApiError, SendAck
    from natter_client.wire import send_payload

    n = natter.natter
    stack = natter
    tally = Tally("Postgres stopped for 10 s")
    pairs = 4
    senders = await asyncio.gather(*(person(n.url, f"ps{i}") for i in range(pairs)))
    receivers = await asyncio.gather(*(person(n.url, f"pr{i}") for i in range(pairs)))
    convs = [
        (await s.direct_conversation(r.user_id))["id"]
        for s, r in zip(senders, receivers, strict=True)
    ]
    ws_senders = await connect_all(senders[:2])
    r_conns = [
        *await connect_all(receivers[::2]),
        *await connect_all(receivers[1::2], "longpoll", poll_timeout=5),
    ]
    r_order = [*receivers[::2], *receivers[1::2]]
    watchers = [tally.watch(c, r.device_id) for c, r in zip(r_conns, r_order, strict=True)]
    await asyncio.gather(*(c.wait_drained(10) for c in [*ws_senders, *r_conns]))
    attempts: list[Attempt] = []
    http = httpx.AsyncClient(timeout=30)

    def sender_for(i: int):
        device = receivers[i].device_id

        if i < 2:

            async def over_ws(cid: str, body: bytes):
                t = time.monotonic()
                try:
                    ack = await ws_senders[i].send(convs[i], {device: body}, client_id=cid)
                except ApiError as exc:
                    attempts.append(Attempt("ws", t, time.monotonic(), exc.code))
                    raise
                except Exception as exc:
                    attempts.append(Attempt("ws", t, time.monotonic(), type(exc).__name__))
                    raise
                attempts.append(Attempt("ws", t, time.monotonic(), "ack"))
                return ack

            return over_ws

        async def over_rest(cid: str, body: bytes):
            payload = send_payload(client_id=cid, conversation=convs[i], ciphertexts={device: body})
            t = time.monotonic()
            try:
                r = await http.post(
                    n.url + "/api/v1/messages",
                    json=payload,
                    headers={"Authorization": f"Bearer {senders[i].token}"},
                )
            except httpx.TransportError as exc:
                attempts.append(Attempt("rest", t, time.monotonic(), type(exc).__name__))
                raise
            end = time.monotonic()
            if r.status_code in (200, 201):
                attempts.append(Attempt("rest", t, end, "ack"))
                return SendAck.from_wire(r.json())
            code = r.json().get("error", {}).get("code", "?") if r.content else "?"
            retry_after = r.headers.get("Retry-After")
            ok = r.status_code == 503 and code == "unavailable" and retry_after
            attempts.append(Attempt("rest", t, end, "503" if ok else f"{r.status_code} {code}"))
            raise ApiError(r.status_code, code, details={"retry_after": retry_after})

        return over_rest

    stop = asyncio.Event()

    async def traffic(i: int):
        send_one = sender_for(i)
        sends, k = [], 0
        while not stop.is_set():
            body = b"pg %d/%d" % (i, k)
            sends.append(
                asyncio.ensure_future(
                    tally.send(lambda cid, body=body: send_one(cid, body), [receivers[i].device_id])
                )
            )
            k += 1
            await asyncio.sleep(0.5)
        await asyncio.gather(*sends)

    running = asyncio.gather(*(traffic(i) for i in range(pairs)))
    await asyncio.sleep(2)
    await in_thread(stack.pg.stop)
    down = time.monotonic()
    await asyncio.sleep(10)
    await in_thread(stack.pg.start)
    up = time.monotonic()
    await asyncio.sleep(3)
    stop.set()
    await running
    await tally.wait_all(60)
    for w in watchers:
        w.cancel()
    await http.aclose()
    await close_all(*ws_senders, *r_conns, *senders, *receivers)

    row = tally.row(recovery_s=tally.caught_up(up))
    during = [a for a in attempts if a.start > down and a.end < up]
    outcomes = {o: sum(1 for a in during if a.outcome == o) for o in {a.outcome for a in during}}
    slowest = max((a.end - a.start for a in during), default=0)
    acked_during = [a for a in attempts if a.outcome == "ack" and down < a.end < up]
    # Sends made well inside the outage were answered inside it: none hung through it.
    hung = [a for a in attempts if down < a.start < up - 6 and a.end >= up]
    results.emit(
        row,
        "sends during the outage: "
        + ", ".join(f"{v} × {k}" for k, v in sorted(outcomes.items()))
        + f" (REST: 503 with Retry-After; WebSocket: `unavailable`), slowest answer {slowest:.1f} s,"
        f" {len(acked_during)} acks, {len(hung)} left hanging",
    )
    assert row.attempted == row.acked
    assert row.lost == 0, sorted(tally.missing())[:5]
    assert row.duplicated == 0
    # Never an ack while the database is down, and no send left without an answer.
    assert not acked_during and not hung
    # Every send during the outage was refused explicitly and retryably.
    assert during and all(a.outcome in ("503", "unavailable") for a in during), outcomes
    assert {a.transport for a in during} == {"ws", "rest"}


# --- 5. The ack to the sender lost, the message resent later -----------------------------------


async def test_ack_lost_and_message_resent(natter, results):
    """An ack that never reaches the sender costs a resend, never a second message.

    The sender talks to daphne through a proxy that swallows everything daphne says:
    its sends arrive and are stored (and delivered), their acks are lost. The SDK
    resends on the socket after each ack timeout; over REST the request times out
    and is repeated. 3 s later the proxy cuts every connection and lets answers
    through again: the socket reconnects and resends, REST repeats the POST, and each
    gets the original ack (same message_id and seq). Recovery: connections cut →
    every message acked.
    """
    n = natter.natter
    tally = Tally("ack lost, message resent")
    proxy = FaultProxy(n.port)
    await proxy.start()
    alice, bob = await person(n.url, "alice"), await person(n.url, "bob")
    conv = (await alice.direct_conversation(bob.user_id))["id"]
    via_proxy = NatterClient(proxy.url, token=alice.token, timeout=1.0)
    a_ws = via_proxy.connect("ws", ack_timeout=1.0)
    await a_ws.start()
    b = await connect_all([bob])
    watcher = tally.watch(b[0], bob.device_id)
    await asyncio.gather(a_ws.wait_drained(5), b[0].wait_drained(5))

    proxy.swallow_replies = True
    log_from = len(n.log("daphne"))

    async def one(i: int):
        # Each attempt gives up after 2 s (the SDK itself resends within it), and the
        # app sends again with the same client_id: the resends the table counts.
        if i % 2:
            send = lambda cid: via_proxy.send(  # noqa: E731
                conv, {bob.device_id: b"rest %d" % i}, client_id=cid, timeout=2
            )
        else:
            send = lambda cid: a_ws.send(  # noqa: E731
                conv, {bob.device_id: b"ws %d" % i}, client_id=cid, timeout=2
            )
        return await tally.send(send, [bob.device_id])

    started = time.monotonic()
    sending = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(20))))
    # Stored and delivered while the sender hears nothing.
    await tally.wait_arrivals(20, 10)
    delivered_unacked = len(tally.delivered_pairs())
    await asyncio.sleep(max(0.0, 3 - (time.monotonic() - started)))
    acked_while_cut_off = sum(1 for s in tally.sent.values() if s.message_id)
    proxy.swallow_replies = False
    proxy.cut()
    repaired = time.monotonic()
    await sending
    all_acked = max(s.acked_at for s in tally.sent.values())
    await tally.wait_all(10)
    await asyncio.sleep(0.5)  # anything extra would show up now
    stored = await in_thread(
        n.sql,
        "SELECT count(*), count(DISTINCT client_id), max(seq) FROM messaging_message"
        " WHERE conversation_id = %s",
        int(conv[2:]),
    )
    # Each ack names the message_id the recipient got.
    got = {cid: next(iter(ids)) for cid, ids in tally.arrived[bob.device_id].items()}
    mismatched = [s for s in tally.sent.values() if got.get(s.client_id) != s.message_id]
    resends = sum(s.attempts - 1 for s in tally.sent.values())
    duplicate_answers = count(r'"POST /api/v1/messages" 200', n.log("daphne")[log_from:])
    watcher.cancel()
    await close_all(a_ws, b[0], via_proxy, alice, bob)
    await proxy.close()
    row = tally.row(recovery_s=all_acked - repaired)
    results.emit(
        row,
        f"every message resent with the same client_id ({resends} resends);"
        f" {duplicate_answers} repeated POSTs answered 200 with the original ack;"
        " 20 messages stored",
    )
    assert row.attempted == row.acked == 20
    assert row.lost == 0 and row.duplicated == 0
    assert delivered_unacked == 20 and acked_while_cut_off == 0
    assert stored == [(20, 20, 20)]
    assert not mismatched
    assert all(s.attempts > 1 for s in tally.sent.values())
    assert duplicate_answers >= 10  # each REST message's resend got the original ack


# --- 6. A client that disconnects before acking ------------------------------------------------


async def test_client_disconnects_before_acking(natter, results):
    """What was pushed but not acked comes again on the next connection, and only that.

    50 messages wait for Bob. His first socket (auto_ack off) takes 25 and closes
    without acking; a long-poll then takes 40 and acks them; a last socket gets the
    remaining 10. The server pushes again exactly what was not acked (50 + 10
    repeats at the transport), the app keeps one copy of each by message_id, and the
    inbox is empty at the end. Recovery: from the last reconnect to the last message.
    """
    n = natter.natter
    tally = Tally("client disconnects before acking")
    alice, bob = await person(n.url, "alice"), await person(n.url, "bob")
    conv = (await alice.direct_conversation(bob.user_id))["id"]
    await asyncio.gather(
        *(
            tally.send(
                lambda cid, i=i: alice.send(conv, {bob.device_id: b"m%d" % i}, client_id=cid),
                [bob.device_id],
            )
            for i in range(50)
        )
    )

    async def take(conn, k: int) -> list[int]:
        out = []
        for _ in range(k):
            event = await conn.next_event(timeout=10, type="message")
            tally.on_app(bob.device_id, event)
            out.append(event.cursor)
        return out

    first = bob.connect("ws", auto_ack=False)
    tally.watch_raw(first, bob.device_id)
    await first.start()
    await take(first, 25)
    await first.wait_drained(10)
    await first.aclose()  # nothing acked

    second = bob.connect("longpoll")  # auto-ack: a cursor counts once the app took it
    tally.watch_raw(second, bob.device_id)
    await second.start()
    await take(second, 40)
    await second.aclose()  # acks the 40 it handed over, not the 10 it also fetched

    resumed = time.monotonic()
    third = bob.connect("ws")
    tally.watch_raw(third, bob.device_id)
    await third.start()
    await take(third, 10)
    done = time.monotonic()
    with pytest.raises(TimeoutError):
        await third.next_event(timeout=1, type="message")
    await third.aclose()
    await asyncio.sleep(0.5)
    left = await in_thread(
        n.sql,
        "SELECT count(*) FROM messaging_inboxentry WHERE device_id = %s",
        int(bob.device_id[2:]),
    )
    await close_all(alice, bob)
    row = tally.row(recovery_s=done - resumed)
    results.emit(row, "pushed again: exactly the 60 events pushed and not acked; inbox empty after")
    assert row.attempted == row.acked == 50
    assert row.lost == 0 and row.duplicated == 0
    # The first socket got all 50 pushed (window 200), the long-poll all 50 again,
    # the last socket the 10 the long-poll did not hand over: 60 repeats, no more.
    assert row.redelivered == 60
    assert left == [(0,)]


# --- 7. Two sockets for one device -----------------------------------------------------------------


async def test_two_sockets_for_one_device(natter, results):
    """One device, one inbox, one socket: the newest wins, the other closes with 4409.

    Bob's socket A receives a stream of messages; socket B of the same device opens
    mid-stream and A is closed with 4409 (the SDK then stops: no tug of war). Then
    pairs of sockets open at the same moment, 10 times over: each time exactly one
    survives. Whatever A had been pushed but not acked comes again on B. Recovery:
    B opened → A closed.
    """
    n = natter.natter
    tally = Tally("two sockets for one device")
    alice, bob = await person(n.url, "alice"), await person(n.url, "bob")
    conv = (await alice.direct_conversation(bob.user_id))["id"]
    a_conn, *_ = await connect_all([alice])
    first = bob.connect("ws")
    tally.watch_raw(first, bob.device_id)
    await first.start()
    consumers = [asyncio.create_task(tally.consume(first, bob.device_id))]

    async def one(i: int):
        return await tally.send(
            lambda cid: a_conn.send(conv, {bob.device_id: b"m%d" % i}, client_id=cid, timeout=10),
            [bob.device_id],
        )

    sending = asyncio.ensure_future(paced(60, 0.05, one))
    await asyncio.sleep(1)
    second_client = same_device(bob)
    second = second_client.connect("ws")
    tally.watch_raw(second, bob.device_id)
    opened = time.monotonic()
    await second.start()
    consumers.append(asyncio.create_task(tally.consume(second, bob.device_id)))
    await until(lambda: first.error is not None, 10, "the first socket to be closed")
    taken_over = time.monotonic()
    await sending

    # Two at once, ten times: exactly one of each pair stays.
    survivors = []
    extra = [same_device(bob) for _ in range(20)]
    pairs = []
    for k in range(10):
        pair = [extra[2 * k].connect("ws"), extra[2 * k + 1].connect("ws")]
        pairs += pair
        for c in pair:
            tally.watch_raw(c, bob.device_id)
        await asyncio.gather(*(c.start() for c in pair))
        consumers += [asyncio.create_task(tally.consume(c, bob.device_id)) for c in pair]
        await until(lambda pair=pair: any(c.error for c in pair), 10, "one of the pair closed")
        await asyncio.sleep(0.3)  # time enough for a wrong second close to show
        survivors.append(sum(1 for c in pair if c.error is None))
    await tally.wait_all(20)
    for task in consumers:
        task.cancel()
    codes = {type(first.error).__name__, type(second.error).__name__}
    await close_all(a_conn, first, second, *pairs, *extra, second_client, alice, bob)
    row = tally.row(recovery_s=taken_over - opened)
    results.emit(
        row,
        "the first socket closed 4409 when the second opened; 10 simultaneous pairs:"
        f" {sum(survivors)} survivors",
    )
    assert row.attempted == row.acked == 60
    assert row.lost == 0 and row.duplicated == 0
    assert isinstance(first.error, ConnectedElsewhere) and first.error.code == 4409
    assert codes == {"ConnectedElsewhere"}  # B lost to the first pair, in turn
    assert survivors == [1] * 10, survivors


# --- 8. A slow consumer that stops reading while 1,000 messages arrive ---------------------------


async def test_slow_consumer_stops_reading(natter, results):
    """A socket that stops reading costs the server one window of events, not the backlog.

    Bob's client stops reading its socket (it keeps pinging, so it is not silent)
    while Alice sends 1,000 messages of 16 KiB. The server pushes at most `window`
    (200) unacked events and waits; daphne's memory stays bounded (measured: its
    growth stays far below what buffering the 1,000 would take). Then Bob reads and
    acks, and gets all 1,000 in order: nothing dropped. Recovery: reading again →
    the last of the 1,000 delivered.
    """
    n = natter.natter
    tally = Tally("slow consumer, 1,000 messages")
    # Alice sends through a second web process, so the memory measured on Bob's is
    # his socket's, not that of handling 1,000 requests of 22 KB.
    await in_thread(n.start, "daphne2")
    alice, bob = await person(n.url2, "alice"), await person(n.url, "bob")
    conv = (await alice.direct_conversation(bob.user_id))["id"]
    body = bytes(16 * 1024)
    raw = await in_thread(RawWebSocket, n.port, bob.token)
    hello = await in_thread(raw.recv_json)
    assert hello["type"] == "hello" and (await in_thread(raw.recv_json))["type"] == "drained"
    window = hello["window"]
    pid = n.pid("daphne")
    base_kib = rss_kib(pid)
    peak_kib = base_kib
    stop = asyncio.Event()

    async def keep_pinging_and_measuring():
        nonlocal peak_kib
        while not stop.is_set():
            raw.send_json({"type": "ping"})  # writes only: a slow reader, not a silent one
            for _ in range(10):
                peak_kib = max(peak_kib, rss_kib(pid))
                await asyncio.sleep(0.1)

    pinger = asyncio.create_task(keep_pinging_and_measuring())
    gate = asyncio.Semaphore(8)

    async def one(i: int):
        async with gate:
            return await tally.send(
                lambda cid: alice.send(conv, {bob.device_id: body}, client_id=cid, timeout=30),
                [bob.device_id],
            )

    await asyncio.gather(*(one(i) for i in range(1000)))
    await asyncio.sleep(1)
    stop.set()
    await pinger
    peak_kib = max(peak_kib, rss_kib(pid))

    # Now Bob reads: everything pushed so far, then ack and read on until all 1,000.
    resumed = time.monotonic()

    def read_all() -> tuple[list[int], int]:
        seqs: list[int] = []
        cursor = 0

        def take(frame) -> None:
            nonlocal cursor
            event = frame["event"]
            tally.on_raw(bob.device_id, event)
            tally.on_app(bob.device_id, event)
            seqs.append(event["seq"])
            cursor = frame["cursor"]

        # First only read: what the server pushed without an ack is all there is.
        raw.sock.settimeout(1.5)
        with contextlib.suppress(TimeoutError):
            while True:
                frame = raw.recv_json()
                if frame and frame["type"] == "event":
                    take(frame)
        unacked = len(seqs)
        raw.sock.settimeout(15)
        raw.send_json({"type": "ack", "cursor": cursor})
        while len(seqs) < 1000:
            frame = raw.recv_json()
            if frame is None:
                raise AssertionError(f"closed: {raw.close_code}")
            if frame["type"] == "event":
                take(frame)
                if len(seqs) % 50 == 0:
                    raw.send_json({"type": "ack", "cursor": cursor})
        raw.send_json({"type": "ack", "cursor": cursor})
        return seqs, unacked

    seqs, first_window = await in_thread(read_all)
    done = time.monotonic()
    await in_thread(raw.close)
    await close_all(alice, bob)
    await in_thread(n.stop, "daphne2")
    row = tally.row(recovery_s=done - resumed)
    growth_mib = (peak_kib - base_kib) / 1024
    backlog_mib = 1000 * len(body) * 4 / 3 / 2**20
    results.emit(
        row,
        f"{first_window} events pushed before the first ack (window {window}); daphne RSS"
        f" {base_kib / 1024:.0f} → peak {peak_kib / 1024:.0f} MiB (+{growth_mib:.1f}; the"
        f" 1,000 queued would be {backlog_mib:.0f} MiB of frames)",
    )
    assert row.attempted == row.acked == 1000
    assert row.lost == 0 and row.duplicated == 0
    assert seqs == list(range(1, 1001))
    # A window's worth, and not one event more, was pushed without an ack.
    assert first_window == window
    # Bounded: the 1,000 queued on the socket would be ~21 MiB of frames alone.
    assert growth_mib < backlog_mib / 2, (growth_mib, backlog_mib)


# --- 9. Half-open TCP, detected by heartbeats ------------------------------------------------------


async def test_half_open_tcp_detected_by_heartbeats(natter, results):
    """A client that vanishes without closing is noticed within 2.5 × heartbeat_s.

    Bob's socket connects and then does nothing at all: it neither reads nor writes
    (no pings, no answers to daphne's pings), and never closes: a peer that lost
    power or network. Within 2.5 × heartbeat_s (5 s here) the server closes it
    (4408), Carol, who watches Bob's presence, sees him go offline, and what Alice
    sent meanwhile waits in his inbox: his next connection gets all of it. Recovery:
    Bob's last frame → the server's end of the socket closed.
    """
    n = natter.natter
    tally = Tally("half-open TCP (silent peer)")
    alice, bob, carol = await asyncio.gather(
        *(person(n.url, name) for name in ("alice", "bob", "carol"))
    )
    conv = (await alice.direct_conversation(bob.user_id))["id"]
    c_conn, a_conn = await connect_all([carol, alice])
    await c_conn.subscribe_presence([bob.user_id])
    raw = await in_thread(RawWebSocket, n.port, bob.token)
    silent_since = time.monotonic()  # the handshake was Bob's last word
    assert (await in_thread(raw.recv_json))["type"] == "hello"

    async def presence_of_bob(status: str, timeout: float):
        while True:
            notice = await c_conn.next_ephemeral(timeout=timeout)
            if notice.get("user") == bob.user_id and notice.get("status") == status:
                return time.monotonic()

    await presence_of_bob("online", 5)

    async def one(i: int):
        return await tally.send(
            lambda cid: a_conn.send(conv, {bob.device_id: b"m%d" % i}, client_id=cid, timeout=10),
            [bob.device_id],
        )

    sending = asyncio.ensure_future(paced(10, 0.4, one))

    def server_closed() -> float:
        wait_for(lambda: raw.server_side_state() != "01", 4 * HEARTBEAT_S + 5, "the close")
        return time.monotonic()

    closed_at = await in_thread(server_closed)
    offline_at = await presence_of_bob("offline", 10)
    await sending
    # Bob's buffer: hello, drained, pushes, then the close frame with 4408.
    raw.sock.settimeout(2)
    frames = []
    with contextlib.suppress(EOFError, OSError):
        while (frame := await in_thread(raw.recv_json)) is not None:
            frames.append(frame)
    await in_thread(raw.close)
    for f in frames:
        if f.get("type") == "event" and f["event"]["type"] == "message":
            tally.on_raw(bob.device_id, f["event"])
    # His next connection gets everything, including what went to the dead socket.
    b_conn = bob.connect("ws")
    watcher = tally.watch(b_conn, bob.device_id)
    await b_conn.start()
    await tally.wait_all(10)
    watcher.cancel()
    await close_all(b_conn, c_conn, a_conn, alice, bob, carol)
    detect_s = closed_at - silent_since
    row = tally.row(recovery_s=detect_s)
    results.emit(
        row,
        f"closed {raw.close_code} after {detect_s:.1f} s of silence (2.5 × heartbeat_s ="
        f" {2.5 * HEARTBEAT_S:.0f} s, plus the close handshake); offline announced"
        f" {offline_at - closed_at:.1f} s later; 10 of 10 waiting in the inbox",
    )
    assert row.attempted == row.acked == 10
    assert row.lost == 0 and row.duplicated == 0
    assert raw.close_code == 4408
    assert 2.5 * HEARTBEAT_S * 0.9 <= detect_s <= 2.5 * HEARTBEAT_S + 3
    # Offline is announced after PRESENCE_GRACE_S (1 s here).
    assert offline_at - closed_at < 1 + 2
