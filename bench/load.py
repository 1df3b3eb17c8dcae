"""The load generator: direct messages over the SDK's WebSocket transport, bodies opaque.

    python -m bench.load throughput [--pairs 100] [--window 8] [--seconds 15]
    python -m bench.load latency --rate 500 [--pairs 100] [--seconds 15]
    python -m bench.load drain [--messages 10000]
    python -m bench.load idle [--sockets 10000]

Each starts its own server (daphne on Postgres database `natter_bench_load` and
REDIS_URL; `--processes N` daphne processes behind nothing, clients spread over
them; `--url` to aim at a running server or cluster instead, with `--database-url`
for the bulk setup), prints one JSON line and a table. Bodies are 100 random
bytes (the first 8 carry the send time): no encryption, so the generator's own CPU
is what moving frames costs, reported beside the server's.
"""

import argparse
import asyncio
import gc
import json
import os
import resource
import struct
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

from apps.common import loopwatch
from bench.population import analyze, make_devices, make_pairs, setup_django
from bench.server import bench_env, cpu_jiffies, daphne, postgres_cpu_s, proc_stats
from natter_client.transport import WebSocketConnection

BODY = 100


def ws_url(url: str) -> str:
    parts = urlsplit(url)
    return f"ws://{parts.netloc}/ws/v1/"


def connection(url: str, token: str, **kwargs) -> WebSocketConnection:
    parts = urlsplit(url)
    return WebSocketConnection(
        ws_url(url), token, origin=f"{parts.scheme}://{parts.netloc}", **kwargs
    )


def body() -> bytes:
    return struct.pack("!d", time.perf_counter()) + os.urandom(BODY - 8)


def sent_at(data: bytes) -> float:
    return struct.unpack("!d", data[:8])[0]


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU of the server processes, of this generator, of Postgres and of the whole
    machine over a measured interval."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.server0 = [proc_stats(p)["cpu_s"] for p in self.pids]
        self.self0 = cpu_self()
        self.postgres0 = postgres_cpu_s()
        self.machine0 = cpu_jiffies()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.t0
        server_s = [
            proc_stats(p)["cpu_s"] - c for p, c in zip(self.pids, self.server0, strict=True)
        ]
        self.server_cpu = [round(100 * s / self.elapsed, 1) for s in server_s]
        generator_s = cpu_self() - self.self0
        self.generator_cpu = round(100 * generator_s / self.elapsed, 1)
        postgres1 = postgres_cpu_s()
        postgres_s = None if None in (self.postgres0, postgres1) else postgres1 - self.postgres0
        self.postgres_cpu = (
            None if postgres_s is None else round(100 * postgres_s / self.elapsed, 1)
        )
        (busy0, total0), (busy1, total1) = self.machine0, cpu_jiffies()
        cpus = os.cpu_count() or 1
        self.machine_busy = round(100 * cpus * (busy1 - busy0) / max(1, total1 - total0), 1)
        self.cpu_s = {"server": sum(server_s), "generator": generator_s, "postgres": postgres_s}

    def per_message(self, messages: int) -> dict:
        """CPU milliseconds per message, by whom: comparable across runs at the same
        rate where latency, which is mostly queueing near saturation, is not."""
        if not messages:
            return {}
        return {
            f"{who}_cpu_ms_per_msg": round(1000 * s / messages, 3)
            for who, s in self.cpu_s.items()
            if s is not None
        }


def percentiles(values: list[float], points=(("p50", 0.5), ("p95", 0.95), ("p99", 0.99))) -> dict:
    """Order statistics of durations in seconds, as milliseconds, and the maximum."""
    points = (*points, ("max", 1.0))
    if not values:
        return {f"{name}_ms": None for name, _ in points}
    ordered = sorted(values)

    def at(q):
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {f"{name}_ms": at(q) for name, q in points}


async def open_all(urls: list[str], tokens: list[str], **kwargs) -> list[WebSocketConnection]:
    semaphore = asyncio.Semaphore(200)

    async def one(i: int, token: str):
        async with semaphore:
            conn = connection(urls[i % len(urls)], token, **kwargs)
            await conn.start()
            return conn

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens))))


async def close_all(conns) -> None:
    await asyncio.gather(*(c.aclose() for c in conns), return_exceptions=True)


# --- throughput and latency ----------------------------------------------------------


class Arrivals:
    """The longest time with no delivery at all, and the time spent in such gaps.

    Under steady load deliveries come every few milliseconds; a gap of
    STALL_S or more means everything stopped (a flush of Postgres's log stalling
    on the disk: bench.commit_probe, docs/benchmarks.md), which a percentile
    alone does not tell apart from queueing.
    """

    STALL_S = 0.1

    def __init__(self):
        self.last = None
        self.longest = 0.0
        self.stalled = 0.0

    def arrived(self, now: float) -> None:
        if self.last is not None:
            gap = now - self.last
            self.longest = max(self.longest, gap)
            if gap >= self.STALL_S:
                self.stalled += gap
        self.last = now

    def figures(self) -> dict:
        return {
            "longest_gap_ms": round(1000 * self.longest, 1),
            "stalled_s": round(self.stalled, 2),
        }


