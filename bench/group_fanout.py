"""Time from a group send to the last member device receiving it.

256 members online over WebSocket (the SDK), one of them sends, a Celery worker fans
out; measured per message from the send to the moment the last of the other 255
devices has it, over --messages sends one after another. By default each send waits
until the server is idle again (the previous message's 255 acks and receipts done);
--back-to-back measures under the backlog instead.

    .venv/bin/python -m bench.group_fanout --members 256 --messages 30

Needs Postgres and Redis (DATABASE_URL / REDIS_URL); uses the `natter_bench` database.
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.server import bench_env, celery_worker, daphne, proc_stats
from natter_client import NatterClient

PASSWORD = "a long pass phrase 42"


async def member(url: str, http: httpx.AsyncClient, name: str) -> NatterClient:
    await http.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    client = NatterClient(url)
    await client.login(name, PASSWORD, device_name="bench")
    return client


def cpu(pids: list[int]) -> float:
    return sum(proc_stats(pid)["cpu_s"] for pid in pids)


async def quiet(pids: list[int]) -> None:
    """Wait until the servers' CPU is idle: the previous send's acks and receipts are done."""
    last = cpu(pids)
    for _ in range(600):
        await asyncio.sleep(0.25)
        now = cpu(pids)
        if now - last < 0.01:
            return
        last = now


async def run(
    urls: list[str], pids: list[int], worker_pid: int, members: int, messages: int, settle: bool
) -> dict:
    tag = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=urls[0], timeout=60) as http:
        semaphore = asyncio.Semaphore(32)

        async def make(i):
            # Members are spread over the server processes, as a load balancer would.
            async with semaphore:
                return await member(urls[i % len(urls)], http, f"f{tag}n{i}")

        clients = await asyncio.gather(*(make(i) for i in range(members)))
    owner, rest = clients[0], clients[1:]
    r = await owner.http.request(
        "POST",
        "/api/v1/groups",
        json={"title": "bench", "member_ids": [c.user_id for c in rest]},
    )
    group = r["id"]
    conns = [c.connect("ws") for c in clients]
    for conn in conns:
        await conn.__aenter__()
    await asyncio.gather(*(c.wait_drained(timeout=60) for c in conns))
    sender, receivers = conns[0], conns[1:]
    arrivals: dict[str, list[float]] = {}

    async def listen(conn):
        while True:
            event = await conn.next_event(type="message")
            arrivals.setdefault(event["message_id"], []).append(time.perf_counter())

    listeners = [asyncio.create_task(listen(c)) for c in receivers]
    latencies = []
    before = cpu(pids), proc_stats(worker_pid), time.process_time()
    for i in range(messages):
        if settle:
            await quiet(pids)
        start = time.perf_counter()
        ack = await sender.send(group, {}, group_body=b"x" * 100)
        deadline = time.monotonic() + 30
        while len(arrivals.get(ack.message_id, ())) < len(receivers):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"message {i} reached only {len(arrivals.get(ack.message_id, ()))}"
                )
            await asyncio.sleep(0.002)
        latencies.append((max(arrivals[ack.message_id]) - start) * 1000)
    after = cpu(pids), proc_stats(worker_pid), time.process_time()
    for task in listeners:
        task.cancel()
    for conn in conns:
        await conn.__aexit__(None, None, None)
    for c in clients:
        await c.aclose()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "scenario": "group_fanout",
        "members": members,
        "messages": messages,
        "settle_between_sends": settle,
        "last_device_ms_p50": round(statistics.median(latencies), 1),
        "last_device_ms_p99": round(q[98], 1),
        "last_device_ms_max": round(latencies[-1], 1),
        "server_processes": len(pids),
        "server_cpu_s": round(after[0] - before[0], 2),
        "worker_main_cpu_s": round(after[1]["cpu_s"] - before[1]["cpu_s"], 2),
        "load_generator_cpu_s": round(after[2] - before[2], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--processes", type=int, default=1, help="daphne processes")
    parser.add_argument(
        "--back-to-back",
        action="store_true",
        help="send each message as soon as the last one arrived, without waiting for the "
        "server to finish the previous one's acks and receipts",
    )
    args = parser.parse_args()
    env = bench_env()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(daphne(env, Path(tmp) / f"daphne{n}.log"))
            for n in range(args.processes)
        ]
        worker_pid = stack.enter_context(celery_worker(env, Path(tmp) / "worker.log"))
        report = asyncio.run(
            run(
                [url for url, _ in servers],
                [pid for _, pid in servers],
                worker_pid,
                args.members,
                args.messages,
                not args.back_to_back,
            )
        )
    print(json.dumps(report))
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
