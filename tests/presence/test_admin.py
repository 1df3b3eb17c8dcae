"""Staff see the connection registry in the admin: devices per process, a user's devices."""

import time
import uuid

import pytest
from django.test import Client

from apps.presence.store import get_store

pytestmark = pytest.mark.django_db

PAGE = "/admin/presence/connecteddevice/"


def connect(device, process: str, transport: str = "ws"):
    now = time.time()
    get_store().touch(
        user_id=device.user_id,
        device_id=device.id,
        conn="c",
        process=process,
        transport=transport,
        since=now,
        ttl_s=60,
        now=now,
        first=True,
        visibility="everyone",
    )


def test_staff_see_devices_per_process_and_the_devices_of_a_user(staff, people):
    # Process names of this run only: entries of an earlier run of the suite against
    # the same Redis live on for their TTL and would be counted too.
    one, two = f"web-1:100:{uuid.uuid4().hex[:8]}", f"web-2:200:{uuid.uuid4().hex[:8]}"
    alice, bob = people.user("alice"), people.user("bob")
    phone, laptop = people.device(alice, "alice-phone"), people.device(alice, "alice-laptop")
    connect(phone, one)
    connect(laptop, two, transport="longpoll")
    connect(people.device(bob, "bob-cli"), two)

    page = staff.get(PAGE)
    assert page.status_code == 200
    rows = {p["process"]: p["devices"] for p in page.context["processes"]}
    # Other live processes (a test server of another test, say) may be listed too.
    assert {p: rows.get(p) for p in (one, two)} == {one: 1, two: 2}
    assert page.context["total"] == sum(rows.values())
    assert two.encode() in page.content

    mine = staff.get(PAGE, {"user": alice.username})
    found = {(d["device"].name, d["transport"], d["process"]) for d in mine.context["devices"]}
    assert found == {
        ("alice-phone", "ws", one),
        ("alice-laptop", "longpoll", two),
    }
    assert b"alice-laptop" in mine.content

    on_two = staff.get(PAGE, {"process": two})
    assert {d["device"].name for d in on_two.context["devices"]} == {"alice-laptop", "bob-cli"}
    assert b"Connected devices" in staff.get("/admin/").content


def test_the_registry_page_is_for_staff_only(people):
    client = Client()
    client.force_login(people.user("plain"))
    assert client.get(PAGE).status_code == 302