class CollectorPauses(loopwatch.CollectorTimer):
    """The generator's own garbage-collector passes while it measures.

    The generator stamps each delivery when its loop gets to it, so a pass that
    stops the loop shows as latency the server never caused. Reported beside the
    figures so a gap can be told apart from the server's.
    """

    def __init__(self):
        super().__init__()
        self.longest = 0.0
        self.total = 0.0
        self.full = 0

    def passed(self, seconds: float, generation: int) -> None:
        self.longest = max(self.longest, seconds)
        self.total += seconds
        self.full += generation == 2

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)

    def figures(self) -> dict:
        return {
            "generator_gc_longest_ms": round(1000 * self.longest, 1),
            "generator_gc_s": round(self.total, 3),
            "generator_gc_full_passes": self.full,
        }


# Upper bounds (s) past which a server's loop lag or collector pass counts as a stall.
LOOP_STALL_S = 0.1
GC_LONG_S = 0.05


def histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: Counter[float] = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    return dict(buckets)


def difference(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """A cumulative histogram's counts between two readings of it."""
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


def over(buckets: dict[float, float], bound: float) -> int:
    """How many observations a cumulative histogram holds above `bound`."""
    return round(buckets.get(float("inf"), 0.0) - buckets.get(bound, 0.0))


def worst_bucket(buckets: dict[float, float]) -> float | None:
    """The upper bound of the highest bucket with an observation (None: none)."""
    worst, below = None, 0.0
    for bound in sorted(buckets):
        if buckets[bound] > below:
            worst = bound
        below = buckets[bound]
    return worst


class ServerPauses:
    """The servers' own pauses while measuring, from each process's /metrics.

    `natter_event_loop_lag_seconds` (how late each process's loop ran a timer) and
    `natter_gc_pause_seconds`, read before and after the window: a stall of every
    delivery that shows in a server's loop lag was that server's, one that does not
    was elsewhere (Postgres, Redis, the generator). Needs METRICS_TOKEN (bench_env
    sets one); without access the figures are left out.
    """

    def __init__(self, urls):
        self.urls = urls
        self.token = os.environ.get("METRICS_TOKEN") or "bench"

    async def read(self) -> dict[str, dict[float, float]] | None:
        import httpx

        lag: Counter[float] = Counter()
        gc_: Counter[float] = Counter()
        async with httpx.AsyncClient(timeout=5) as client:
            for url in self.urls:
                try:
                    response = await client.get(
                        url + "/metrics", headers={"Authorization": f"Bearer {self.token}"}
                    )
                except httpx.HTTPError:
                    return None
                if response.status_code != 200:
                    return None
                lag.update(histogram_buckets(response.text, "natter_event_loop_lag_seconds"))
                gc_.update(histogram_buckets(response.text, "natter_gc_pause_seconds"))
        return {"lag": dict(lag), "gc": dict(gc_)}

    @staticmethod
    def figures(before, after) -> dict:
        if before is None or after is None:
            return {}
        window = {kind: difference(before[kind], after[kind]) for kind in ("lag", "gc")}
        return {
            "server_loop_lags_over_100ms": over(window["lag"], LOOP_STALL_S),
            "server_loop_lag_worst_le_s": worst_bucket(window["lag"]),
            "server_gc_passes_over_50ms": over(window["gc"], GC_LONG_S),
            "server_gc_worst_le_s": worst_bucket(window["gc"]),
        }


class GeneratorLoopLag:
    """The generator's own event-loop lag while measuring: the servers' ticker
    (apps.common.loopwatch), run in the generator. The generator stamps a delivery
    when its loop gets to it, so a loop held up here shows as a stall of every
    delivery that no server caused."""

    def __enter__(self):
        loopwatch.watch_event_loop()
        self.before = self.after = self._buckets()
        return self

    def __exit__(self, *exc):
        self.after = self._buckets()

    @staticmethod
    def _buckets() -> dict[float, float]:
        return {
            float(sample.labels["le"]): sample.value
            for family in loopwatch.LOOP_LAG.collect()
            for sample in family.samples
            if sample.name.endswith("_bucket")
        }

    def figures(self) -> dict:
        window = difference(self.before, self.after)
        return {
            "generator_loop_lags_over_100ms": over(window, LOOP_STALL_S),
            "generator_loop_lag_worst_le_s": worst_bucket(window),
        }


async def pairs_traffic(urls, pids, pairs, *, window, seconds, warmup, rate=None) -> dict:
    """Senders send to their receivers; everyone takes and acks its events (receivers
    the messages, senders their receipts); count and time deliveries."""
    senders = await open_all(urls, [s.token for s, _, _ in pairs])
    receivers = await open_all(urls, [r.token for _, r, _ in pairs])
    state = {"measuring": False, "stop": False}
    delivered, latencies, acked, errors = [0], [], [0], [0]
    arrivals = Arrivals()

    async def receive(conn):
        while not state["stop"]:
            try:
                event = await conn.next_event(timeout=1)
            except TimeoutError:
                continue
            if event.type == "message" and state["measuring"]:
                delivered[0] += 1
                now = time.perf_counter()
                latencies.append(now - sent_at(event["body"]))
                arrivals.arrived(now)

    async def send_window(conn, receiver_device, conversation):
        while not state["stop"]:
            try:
                await conn.send(conversation, {receiver_device: body()}, timeout=30)
            except Exception:  # noqa: BLE001 - counted; the benchmark goes on
                errors[0] += 1
                await asyncio.sleep(0.05)
                continue
            if state["measuring"]:
                acked[0] += 1

    async def send_paced(conns_pairs, per_second):
        """One clock for all senders: message k goes out at start + k / rate."""
        start = time.perf_counter()
        k = 0
        tasks = set()
        while not state["stop"]:
            due = start + k / per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn, device, conversation = conns_pairs[k % len(conns_pairs)]
            task = asyncio.create_task(conn.send(conversation, {device: body()}, timeout=30))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if state["measuring"]:
                acked[0] += 1
            k += 1
        await asyncio.gather(*tasks, return_exceptions=True)

    # Senders take their events too (the `delivered` receipts), as a client does: each
    # is acked, and the server's work for a message includes the ack of its receipt.
    tasks = [asyncio.create_task(receive(c)) for c in receivers + senders]
    triples = [(s, r.device_id, c) for s, (_, r, c) in zip(senders, pairs, strict=True)]
    if rate:
        tasks.append(asyncio.create_task(send_paced(triples, rate)))
    else:
        for conn, device, conversation in triples:
            tasks += [
                asyncio.create_task(send_window(conn, device, conversation)) for _ in range(window)
            ]
    await asyncio.sleep(warmup)
    # The tables were empty when the setup analyzed them; after the warmup they hold
    # what a running server's do, and autovacuum (off on the development machine)
    # would have analyzed them by now. Without this the planner keeps planning for
    # empty tables: the first run on a fresh database delivered 1,100/s, the second
    # on the same database 1,750/s.
    await asyncio.to_thread(analyze)
    server_pauses = ServerPauses(urls)
    paused_before = await server_pauses.read()
    state["measuring"] = True
    with Meter(pids) as meter, CollectorPauses() as pauses, GeneratorLoopLag() as lagged:
        await asyncio.sleep(seconds)
    state["measuring"] = False
    paused_after = await server_pauses.read()
    state["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await close_all(senders + receivers)
    return {
        "delivered_per_s": round(delivered[0] / meter.elapsed),
        "acked_sends_per_s": round(acked[0] / meter.elapsed),
        "send_errors": errors[0],
        **percentiles(latencies),
        **arrivals.figures(),
        **pauses.figures(),
        **ServerPauses.figures(paused_before, paused_after),
        **lagged.figures(),
        "server_cpu_pct": meter.server_cpu,
        "generator_cpu_pct": meter.generator_cpu,
        "postgres_cpu_pct": meter.postgres_cpu,
        "machine_busy_pct": meter.machine_busy,
        **meter.per_message(delivered[0]),
        "seconds": round(meter.elapsed, 1),
    }


# --- drain ---------------------------------------------------------------------------


async def drain(urls, pids, pair, messages: int) -> dict:
    """A device offline while `messages` queue; time from its connect to the last event."""
    sender, receiver, conversation = pair
    senders = await open_all(urls, [sender.token] * 1)
    conn = senders[0]
    semaphore = asyncio.Semaphore(64)

    async def one():
        async with semaphore:
            await conn.send(conversation, {receiver.device_id: body()}, timeout=60)

    queued_at = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(messages)))
    queue_s = time.perf_counter() - queued_at
    await close_all(senders)
    with Meter(pids) as meter:
        start = time.perf_counter()
        inbox = connection(urls[0], receiver.token)
        await inbox.start()
        count = 0
        while count < messages:
            event = await inbox.next_event(timeout=60)
            if event.type == "message":
                count += 1
        last_event_s = time.perf_counter() - start
        await inbox.wait_drained(timeout=60)
        drained_s = time.perf_counter() - start
        await inbox.aclose()
    return {
        "messages": messages,
        "queue_s": round(queue_s, 2),
        "connect_to_last_event_s": round(last_event_s, 3),
        "connect_to_drained_s": round(drained_s, 3),
        "events_per_s": round(messages / last_event_s),
        "server_cpu_pct": meter.server_cpu,
        "generator_cpu_pct": meter.generator_cpu,
    }


