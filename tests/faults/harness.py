"""Process control for the fault suite: a private Postgres and Redis, daphne, Celery.

Nothing here touches the shared servers other tests use (127.0.0.1:5432 and :6379):
the suite runs its own Postgres cluster (initdb into a temporary directory, as the
`postgres` OS user when run as root, since initdb refuses root) and its own
redis-server, each on a free port, and points the Natter processes at them. That is
what lets a scenario stop, kill and restart any of them.

Also here: a TCP proxy that can swallow one direction or cut every connection, a
minimal raw WebSocket client (one that can stop reading, or go silent, which no
library client does), and the results table the scenarios print.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from bench.server import free_port
from config.server import COMMAND as DAPHNE

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal a process (its whole session) and wait; SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tcp_state(local_port: int, remote_port: int) -> str | None:
    """State of the 127.0.0.1 socket local_port→remote_port ('01' = ESTABLISHED), from /proc."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            return fields[3]
    return None


# --- Postgres ------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/*/bin (Debian), else wherever initdb is on PATH."""
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
    )
    if dirs:
        return Path(dirs[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no Postgres binaries: apt-get install postgresql (initdb, postgres)")
    return Path(initdb).resolve().parent


class PrivatePostgres:
    """A throw-away cluster in `workdir`, trust auth on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "pg"
        self.data = self.dir / "data"
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        # initdb refuses to run as root: then the cluster belongs to the `postgres` user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.log_path = self.dir / "postgres.log"

    def _as_owner(self) -> dict:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            cwd=self.dir,
            check=True,
            capture_output=True,
            **self._as_owner(),
        )

    def start(self) -> None:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                # A test cluster: durability against power loss is not what is tested.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as_owner(),
        )
        wait_for(self.answers, 30, "the private Postgres")

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                raise RuntimeError("postgres exited:\n" + self.log_path.read_text()[-2000:])
            return False
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, like `pg_ctl stop -m fast`."""
        _stop(self.proc, signal.SIGINT, timeout=30)
        self.proc = None

    def url(self, database: str = "natter") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- Redis ---------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own, without persistence: a restart comes back empty."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--maxclients",
                "10000",
            ],
            stdout=self.log_path.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.answers, 20, "the private Redis")

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self.proc = None


# --- Natter's processes ---------------------------------------------------------------------


