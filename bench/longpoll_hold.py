"""How many long-polls one daphne process holds, and what each costs.

Opens N waiting `GET /api/v1/events` requests against one server process, then
measures its threads, memory and database connections while they wait, wakes each
with a real message and reports the wake latency (send issued → poll answered).

    .venv/bin/python -m bench.longpoll_hold --polls 1000

Needs Postgres and Redis (DATABASE_URL / REDIS_URL, defaults as in `make test`);
it uses a database of its own, `natter_bench`.
"""

import argparse
import asyncio
import base64
import json
import resource
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.population import keys_body
from bench.server import bench_env, daphne, proc_stats

PASSWORD = "a long pass phrase 42"


async def make_device(http: httpx.AsyncClient, name: str) -> dict:
    await http.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    r = await http.post(
        "/api/v1/auth/login", json={"username": name, "password": PASSWORD, "device_name": "bench"}
    )
    r.raise_for_status()
    device = r.json()
    keys = await http.put(
        "/api/v1/keys",
        json=keys_body(),
        headers={"Authorization": f"Bearer {device['token']}"},
    )
    keys.raise_for_status()
    return device


async def bounded(n: int, coros):
    semaphore = asyncio.Semaphore(n)

    async def run(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def raw_get(base_url: str, path: str, token: str) -> tuple[int, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split()[1]), body


def pg_connections(database: str) -> int:
    out = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-At",
            "-c",
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


async def run(url: str, pid: int, polls: int, timeout_s: int, senders: int) -> dict:
    tag = uuid.uuid4().hex[:6]
    limits = httpx.Limits(max_connections=polls + 100, max_keepalive_connections=polls + 100)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s + 30) as http:
        hub = await make_device(http, f"hub{tag}")
        hub_auth = {"Authorization": f"Bearer {hub['token']}"}
        people = await bounded(50, [make_device(http, f"p{tag}n{i}") for i in range(polls)])
        conversations = await bounded(
            50,
            [
                http.post(
                    "/api/v1/conversations/direct",
                    json={"user_id": p["user"]["id"]},
                    headers=hub_auth,
                )
                for p in people
            ],
        )
        conversation_ids = [c.json()["id"] for c in conversations]
        # Drain the `device` events logins left, so every poll below really waits.
        await bounded(
            50,
            [
                http.get(
                    "/api/v1/events",
                    params={"timeout": 0, "limit": 500},
                    headers={"Authorization": f"Bearer {p['token']}"},
                )
                for p in people
            ],
        )
        for p in people:
            r = await http.get(
                "/api/v1/events",
                params={"timeout": 0, "limit": 500},
                headers={"Authorization": f"Bearer {p['token']}"},
            )
            p["cursor"] = r.json()["next_cursor"]

        before = proc_stats(pid)
        answered: dict[int, float] = {}
        results: dict[int, dict] = {}

        async def wait(i: int, person: dict):
            # A bare HTTP/1.1 request per poll: a pooled client scanning a thousand
            # connections would measure itself, not the server.
            status, body = await raw_get(
                url,
                f"/api/v1/events?cursor={person['cursor']}&timeout={timeout_s}",
                person["token"],
            )
            answered[i] = time.perf_counter()
            results[i] = json.loads(body) if status == 200 else {"status": status}

        waiters = [asyncio.create_task(wait(i, p)) for i, p in enumerate(people)]
        # Wait until the server has taken every poll in (its CPU goes quiet), so the
        # wake latencies below do not include the queue of polls still arriving.
        settle_start = time.perf_counter()
        last = proc_stats(pid)["cpu_s"]
        while time.perf_counter() - settle_start < 60:
            await asyncio.sleep(0.5)
            now_cpu = proc_stats(pid)["cpu_s"]
            if now_cpu - last < 0.02:
                break
            last = now_cpu
        settle_s = time.perf_counter() - settle_start
        holding = proc_stats(pid)
        pg_held = pg_connections("natter_bench")
        still_waiting = sum(not w.done() for w in waiters)

        sent: dict[int, float] = {}
        sender = httpx.AsyncClient(base_url=url, timeout=30)

        async def wake(i: int):
            body = {
                "client_id": str(uuid.uuid4()),
                "conversation": conversation_ids[i],
                "kind": "text",
                "ciphertexts": [
                    {
                        "device": people[i]["device"]["id"],
                        "envelope": "message",
                        "body": base64.b64encode(b"x" * 100).decode(),
                    }
                ],
            }
            sent[i] = time.perf_counter()
            r = await sender.post("/api/v1/messages", json=body, headers=hub_auth)
            r.raise_for_status()

        start = time.perf_counter()
        await bounded(senders, [wake(i) for i in range(polls)])
        await asyncio.gather(*waiters)
        elapsed = time.perf_counter() - start
        await sender.aclose()
        after = proc_stats(pid)

    woken = [i for i, r in results.items() if len(r.get("events", [])) == 1]
    latencies = sorted((answered[i] - sent[i]) * 1000 for i in woken)
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    return {
        "scenario": "longpoll_hold",
        "polls": polls,
        "waiting_when_measured": still_waiting,
        "settle_s": round(settle_s, 1),
        "woken_with_their_message": len(woken),
        "server_threads_idle": before["threads"],
        "server_threads_holding": holding["threads"],
        "server_rss_kib_idle": before["rss_kib"],
        "server_rss_kib_holding": holding["rss_kib"],
        "rss_kib_per_poll": round((holding["rss_kib"] - before["rss_kib"]) / polls, 1),
        "pg_connections_holding": pg_held,
        "wake_senders": senders,
        "wake_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "wake_ms_p99": round(q[98], 1) if latencies else None,
        "wake_ms_max": round(latencies[-1], 1) if latencies else None,
        "wake_all_s": round(elapsed, 2),
        "server_cpu_s_wake": round(after["cpu_s"] - holding["cpu_s"], 2),
        "client_cpu_s": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_utime
            + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
            2,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--timeout", type=int, default=30, help="poll timeout, s (≤ 30)")
    parser.add_argument(
        "--senders", type=int, default=4, help="concurrent REST senders waking the polls"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.polls + 1000)), hard))
    with (
        tempfile.TemporaryDirectory() as tmp,
        daphne(bench_env(), Path(tmp) / "daphne.log") as (
            url,
            pid,
        ),
    ):
        report = asyncio.run(run(url, pid, args.polls, args.timeout, args.senders))
    print(json.dumps(report))
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