# --- idle ----------------------------------------------------------------------------


async def idle(urls, pids, devices, hold: float) -> dict:
    """`sockets` devices connected and heartbeating to one process; its RSS per socket."""
    sockets = len(devices)
    await asyncio.sleep(2)
    before = proc_stats(pids[0])
    started = time.perf_counter()
    conns = await open_all(urls[:1], [d.token for d in devices])
    connect_s = time.perf_counter() - started
    with Meter(pids[:1]) as meter:
        await asyncio.sleep(hold)  # heartbeats go on meanwhile
    after = proc_stats(pids[0])
    alive = sum(1 for c in conns if c.error is None)
    await close_all(conns)
    return {
        "sockets": sockets,
        "alive_after_hold": alive,
        "connect_s": round(connect_s, 1),
        "hold_s": hold,
        "server_rss_before_mib": round(before["rss_kib"] / 1024, 1),
        "server_rss_after_mib": round(after["rss_kib"] / 1024, 1),
        "rss_per_socket_kib": round((after["rss_kib"] - before["rss_kib"]) / sockets, 1),
        "server_threads": after["threads"],
        "server_cpu_pct_idle": meter.server_cpu,
        "generator_cpu_pct": meter.generator_cpu,
    }


# --- driver --------------------------------------------------------------------------


