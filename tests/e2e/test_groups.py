"""Groups end to end: a real Celery worker fans out; a killed worker loses nothing."""

import asyncio
import os
import signal
import subprocess
import time
import uuid
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from django.db.models import Count

from apps.accounts import services as accounts
from apps.groups import services as groups
from apps.messaging import events, services
from apps.messaging.models import InboxEntry, Message
from natter_client import NatterClient
from tests.e2e.conftest import BIN, ROOT

pytestmark = pytest.mark.asyncio

PASSWORD = "a long pass phrase 42"


def make_group(size: int):
    """A group of `size` members, one device each, made through the services."""
    tag = uuid.uuid4().hex[:6]
    users, devices = [], []
    for i in range(size):
        user = accounts.user_register(username=f"g{tag}m{i}", password=PASSWORD)
        device, token = accounts.device_login(
            username=user.username, password=PASSWORD, device_name="phone"
        )
        device.token = token
        users.append(user)
        devices.append(device)
    group = groups.group_create(
        creator=users[0], title=f"Big {tag}", member_ids=[u.id for u in users[1:]]
    )
    return group, users, devices


def rows_per_device(message_ids) -> dict:
    return {
        (row["device_id"], row["message_id"]): row["n"]
        for row in InboxEntry.objects.filter(message_id__in=message_ids)
        .values("device_id", "message_id")
        .annotate(n=Count("id"))
    }


async def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await database_sync_to_async(predicate)():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_256_member_group_gets_one_message_to_every_member_device_once(natter_server):
    group, users, devices = await database_sync_to_async(make_group)(256)
    sender = NatterClient(natter_server.url, token=devices[0].token)
    readers = [NatterClient(natter_server.url, token=d.token) for d in devices[1:6]]
    conns = [r.connect("ws") for r in readers]
    for c in conns:
        await c.__aenter__()
        await c.wait_drained(timeout=10)
    async with sender.connect("ws") as s:
        ack = await s.send(group.public_id, {}, group_body=b"to all 255")
    message_id = int(ack.message_id[2:])
    await wait_until(
        lambda: not Message.objects.get(id=message_id).fanout_pending, 30, "the fan-out"
    )
    counts = await database_sync_to_async(rows_per_device)([message_id])
    assert set(counts) == {(d.id, message_id) for d in devices[1:]}
    assert set(counts.values()) == {1}
    for conn in conns:
        got = await conn.next_event(timeout=10, type="message")
        assert got["body"] == b"to all 255" and got["envelope"] == "group"
        with pytest.raises(TimeoutError):
            await conn.next_event(timeout=0.3, type="message")
        await conn.__aexit__(None, None, None)
    for client in [sender, *readers]:
        await client.aclose()


def start(cmd, env, log_path):
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def test_a_worker_killed_mid_fan_out_loses_nothing_and_duplicates_nothing(
    natter_server, tmp_path
):
    group, users, devices = await database_sync_to_async(make_group)(256)

    @database_sync_to_async
    def send_many(n):
        # Store the messages without queueing their fan-outs: the durable job is the
        # row, and the sweeper of this test's own beat is what queues them.
        with mock.patch.object(events, "fanout_on_commit"):
            return [
                services.message_send(
                    sender_device=devices[0],
                    conversation_id=group.id,
                    client_id=uuid.uuid4(),
                    kind="text",
                    ciphertexts=[],
                    group_body=b"m%d" % i,
                ).message.id
                for i in range(n)
            ]

    message_ids = await send_many(30)
    # A broker of its own, so the session's worker cannot take these tasks.
    env = {
        **natter_server.env,
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "FANOUT_SWEEP_EVERY_S": "1",
        "FANOUT_STALE_S": "1",
    }
    await asyncio.to_thread(
        subprocess.run, ["redis-cli", "-n", "9", "flushdb"], check=True, capture_output=True
    )
    celery = str(BIN / "celery")
    worker_cmd = [
        celery,
        "-A",
        "config",
        "worker",
        "-l",
        "info",
        "--concurrency",
        "1",
        "-n",
        f"doomed-{uuid.uuid4().hex[:6]}@%h",
    ]
    beat = start(
        [
            celery,
            "-A",
            "config",
            "beat",
            "-l",
            "info",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        env,
        tmp_path / "beat.log",
    )
    worker = start(worker_cmd, env, tmp_path / "worker1.log")
    pending = Message.objects.filter(id__in=message_ids, fanout_pending=True)
    try:
        # Kill the worker (the whole process group, SIGKILL) once it is mid-way.
        await wait_until(lambda: pending.count() < 30, 60, "the first fan-out")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        left = await database_sync_to_async(pending.count)()
        assert 0 < left < 30, "the kill must land in the middle of the fan-outs"
        worker = start(
            [*worker_cmd[:-2], "-n", f"heir-{uuid.uuid4().hex[:6]}@%h"],
            env,
            tmp_path / "worker2.log",
        )
        await wait_until(lambda: not pending.exists(), 90, "the sweeper and the new worker")
    finally:
        for proc in (worker, beat):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait(timeout=20)
    counts = await database_sync_to_async(rows_per_device)(message_ids)
    expected = {(d.id, m) for d in devices[1:] for m in message_ids}
    assert set(counts) == expected  # nothing lost
    assert set(counts.values()) == {1}  # nothing duplicated
