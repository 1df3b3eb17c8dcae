"""Staff's delivery trace of a message and the stuck-queue view: times, states, no body."""

import asyncio
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from apps.groups import services as groups
from apps.messaging import delivery, services
from apps.messaging.models import InboxEntry
from tests.conftest import b64
from tests.messaging.helpers import send
from tests.security.helpers import open_socket

BODY = b"TRACE-CANARY-BODY"


def api(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    return client


def trace_page(staff, message) -> str:
    page = staff.get(f"/admin/messaging/message/{message.pk}/change/")
    assert page.status_code == 200
    content = page.content
    assert BODY not in content and b64(BODY)[:12].encode() not in content
    return content.decode()


def device_row(html: str, device) -> str:
    start = html.index(device.public_id)
    return html[start : html.index("</tr>", start)]


@pytest.mark.django_db
def test_the_trace_follows_a_direct_message_from_stored_to_read(staff, people):
    alice, bob = people.user("alice"), people.user("bob")
    a1, b1, b2 = people.device(alice), people.device(bob, "phone"), people.device(bob, "tablet")
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    message = send(a1, conversation, [b1, b2], body=BODY).message

    html = trace_page(staff, message)
    assert "stored" in html and message.created_at.strftime("%Y-%m-%d %H:%M:%S") in html
    assert "with the message" in html  # a direct message's rows are written with it
    assert "waiting to be pushed" in device_row(html, b1)
    assert bob.public_id in html

    # B1 polls: its copy is handed out (pushed), not acked yet.
    page = api(b1).get("/api/v1/events?timeout=0").json()
    cursor = next(e["cursor"] for e in page["events"] if e["event"].get("seq") == message.seq)
    html = trace_page(staff, message)
    row = device_row(html, b1)
    assert "pushed, not acked" in row and "longpoll" in row and f">{cursor}<" in row
    assert "waiting to be pushed" in device_row(html, b2)

    # B1 acks: its row is gone, bob has it delivered; then bob reads it.
    api(b1).post("/api/v1/events/ack", {"cursor": page["next_cursor"]}, format="json")
    api(b2).post(
        "/api/v1/read", {"conversation": conversation.public_id, "up_to_seq": 1}, format="json"
    )
    receipt = message.receipts.get()
    assert receipt.delivered_at and receipt.read_at
    html = trace_page(staff, message)
    assert "acked (no copy left)" in device_row(html, b1)
    assert "waiting to be pushed" in device_row(html, b2)  # its copy still waits
    recipients = html[html.index("Recipients") :]
    assert receipt.delivered_at.strftime("%Y-%m-%d %H:%M:%S") in recipients
    assert receipt.read_at.strftime("%Y-%m-%d %H:%M:%S") in recipients


@pytest.mark.django_db
def test_the_trace_shows_a_group_fanout_pending_then_done(staff, people):
    alice, bob = people.user("alice"), people.user("bob")
    a1, b1 = people.device(alice), people.device(bob)
    group = groups.group_create(creator=alice, title="Trace", member_ids=[bob.id])
    result = services.message_send(
        sender_device=a1,
        conversation_id=group.id,
        client_id=uuid.uuid4(),
        kind="text",
        ciphertexts=[],
        group_body=BODY,
    )
    html = trace_page(staff, result.message)
    assert "pending" in html
    services.message_fanout(message_id=result.message.id)
    html = trace_page(staff, result.message)
    written = InboxEntry.objects.get(message=result.message).created_at
    assert "done" in html and written.strftime("%Y-%m-%d %H:%M:%S") in html
    assert "waiting to be pushed" in device_row(html, b1)


@pytest.mark.django_db
def test_the_stuck_queue_view_lists_devices_whose_oldest_event_is_too_old(staff, people, settings):
    settings.NATTER = {**settings.NATTER, "STUCK_INBOX_MINUTES": 10}
    alice, bob, carol = people.user("alice"), people.user("bob"), people.user("carol")
    a1, b1, c1 = people.device(alice), people.device(bob, "stuckphone"), people.device(carol)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    for _ in range(3):
        send(a1, conversation, [b1], body=BODY)
    InboxEntry.objects.filter(device=b1).update(created_at=timezone.now() - timedelta(hours=2))
    InboxEntry.objects.filter(device=a1).delete()
    other, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=carol.id)
    send(a1, other, [c1], body=BODY)  # carol's copy is fresh: not stuck

    page = staff.get("/admin/accounts/device/?inbox=stuck")
    assert page.status_code == 200
    html = page.content.decode()
    assert b1.public_id in html and c1.public_id not in html and a1.public_id not in html
    assert "2\xa0hours ago" in html
    waiting = InboxEntry.objects.filter(device=b1).count()
    assert f'<td class="field-undelivered">{waiting}</td>' in html
    assert BODY.decode() not in html
    detail = staff.get(f"/admin/accounts/device/{b1.pk}/change/").content.decode()
    assert "2\xa0hours ago" in detail and BODY.decode() not in detail


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_socket_push_is_marked_for_the_trace(people):
    alice, bob = await database_sync_to_async(lambda: (people.user(), people.user()))()
    a1, b1 = await database_sync_to_async(lambda: (people.device(alice), people.device(bob)))()
    conversation, _ = await database_sync_to_async(services.conversation_direct_get_or_create)(
        user=alice, other_user_id=bob.id
    )
    await database_sync_to_async(send)(a1, conversation, [b1])
    ws = await open_socket(b1)
    last = await database_sync_to_async(
        lambda: InboxEntry.objects.filter(device=b1).order_by("-cursor").first().cursor
    )()
    for _ in range(100):  # marks are written within MARK_GATHER_S (1 s)
        mark = delivery.pushed_marks([b1.id]).get(b1.id)
        if mark is not None:
            break
        await asyncio.sleep(0.05)
    assert mark is not None and mark[0] == last and mark[2] == "ws"
    assert abs((timezone.now() - mark[1]).total_seconds()) < 10
    await ws.disconnect()