def print_result(result: dict) -> None:
    print(json.dumps(result))
    print()
    for key, value in result.items():
        print(f"{key:28} {value!s:>24}")


def population(args):
    """Made before the event loop runs: the ORM is synchronous."""
    tag = uuid.uuid4().hex[:6]
    if args.scenario in ("throughput", "latency"):
        return make_pairs(args.pairs, tag)
    if args.scenario == "drain":
        return make_pairs(1, tag)[0]
    return make_devices(args.sockets, tag)


async def scenario(args, urls, pids, people) -> dict:
    if args.scenario in ("throughput", "latency"):
        pairs = people
        result = await pairs_traffic(
            urls,
            pids,
            pairs,
            window=args.window,
            seconds=args.seconds,
            warmup=args.warmup,
            rate=args.rate if args.scenario == "latency" else None,
        )
        settings = {"pairs": args.pairs, "window": args.window}
        if args.scenario == "latency":
            settings = {"pairs": args.pairs, "rate_per_s": args.rate}
    elif args.scenario == "drain":
        result, settings = await drain(urls, pids, people, args.messages), {}
    else:
        result, settings = await idle(urls, pids, people, args.hold), {}
    return {"scenario": args.scenario, "processes": len(urls), **settings, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["throughput", "latency", "drain", "idle"])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--window", type=int, default=8, help="unacked sends per sender")
    parser.add_argument("--rate", type=int, default=500, help="latency: messages per second")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--messages", type=int, default=10_000, help="drain: queued messages")
    parser.add_argument("--sockets", type=int, default=10_000, help="idle: connected devices")
    parser.add_argument("--hold", type=float, default=40, help="idle: seconds held")
    parser.add_argument("--processes", type=int, default=1, help="daphne processes to start")
    parser.add_argument("--url", action="append", help="a running server (repeatable)")
    parser.add_argument("--database-url", help="with --url: the server's database")
    parser.add_argument("--pids", help="with --url: comma-separated server pids for CPU/RSS")
    parser.add_argument(
        "--app",
        default="config.asgi:application",
        help="the ASGI application the started servers run (bench.floor:application: "
        "Natter's frames relayed with no work, the floor under its latency; "
        "bench.floor_durable:application: the same, each send stored until acked)",
    )
    args = parser.parse_args()

    env = bench_env("natter_bench_load")
    env["NATTER_RATE_LIMITS"] = "off"
    if args.url:
        if args.database_url:
            env["DATABASE_URL"] = args.database_url
        setup_django(env)
        pids = [int(p) for p in args.pids.split(",")] if args.pids else []
        print_result(run(scenario(args, args.url, pids, population(args))))
        return
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = [
            stack.enter_context(daphne(env, Path(tmp) / f"daphne{i}.log", app=args.app))
            for i in range(args.processes)
        ]
        setup_django(env)
        urls, pids = [u for u, _ in servers], [p for _, p in servers]
        result = run(scenario(args, urls, pids, population(args)))
    print_result(result)


def run(coroutine):
    """Run the generator on uvloop, as the server runs (config/server.py): its own
    CPU, on the same two cores as the server, is what it takes from the server."""
    return asyncio.run(coroutine, loop_factory=uvloop.new_event_loop)


if __name__ == "__main__":
    main()
