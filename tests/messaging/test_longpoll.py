"""The long-poll consumer through the ASGI application (held without a thread)."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator

from apps.messaging import services
from config.asgi import application
from tests.messaging.helpers import send

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_batches"),
]


def poll(token: str | None, query: str, method: str = "GET") -> HttpCommunicator:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = HttpCommunicator(application, method, "/api/v1/events", headers=headers)
    communicator.scope["query_string"] = query.encode()
    return communicator


@database_sync_to_async
def make_chat(people):
    alice, bob = people.user(), people.user()
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    services.InboxEntry.objects.all().delete()
    return a1, b1, conversation


async def test_a_waiting_poll_wakes_on_the_doorbell(people):
    a1, b1, conversation = await make_chat(people)
    waiting = poll(b1.token, "cursor=0&timeout=20")
    response_task = asyncio.ensure_future(waiting.get_response(timeout=20))
    await asyncio.sleep(0.5)
    assert not response_task.done()
    await database_sync_to_async(send)(a1, conversation, [b1], body=b"wake")
    response = await asyncio.wait_for(response_task, 5)
    body = json.loads(response["body"])
    assert response["status"] == 200
    assert [e["event"]["seq"] for e in body["events"]] == [1]
    assert body["next_cursor"] == body["events"][0]["cursor"] and body["has_more"] is False


async def test_a_poll_with_nothing_to_say_answers_empty_at_its_timeout(people):
    a1, b1, conversation = await make_chat(people)
    response = await poll(b1.token, "cursor=0&timeout=1").get_response(timeout=5)
    assert json.loads(response["body"]) == {
        "events": [],
        "next_cursor": 0,
        "ephemeral": [],
        "has_more": False,
    }


async def test_revoking_the_device_answers_its_waiting_poll_with_401(people):
    from apps.accounts.services import device_revoke

    a1, b1, conversation = await make_chat(people)
    task = asyncio.ensure_future(poll(b1.token, "timeout=20").get_response(timeout=20))
    await asyncio.sleep(0.5)
    await database_sync_to_async(device_revoke)(device=b1)
    response = await asyncio.wait_for(task, 5)
    assert response["status"] == 401
    assert json.loads(response["body"])["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("timeout=31", 400, "bad_request"),
        ("cursor=-1", 400, "bad_request"),
        ("cursor=abc", 400, "bad_request"),
        ("limit=0", 400, "bad_request"),
        ("cursor=99999999999999999999999", 400, "bad_request"),
    ],
)
async def test_bad_queries_get_documented_errors(people, query, status, code):
    a1, b1, conversation = await make_chat(people)
    response = await poll(b1.token, query).get_response(timeout=5)
    assert response["status"] == status
    assert json.loads(response["body"])["error"]["code"] == code


async def test_no_token_is_401():
    response = await poll(None, "timeout=0").get_response(timeout=5)
    assert response["status"] == 401


async def test_credentials_are_checked_before_the_query():
    response = await poll(None, "timeout=99").get_response(timeout=5)
    assert response["status"] == 401


async def test_post_is_method_not_allowed(people):
    a1, b1, conversation = await make_chat(people)
    response = await poll(b1.token, "", method="POST").get_response(timeout=5)
    assert response["status"] == 405
    assert json.loads(response["body"])["error"]["code"] == "method_not_allowed"


async def test_an_api_body_over_the_limit_is_413_too_large_before_django_reads_it(settings):
    from django.conf import settings as live

    communicator = HttpCommunicator(
        application,
        "POST",
        "/api/v1/messages",
        body=b"x" * 10,
        headers=[(b"content-length", str(live.DATA_UPLOAD_MAX_MEMORY_SIZE + 1).encode())],
    )
    response = await communicator.get_response(timeout=5)
    assert response["status"] == 413
    error = json.loads(response["body"])["error"]
    assert error["code"] == "too_large" and error["max_bytes"] == live.DATA_UPLOAD_MAX_MEMORY_SIZE


async def test_a_held_poll_whose_channel_layer_fails_answers_503_unavailable(people):
    """Redis going away under a waiting poll is a retryable 503, not daphne's 500 page.

    Found by the fault suite (tests/faults, Redis restarted mid-traffic): the SDK
    rightly gives up on a 500, so long-poll clients stopped receiving.
    """
    from unittest import mock

    from channels.layers import get_channel_layer
    from redis.exceptions import ConnectionError as RedisConnectionError

    a1, b1, conversation = await make_chat(people)
    layer = get_channel_layer()

    async def receive_fails(self, channel):
        await asyncio.sleep(0.3)
        raise RedisConnectionError("Redis went away")

    with mock.patch.object(type(layer), "receive", receive_fails):
        response = await poll(b1.token, "cursor=0&timeout=20").get_response(timeout=5)
    assert response["status"] == 503
    assert dict(response["headers"])[b"retry-after"] == b"2"
    assert json.loads(response["body"])["error"]["code"] == "unavailable"
