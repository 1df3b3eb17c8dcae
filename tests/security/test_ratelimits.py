"""Rate limits: atomic token buckets in Redis, on REST, the WebSocket and new connections."""

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from apps.common import ratelimit, rediscache
from apps.common.errors import RateLimited
from tests.security.helpers import (
    api,
    closed_with,
    direct_chat,
    next_of,
    open_socket,
    poll,
    reply_to,
    send_body,
    send_frame,
    socket,
)

ROOT = Path(__file__).resolve().parents[2]
FOREIGN_IP = "203.0.113.7"  # TEST-NET-3: never loopback, so never exempt


def _hits_at_once(n: int, **limit) -> list[int | None]:
    """Fire n hits of one bucket from n threads released together; their retry_after or None."""
    barrier = threading.Barrier(n)

    def hit(_):
        barrier.wait()
        try:
            ratelimit.rate_limit_hit(**limit)
        except RateLimited as error:
            return error.extra["retry_after"]
        return None

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(hit, range(n)))


def test_exactly_limit_hits_pass_when_many_threads_hit_one_bucket_at_once():
    assert django_settings.REDIS_URL, "this test is about the Redis buckets"
    key = uuid.uuid4().hex
    results = _hits_at_once(40, scope="t", key=key, limit=10, period_s=60)
    assert results.count(None) == 10
    assert all(r is not None and 1 <= r <= 6 for r in results if r is not None)


@pytest.mark.asyncio
async def test_exactly_limit_hits_pass_when_many_tasks_hit_one_bucket_at_once():
    key = uuid.uuid4().hex
    results = await asyncio.gather(
        *[ratelimit.arate_limit_hit(scope="t", key=key, limit=7, period_s=60) for _ in range(30)],
        return_exceptions=True,
    )
    assert results.count(None) == 7
    assert all(isinstance(r, RateLimited) for r in results if r is not None)


def test_the_bucket_refills_at_its_rate_and_a_burst_is_the_bucket_size():
    key = uuid.uuid4().hex
    limit = {"scope": "t", "key": key, "limit": 20, "period_s": 1, "burst": 5}
    for _ in range(5):
        ratelimit.rate_limit_hit(**limit)
    with pytest.raises(RateLimited) as refused:
        ratelimit.rate_limit_hit(**limit)
    assert refused.value.extra["retry_after"] == 1
    time.sleep(0.12)  # 20 tokens a second: two are back
    ratelimit.rate_limit_hit(**limit)


def test_a_refused_hit_takes_no_token():
    key = uuid.uuid4().hex
    limit = {"scope": "t", "key": key, "limit": 1, "period_s": 0.3}
    ratelimit.rate_limit_hit(**limit)
    for _ in range(20):
        with pytest.raises(RateLimited):
            ratelimit.rate_limit_hit(**limit)
    time.sleep(0.35)
    ratelimit.rate_limit_hit(**limit)  # the refusals did not push the next token back