# The settings every scenario runs with (docs/operations.md has what each means): a
# short heartbeat so silence is noticed in 5 s, sweeps every second, no send limit.
FAULT_ENV = {
    "HEARTBEAT_S": "2",
    "PRESENCE_GRACE_S": "1",
    "PRESENCE_SWEEP_S": "1",
    "FANOUT_SWEEP_EVERY_S": "1",
    "FANOUT_STALE_S": "2",
    "SEND_RATE_PER_MINUTE": "1000000",
    "DB_POOL_MAX": "12",
    "NATTER_FAST_PASSWORD_HASHER": "1",
    "LOG_LEVEL": "WARNING",
    "NATTER_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


class Natter:
    """daphne, a Celery worker and beat, on the private Postgres and Redis."""

    def __init__(self, workdir: Path, pg: PrivatePostgres, rds: PrivateRedis):
        self.dir = workdir
        self.pg, self.redis = pg, rds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A second web process, started by the scenarios that need one.
        self.port2 = free_port()
        self.url2 = f"http://127.0.0.1:{self.port2}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.tag = uuid.uuid4().hex[:6]
        # Nothing of the caller's servers leaks in: every URL is ours.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "PRESENCE_REDIS_URL", "CHANNEL_LAYER_URLS")
        }
        env.update(FAULT_ENV)
        env.update(
            DATABASE_URL=pg.url("natter"),
            REDIS_URL=rds.url,
            DJANGO_SETTINGS_MODULE="config.settings",
            MEDIA_ROOT=str(workdir / "media"),
            FILE_UPLOAD_TEMP_DIR=str(workdir / "upload-tmp"),
        )
        (workdir / "upload-tmp").mkdir(exist_ok=True)
        self.env = env

    def commands(self) -> dict[str, list[str]]:
        def daphne(port: int) -> list[str]:
            return [
                *DAPHNE,
                "-e",
                f"tcp:port={port}:interface=127.0.0.1:backlog=2048",
                "--websocket_timeout",
                "-1",
                "config.asgi:application",
            ]

        return {
            "daphne": daphne(self.port),
            "daphne2": daphne(self.port2),
            "worker": [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "-l",
                "info",
                "--pool",
                "solo",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"faults-{self.tag}@%h",
            ],
            "beat": [
                str(BIN / "celery"),
                "-A",
                "config",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(self.dir / "celerybeat-schedule"),
            ],
        }

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=self.env,
            check=True,
        )

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str) -> float:
        """Start one process and wait until it is ready; return when it was (monotonic)."""
        path = self.log_path(name)
        offset = path.stat().st_size if path.exists() else 0
        with path.open("a") as log:
            log.write(f"\n=== start {name} at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            offset = log.tell()
            self.procs[name] = subprocess.Popen(
                self.commands()[name],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.procs[name]

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            if name.startswith("daphne"):
                url = self.url if name == "daphne" else self.url2
                return httpx.get(url + "/", timeout=1).status_code == 200
            with path.open(errors="replace") as f:
                f.seek(offset)
                text = f.read()
            return ("ready." in text) if name == "worker" else ("beat: Starting" in text)

        wait_for(ready, 60, f"{name} to start")
        return time.monotonic()

    def start_all(self) -> None:
        for name in ("daphne", "worker", "beat"):
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a process (its whole session) and reap it."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        _stop(self.procs.pop(name, None))

    def stop_all(self) -> None:
        for name in ("daphne2", "daphne", "beat", "worker"):
            self.stop(name)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def sql(self, query: str, *params) -> list[tuple]:
        """Run one statement on the private database (for checks, not for traffic)."""
        with psycopg.connect(self.pg.url("natter"), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []


class Stack:
    """Everything a scenario needs, owned by the suite: see the module docstring."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="natter-faults-"))
        # The postgres user must be able to reach its directory inside.
        os.chmod(self.dir, 0o755)
        self.pg = PrivatePostgres(self.dir)
        self.redis = PrivateRedis(self.dir)
        self.natter = Natter(self.dir, self.pg, self.redis)

    def start(self) -> None:
        self.pg.init()
        self.pg.start()
        self.redis.start()
        self.pg.create_database("natter")
        self.natter.migrate()
        self.natter.start_all()

    def close(self, *, keep_dir: bool = False) -> None:
        self.natter.stop_all()
        self.redis.stop()
        self.pg.stop()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def ensure_healthy(self) -> None:
        """Bring back whatever a previous scenario left stopped."""
        if not (self.pg.proc and self.pg.proc.poll() is None):
            self.pg.start()
        if not self.redis.answers():
            self.redis.stop()
            self.redis.start()
        for name in ("daphne", "worker", "beat"):
            if not self.natter.alive(name):
                self.natter.procs.pop(name, None)
                self.natter.start(name)


# --- A TCP proxy with faults -----------------------------------------------------------------


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target; can swallow the server's bytes or cut all.

    `swallow_replies = True` drops everything the server sends while the client's
    bytes still go through: requests arrive and are acted on, their answers are
    lost. `cut()` closes every connection at once, like a network failure.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.swallow_replies = False
        self.swallowed = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, c_reader, c_writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            c_writer.close()
            return
        pair = (c_writer, s_writer)
        self._conns.add(pair)

        async def pipe(reader, writer, downstream: bool):
            try:
                while data := await reader.read(65536):
                    if downstream and self.swallow_replies:
                        self.swallowed += len(data)
                        continue
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        try:
            await asyncio.gather(pipe(c_reader, s_writer, False), pipe(s_reader, c_writer, True))
        finally:
            self._conns.discard(pair)

    def cut(self) -> int:
        """Abort every connection (both sides); return how many there were."""
        n = len(self._conns)
        for c_writer, s_writer in list(self._conns):
            for w in (c_writer, s_writer):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._conns.clear()
        return n

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        # Cut connections end their pipes; waiting (not cancelling) keeps asyncio quiet.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()


# --- A raw WebSocket client ------------------------------------------------------------------


class RawWebSocket:
    """The protocol by hand on a blocking socket: a client that can stop reading.

    Library clients read (and answer pings) in the background; this one reads only
    when asked to, so it can play a slow consumer (keeps writing, stops reading) or
    a half-open peer (does nothing at all). A small receive buffer keeps the kernel
    from absorbing what the server sends on our behalf.
    """

    def __init__(self, port: int, token: str, *, rcvbuf: int = 32 * 1024):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.server_port = port
        self.local_port = self.sock.getsockname()[1]
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws/v1/ HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        self.close_code: int | None = None

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        """One frame: (opcode, payload). Answers pings; records a close frame's code."""
        while True:
            b0, b1 = self._need(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._need(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._need(8))[0]
            payload = self._need(length)
            if opcode == 0x9:  # ping: answer it, as every client does while it reads
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
            return opcode, payload

    def recv_json(self) -> dict | None:
        """The next text frame as JSON; None when a close frame came instead."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                return None

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, frame: dict) -> None:
        self._send(0x1, json.dumps(frame).encode())

    def server_side_state(self) -> str | None:
        """TCP state of the server's end of this connection ('01' while established)."""
        return tcp_state(self.server_port, self.local_port)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- The results table ---------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    attempted: int
    acked: int
    delivered: int
    lost: int
    duplicated: int
    redelivered: int
    p50_ms: float | None
    p99_ms: float | None
    recovery_s: float | None

    COLUMNS = (
        ("scenario", 34),
        ("attempted", 9),
        ("acked", 6),
        ("delivered", 9),
        ("lost", 4),
        ("duplicated", 10),
        ("redelivered", 11),
        ("p50 ms", 7),
        ("p99 ms", 7),
        ("recovery s", 10),
    )

    def cells(self) -> list[str]:
        def ms(v):
            return "-" if v is None else f"{v:.0f}"

        return [
            self.scenario,
            str(self.attempted),
            str(self.acked),
            str(self.delivered),
            str(self.lost),
            str(self.duplicated),
            str(self.redelivered),
            ms(self.p50_ms),
            ms(self.p99_ms),
            "-" if self.recovery_s is None else f"{self.recovery_s:.1f}",
        ]

    @classmethod
    def header(cls) -> str:
        return " ".join(
            name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(cls.COLUMNS)
        )

    def line(self) -> str:
        return " ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, (_, w)) in enumerate(zip(self.cells(), self.COLUMNS, strict=True))
        )

    def markdown(self) -> str:
        return "| " + " | ".join(self.cells()) + " |"

    @classmethod
    def markdown_header(cls) -> str:
        names = [n for n, _ in cls.COLUMNS]
        return (
            "| "
            + " | ".join(names)
            + " |\n|"
            + "|".join("---" if i == 0 else "---:" for i in range(len(names)))
            + "|"
        )


class ResultsTable:
    """Prints the header once and a row per scenario, straight to the terminal."""

    def __init__(self, write_line):
        self.write_line = write_line
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def emit(self, row: Row, note: str = "") -> None:
        """Print the row (the header first, once); `note` says what else was measured."""
        if not self.rows:
            self.write_line("")
            self.write_line(Row.header())
        self.rows.append(row)
        self.notes.append(note)
        self.write_line(row.line())
        if note:
            self.write_line(f"    {note}")

    def markdown(self) -> str:
        table = "\n".join([Row.markdown_header(), *(r.markdown() for r in self.rows)])
        notes = [f"- {r.scenario}: {n}" for r, n in zip(self.rows, self.notes, strict=True) if n]
        return table + ("\n\n" + "\n".join(notes) if notes else "")
