"""Start a Natter server for a benchmark: daphne on Postgres and Redis, in its own database."""

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from config.server import COMMAND as DAPHNE

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (and to bind(0))."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: refused while any socket has the port, a connection's local end too.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1, for a server that
    binds them later.

    Taken below the kernel's ephemeral range. A port from bind(0) lies inside it,
    and between the pick and the server's own bind an outgoing connection (to
    Postgres, Redis) could get it as its local port: a cluster test's daphne failed
    in CI with "Address already in use" on the port after the one picked.
    """
    low = _ephemeral_low()
    start = 10_000 if low > 10_000 + count else 1024
    for _ in range(1000):
        base = random.randrange(start, low - count)
        ports = range(base, base + count)
        if _handed_out.isdisjoint(ports) and all(map(_bindable, ports)):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {start} and {low}")


def _pg_command(program: str, database: str, *options: str) -> None:
    parsed = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/natter"))
    subprocess.run(
        [
            program,
            *options,
            "-h",
            parsed.hostname or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            database,
        ],
        capture_output=True,
    )


def drop_databases(*databases: str) -> None:
    """Start from empty benchmark databases: each run adds its users and leaves
    messages behind, and a database grown over many runs (to 785,000 messages during
    the 2026-11-28 work) makes later runs slower and the figures not comparable."""
    for database in databases:
        _pg_command("dropdb", database, "--if-exists", "--force")


def bench_env(database: str = "natter_bench") -> dict:
    """Environment of a benchmark server: a database of its own on the same Postgres."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/natter")
    redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")
    url = urlparse(base)._replace(path=f"/{database}").geturl()
    _pg_command("createdb", database)
    return {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NATTER_FAST_PASSWORD_HASHER": "1",
        # Benchmarks measure the server, not the abuse limits.
        "SEND_RATE_PER_MINUTE": "1000000",
        "NATTER_RATE_LIMITS": "off",
        # bench.load reads each process's /metrics (its loop lag and collector pauses).
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or "bench",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def daphne(env: dict, log_path: Path, app: str = "config.asgi:application"):
    """Run migrations, start one daphne process serving `app`, yield (url, pid), stop it."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *DAPHNE,
                "-e",
                f"tcp:port={port}:interface=127.0.0.1:backlog=4096",
                "--websocket_timeout",
                "-1",
                app,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daphne did not start: " + log_path.read_text())
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # still working off a backlog
                proc.kill()
                proc.wait()


def cpu_s(pid: int | str) -> float:
    """CPU seconds (user and system) a process has used, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> dict:
    """Threads, RSS and CPU seconds of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "threads": int(fields["Threads"].strip()),
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "peak_rss_kib": int(fields["VmHWM"].split()[0]),
        "cpu_s": cpu_s(pid),
    }


def postgres_cpu_s() -> float | None:
    """CPU seconds of every Postgres process on this machine (backends, writers), or
    None when /proc does not show them to us.

    Postgres shares the machine with the server and the generator; its share is
    part of what a message costs. Backends that exit between two readings take
    their seconds with them, so read it where the pool keeps its connections open.
    """
    total, seen = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            total += cpu_s(entry.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        seen = True
    return total if seen else None


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


@contextlib.contextmanager
def celery_worker(env: dict, log_path: Path, concurrency: int = 2):
    """Start one Celery worker for the benchmark server; stop it afterwards."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "-l",
                "info",
                "--concurrency",
                str(concurrency),
                "-n",
                f"bench-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while "ready." not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker did not start: " + log_path.read_text())
                time.sleep(0.2)
            yield proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=20)
