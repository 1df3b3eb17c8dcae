"""What presence costs: Redis operations, channel-layer messages and server CPU.

N users each hold one WebSocket (spread over two daphne processes), ping at the
server's heartbeat and watch `--watch` random others (`presence.subscribe`); a
fraction of them reconnects every minute (close, wait `--away` seconds, connect to
the other process, subscribe again). After a warm-up the scenario measures, over
`--duration` seconds:

- Redis operations per second from `INFO commandstats` deltas, on two private Redis
  servers it starts itself: one holds the channel layer (and cache), the other the
  presence registry (`PRESENCE_REDIS_URL`), so the two costs are told apart and no
  other client pollutes the counts. Commands run inside Lua scripts are counted too.
- channel-layer messages per second: every message a process takes off Redis is
  popped from its backup queue with one ZPOPMIN (channels-redis 4.3), so the
  ZPOPMIN count is the number of layer messages delivered to processes;
- CPU of the two server processes (user + system, from /proc);
- presence frames the clients received.

    .venv/bin/python -m bench.presence_cost                       # 2,000 users, 20 watched, 10%/min, 120 s
    .venv/bin/python -m bench.presence_cost --duration 60 --away 10

Needs Postgres (DATABASE_URL, database `natter_bench_presence`) and a redis-server
binary on PATH. Prints one JSON line, then a table.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import websockets

from bench.server import ROOT, bench_env, daphne, free_port, proc_stats


@contextlib.contextmanager
def redis_server(workdir: Path):
    """A private, throw-away Redis: its commandstats count this benchmark only."""
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--maxclients",
            "10000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in client.info("commandstats").items()
    }


def delta(after: dict, before: dict) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def create_users(env: dict, n: int) -> list[dict]:
    """Users and devices straight into the database: the setup is not what is measured."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")})
    import django

    django.setup()
    from apps.accounts.models import Device, User

    tag = uuid.uuid4().hex[:6]
    users = User.objects.bulk_create(
        [User(username=f"pc{tag}n{i}", password="!") for i in range(n)], batch_size=1000
    )
    tokens = [secrets.token_urlsafe(32) for _ in users]
    Device.objects.bulk_create(
        [
            Device(user=u, name="bench", token_hash=Device.hash_token(t))
            for u, t in zip(users, tokens, strict=True)
        ],
        batch_size=1000,
    )
    return [{"id": u.public_id, "token": t} for u, t in zip(users, tokens, strict=True)]


class Counters:
    def __init__(self):
        self.connects = 0
        self.failures = 0
        self.presence_frames = 0
        self.snapshot_frames = 0
        self.closed_by_server = 0


async def session(url: str, user: dict, watched: list[str], heartbeat: float, c: Counters, ready):
    """One device: connect, subscribe, then ping and read until cancelled."""
    ws_url = url.replace("http://", "ws://") + "/ws/v1/"
    try:
        async with websockets.connect(
            ws_url,
            additional_headers={"Authorization": f"Bearer {user['token']}"},
            ping_interval=None,
            compression=None,
            close_timeout=2,
            open_timeout=60,
        ) as ws:
            while '"drained"' not in await ws.recv():
                pass
            await ws.send(
                json.dumps({"type": "presence.subscribe", "id": "s", "user_ids": watched})
            )
            while '"ok"' not in (frame := await ws.recv()):
                c.snapshot_frames += '"presence"' in frame
            c.connects += 1
            ready.set()

            async def pinger():
                await asyncio.sleep(random.uniform(0, heartbeat))
                while True:
                    await ws.send('{"type":"ping"}')
                    await asyncio.sleep(heartbeat)

            ping_task = asyncio.create_task(pinger())
            try:
                async for frame in ws:
                    if '"type":"presence"' in frame:
                        c.presence_frames += 1
            finally:
                ping_task.cancel()
            c.closed_by_server += 1
    except (OSError, websockets.WebSocketException, TimeoutError):
        c.failures += 1
        ready.set()


