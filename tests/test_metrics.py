"""`/metrics`: who may scrape it, and that what happens shows up in it."""

import re
import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.groups.services import group_create
from apps.messaging.services import conversation_direct_get_or_create

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_only_staff_or_the_metrics_token_may_scrape(people, staff, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert Client().get("/metrics").status_code == 401
    user = people.user()
    plain = Client()
    plain.force_login(user)
    assert plain.get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
    page = staff.get("/metrics")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/plain")
    for name in (
        "natter_connected_sockets",
        "natter_longpolls_waiting",
        "natter_inbox_depth",
        "natter_fanout_lag_seconds",
        "natter_delivery_latency_seconds_bucket",
        "natter_event_loop_lag_seconds_bucket",
        "natter_gc_pause_seconds_bucket",
    ):
        assert name in page.content.decode()


def test_sends_acks_and_pending_fanout_are_counted(people, staff):
    alice, bob = people.user(), people.user()
    a, b = people.device(alice), people.device(bob)
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    before = staff.get("/metrics").content.decode()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {a.token}")
    body = {
        "client_id": str(uuid.uuid4()),
        "conversation": conversation.public_id,
        "kind": "text",
        "ciphertexts": [{"device": b.public_id, "envelope": "message", "body": "AAAA"}],
    }
    assert client.post("/api/v1/messages", body, format="json").status_code == 201
    assert client.post("/api/v1/messages", body, format="json").status_code == 200
    group = group_create(creator=alice, title="G", member_ids=[bob.id])
    from apps.messaging.services import message_send

    message_send(
        sender_device=a,
        conversation_id=group.id,
        client_id=uuid.uuid4(),
        kind="text",
        ciphertexts=[],
        group_body=b"group",
    )
    after = staff.get("/metrics").content.decode()
    name = "natter_sends_total"
    assert (
        sample(after, name, '{transport="rest"}') - sample(before, name, '{transport="rest"}') == 2
    )
    assert (
        sample(after, "natter_send_duplicates_total")
        - sample(before, "natter_send_duplicates_total")
        == 1
    )
    assert sample(after, "natter_fanout_pending") >= 1