def test_the_embedded_fallback_counts_the_same_way(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert rediscache.sync_client() is None
    results = _hits_at_once(20, scope="t", key=uuid.uuid4().hex, limit=4, period_s=60)
    assert results.count(None) == 4


def test_hits_of_several_keys_in_one_call_count_as_one_at_a_time():
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    limit = {"scope": "t", "limit": 1, "period_s": 60, "burst": 2}
    results = ratelimit.rate_limit_hit_many(keys=[a, a, b, a, b, b], **limit)
    assert [r is None for r in results] == [True, True, True, False, True, False]
    assert all(r.extra["retry_after"] >= 1 for r in results if r is not None)
    with pytest.raises(RateLimited):  # the buckets are the single hit's buckets
        ratelimit.rate_limit_hit(key=a, **limit)


def test_hits_in_one_call_find_the_script_again_after_redis_lost_it():
    assert django_settings.REDIS_URL, "this test is about the Redis buckets"
    key = uuid.uuid4().hex
    limit = {"scope": "t", "limit": 1, "period_s": 60, "burst": 2}
    ratelimit.rate_limit_hit_many(keys=[key], **limit)
    rediscache.sync_client().script_flush()  # as after a Redis restart
    results = ratelimit.rate_limit_hit_many(keys=[key, key], **limit)
    # The hits that found no script took no token: run again, they count once.
    assert [r is None for r in results] == [True, False]


def test_hits_in_one_call_count_the_same_on_the_embedded_fallback(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert rediscache.sync_client() is None
    key = uuid.uuid4().hex
    results = ratelimit.rate_limit_hit_many(
        scope="t", keys=[key] * 4, limit=1, period_s=60, burst=3
    )
    assert [r is None for r in results] == [True, True, True, False]


def test_rate_limits_off_turns_every_limit_off(settings):
    settings.NATTER = {**settings.NATTER, "RATE_LIMITS": False}
    key = uuid.uuid4().hex
    for _ in range(50):
        ratelimit.rate_limit_hit(scope="t", key=key, limit=1, period_s=60)


def test_natter_rate_limits_off_in_the_environment_is_read():
    code = "from django.conf import settings; print(settings.NATTER['RATE_LIMITS'])"
    out = {}
    for value in ("off", "on"):
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "NATTER_RATE_LIMITS": value,
        }
        out[value] = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    assert out == {"off": "False", "on": "True"}


def test_default_limits_let_a_busy_bot_send_100_messages_a_second():
    conf = django_settings.NATTER
    assert conf["SEND_RATE"] >= 150 and conf["SEND_BURST"] >= 500
    assert conf["CONNECT_RATE"] >= 100 and conf["KEY_CLAIM_RATE"] >= 600
    key = uuid.uuid4().hex
    # Five seconds of a bot at 100 sends a second, as fast as they come: never refused.
    for _ in range(500):
        ratelimit.rate_limit_hit(
            scope="send", key=key, limit=conf["SEND_RATE"], period_s=1, burst=conf["SEND_BURST"]
        )


# --- REST: 429 with Retry-After -----------------------------------------------------


@pytest.mark.django_db
def test_rest_send_over_the_limit_is_429_with_retry_after_and_nothing_stored(people, settings):
    from apps.messaging.models import Message
    from apps.messaging.services import conversation_direct_get_or_create

    settings.NATTER = {**settings.NATTER, "SEND_RATE": 1, "SEND_BURST": 2}
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    answers = [
        api(a1).post("/api/v1/messages", send_body(conversation, [b1]), format="json")
        for _ in range(3)
    ]
    assert [r.status_code for r in answers] == [201, 201, 429]
    error = answers[2].json()["error"]
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1
    assert answers[2]["Retry-After"] == str(error["retry_after"])
    assert Message.objects.count() == 2


@pytest.mark.django_db
def test_a_burst_of_sends_over_the_limit_refuses_only_the_sends_past_it(people, settings):
    from apps.messaging import services
    from apps.messaging.models import Message

    settings.NATTER = {**settings.NATTER, "SEND_RATE": 1, "SEND_BURST": 2}
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    requests = [
        services.SendRequest(
            sender_device=a1,
            conversation_id=conversation.id,
            client_id=uuid.uuid4(),
            kind="text",
            ciphertexts=[services.Ciphertext(b1.id, "message", b"x")],
        )
        for _ in range(3)
    ]
    requests.insert(1, requests[0])  # the same send twice takes one token
    results = services.message_send_many(requests=requests)
    assert [type(r).__name__ for r in results] == [
        "SendResult",
        "SendResult",
        "SendResult",
        "RateLimited",
    ]
    assert results[1].duplicate and results[1].message.id == results[0].message.id
    assert Message.objects.count() == 2


@pytest.mark.django_db
def test_logins_are_limited_per_username(people, settings):
    settings.NATTER = {**settings.NATTER, "LOGIN_RATE": 3}
    user = people.user()
    body = {"username": user.username, "password": "wrong", "device_name": "x"}
    codes = [api().post("/api/v1/auth/login", body, format="json").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # Another username is another bucket.
    other = people.user()
    body["username"] = other.username
    assert api().post("/api/v1/auth/login", body, format="json").status_code == 401


# --- The WebSocket: rate_limited with retry_after, then 4429 for a socket that keeps on --


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_socket_over_the_send_limit_gets_rate_limited_then_4429(people, settings):
    settings.NATTER = {**settings.NATTER, "SEND_RATE": 1, "SEND_BURST": 2, "ABUSE_ERRORS": 5}
    _, (a1, b1), conversation = await direct_chat(people, "alice", "bob")
    ws = await open_socket(a1)
    replies = [
        await reply_to(ws, send_frame(conversation, [b1], frame_id=f"s{i}")) for i in range(3)
    ]
    assert [r["type"] for r in replies] == ["ack", "ack", "error"]
    assert replies[2]["code"] == "rate_limited" and replies[2]["retry_after"] >= 1
    assert replies[2]["ref"] == "s2"
    # A client that ignores retry_after and keeps sending is cut off.
    for i in range(3, 10):
        await ws.send_json_to(send_frame(conversation, [b1], frame_id=f"s{i}"))
    assert await closed_with(ws) == 4429


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_typing_is_limited_by_the_same_buckets(people, settings):
    settings.NATTER = {**settings.NATTER, "TYPING_RATE": 2}
    _, (a1, _), conversation = await direct_chat(people, "alice", "bob")
    ws = await open_socket(a1)
    frame = {"type": "typing", "conversation": conversation.public_id, "state": "composing"}
    replies = [await reply_to(ws, {**frame, "id": i}) for i in range(3)]
    assert [r["type"] for r in replies] == ["ok", "ok", "error"]
    assert replies[2]["code"] == "rate_limited" and 1 <= replies[2]["retry_after"] <= 5
    await ws.disconnect()


# --- New connections per client address ---------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_new_sockets_per_address_are_limited_and_refused_with_4429(people, settings):
    settings.NATTER = {**settings.NATTER, "CONNECT_RATE": 1, "CONNECT_BURST": 2}
    _, (a1, _), _ = await direct_chat(people, "alice", "bob")
    for _ in range(2):
        ws = await open_socket(a1, client_ip=FOREIGN_IP)
        await ws.disconnect()
    refused = socket(a1, client_ip=FOREIGN_IP)
    assert (await refused.connect())[0]
    error = await next_of(refused, "error")
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1 and error["ref"] is None
    assert await closed_with(refused) == 4429
    # Unauthenticated attempts count too: they cost an authentication each.
    anonymous = socket(None, client_ip=FOREIGN_IP)
    await anonymous.connect()
    assert (await next_of(anonymous, "error"))["code"] == "rate_limited"
    # Another address, and loopback (a local proxy), are not held back.
    other = await open_socket(a1, client_ip="198.51.100.9")
    await other.disconnect()
    for _ in range(3):
        local = await open_socket(a1, client_ip="127.0.0.1")
        await local.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_long_polls_count_as_new_connections_of_their_address(people, settings):
    settings.NATTER = {**settings.NATTER, "CONNECT_RATE": 1, "CONNECT_BURST": 2}
    _, (a1, _), _ = await direct_chat(people, "alice", "bob")
    # The socket and the polls of one address share its bucket.
    ws = await open_socket(a1, client_ip=FOREIGN_IP)
    await ws.disconnect()
    status, _, _ = await poll(a1, client_ip=FOREIGN_IP)
    assert status == 200
    status, headers, body = await poll(a1, client_ip=FOREIGN_IP)
    assert status == 429 and int(headers[b"retry-after"]) >= 1
    assert b'"rate_limited"' in body
    status, _, _ = await poll(a1, client_ip="127.0.0.1")
    assert status == 200


@pytest.mark.django_db
def test_the_long_poll_view_counts_connections_too(people, settings):
    settings.NATTER = {**settings.NATTER, "CONNECT_RATE": 1, "CONNECT_BURST": 1}
    device = people.device(people.user())
    client = api(device)
    first = client.get("/api/v1/events?timeout=0", REMOTE_ADDR=FOREIGN_IP)
    second = client.get("/api/v1/events?timeout=0", REMOTE_ADDR=FOREIGN_IP)
    assert (first.status_code, second.status_code) == (200, 429)
    assert int(second["Retry-After"]) >= 1


def test_exempt_addresses_are_networks():
    assert ratelimit.ip_exempt("127.0.0.1") and ratelimit.ip_exempt("127.8.0.1")
    assert ratelimit.ip_exempt("::1")
    assert not ratelimit.ip_exempt(FOREIGN_IP) and not ratelimit.ip_exempt("not an ip")