async def run(args, urls: list[str], pids: list[int], layer, registry) -> dict:
    users = args.people
    n = len(users)
    c = Counters()
    watch = {
        i: [users[j]["id"] for j in random.sample([k for k in range(n) if k != i], args.watch)]
        for i in range(n)
    }
    tasks: dict[int, asyncio.Task] = {}
    where: dict[int, int] = {}

    async def start(i: int, server: int) -> None:
        ready = asyncio.Event()
        where[i] = server
        tasks[i] = asyncio.create_task(
            session(urls[server], users[i], watch[i], args.heartbeat, c, ready)
        )
        await ready.wait()

    semaphore = asyncio.Semaphore(50)

    async def start_bounded(i):
        async with semaphore:
            await start(i, i % len(urls))

    ramp = time.perf_counter()
    await asyncio.gather(*(start_bounded(i) for i in range(n)))
    ramp_s = time.perf_counter() - ramp
    await asyncio.sleep(args.warmup)

    reconnects = 0
    stop = asyncio.Event()

    async def churn():
        nonlocal reconnects
        per_second = n * args.reconnect / 60
        while not stop.is_set():
            await asyncio.sleep(random.expovariate(per_second))
            i = random.randrange(n)
            task = tasks.get(i)
            if task is None or task.done():
                continue
            reconnects += 1
            asyncio.create_task(reconnect(i, task))

    async def reconnect(i, task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(args.away)
        await start(i, (where[i] + 1) % len(urls))

    layer_before, registry_before = commandstats(layer), commandstats(registry)
    cpu_before = [proc_stats(p)["cpu_s"] for p in pids]
    frames_before = c.presence_frames
    started = time.perf_counter()
    churner = asyncio.create_task(churn())
    await asyncio.sleep(args.duration)
    elapsed = time.perf_counter() - started
    layer_d = delta(commandstats(layer), layer_before)
    registry_d = delta(commandstats(registry), registry_before)
    cpu = [proc_stats(p)["cpu_s"] - b for p, b in zip(pids, cpu_before, strict=True)]
    frames = c.presence_frames - frames_before
    stop.set()
    churner.cancel()
    connected = sum(1 for t in tasks.values() if not t.done())
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)

    def per_s(x):
        return round(x / elapsed, 1)

    def top(d):
        return {k: per_s(v) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:8]}

    return {
        "scenario": "presence_cost",
        "users": n,
        "watching_each": args.watch,
        "reconnect_per_min": args.reconnect,
        "away_s": args.away,
        "heartbeat_s": args.heartbeat,
        "servers": len(urls),
        "measured_s": round(elapsed, 1),
        "connected_at_end": connected,
        "connect_failures": c.failures,
        "ramp_s": round(ramp_s, 1),
        "reconnects": reconnects,
        "reconnects_per_s": per_s(reconnects),
        "registry_redis_ops_per_s": per_s(sum(registry_d.values())),
        "registry_redis_top": top(registry_d),
        "layer_redis_ops_per_s": per_s(sum(layer_d.values())),
        "layer_redis_top": top(layer_d),
        "redis_ops_per_s_total": per_s(sum(registry_d.values()) + sum(layer_d.values())),
        "layer_messages_per_s": per_s(layer_d.get("zpopmin", 0)),
        "presence_frames_to_clients_per_s": per_s(frames),
        "server_cpu_pct": [round(100 * s / elapsed, 1) for s in cpu],
        "server_cpu_pct_total": round(100 * sum(cpu) / elapsed, 1),
        "server_rss_kib": [proc_stats(p)["rss_kib"] for p in pids],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--watch", type=int, default=20, help="users each one watches")
    parser.add_argument(
        "--reconnect", type=float, default=0.10, help="fraction reconnecting per minute"
    )
    parser.add_argument(
        "--away", type=float, default=0.0, help="seconds a reconnecting user stays away"
    )
    parser.add_argument("--duration", type=float, default=120, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--heartbeat", type=int, default=30)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.users + 1000)), hard))

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        layer_url, layer = stack.enter_context(redis_server(tmp))
        registry_url, registry = stack.enter_context(redis_server(tmp))
        env = {
            **bench_env("natter_bench_presence"),
            "REDIS_URL": layer_url,
            "PRESENCE_REDIS_URL": registry_url,
            "HEARTBEAT_S": str(args.heartbeat),
            "DB_POOL_MAX": "10",
        }
        args.people = create_users(env, args.users)
        servers = [stack.enter_context(daphne(env, tmp / f"daphne{i}.log")) for i in (1, 2)]
        report = asyncio.run(
            run(args, [u for u, _ in servers], [p for _, p in servers], layer, registry)
        )
    print(json.dumps(report))
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
