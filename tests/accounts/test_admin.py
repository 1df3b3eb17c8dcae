"""The Django admin for staff: users, devices (revoke), conversations; never bodies."""

import pytest
from django.test import Client

from apps.accounts.models import Device
from apps.messaging import services
from apps.messaging.models import InboxEntry
from tests.messaging.helpers import send

pytestmark = pytest.mark.django_db


def test_staff_see_users_devices_and_can_search_and_filter(staff, people):
    alice = people.user("alice")
    device = people.device(alice, "alice-phone")
    for url in [
        "/admin/accounts/user/?q=alice",
        f"/admin/accounts/user/{alice.pk}/change/",
        "/admin/accounts/device/?state=active&q=alice",
        f"/admin/accounts/device/{device.pk}/change/",
        "/admin/messaging/conversation/",
        "/admin/messaging/message/",
    ]:
        r = staff.get(url)
        assert r.status_code == 200, url
    assert b"alice-phone" in staff.get("/admin/accounts/device/?q=alice").content


def test_revoking_a_device_in_the_admin_kills_its_token(staff, people):
    alice = people.user("alice")
    device = people.device(alice)
    r = staff.post(
        "/admin/accounts/device/",
        {"action": "revoke", "_selected_action": [device.pk]},
        follow=True,
    )
    assert r.status_code == 200
    device.refresh_from_db()
    assert device.revoked_at is not None
    assert (
        Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {device.token}").status_code == 401
    )


def test_the_admin_never_shows_a_message_body(staff, people):
    alice, bob = people.user("alice"), people.user("bob")
    a1, b1 = people.device(alice), people.device(bob)
    conversation, _ = services.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    result = send(a1, conversation, [b1], body=b"TOP-SECRET-CANARY")
    pages = [
        staff.get(f"/admin/messaging/message/{result.message.pk}/change/"),
        staff.get(f"/admin/messaging/conversation/{conversation.pk}/change/"),
        staff.get("/admin/messaging/message/"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert b"TOP-SECRET-CANARY" not in page.content
        assert b"VE9QLVNFQ1JFVC1DQU5BUlk" not in page.content  # nor its base64
    # Inbox rows (which hold the ciphertext) have no admin page at all.
    assert staff.get("/admin/messaging/inboxentry/").status_code == 404
    assert InboxEntry.objects.filter(device=b1).exists()


def test_non_staff_cannot_open_the_admin(people):
    client = Client()
    client.force_login(people.user("plain"))
    assert client.get("/admin/accounts/device/").status_code == 302


def test_devices_cannot_be_added_by_hand(staff):
    assert staff.get("/admin/accounts/device/add/").status_code == 403
    assert Device.objects.count() == 0
