"""The groups REST API and the admin, through Django's test client on Postgres."""

import pytest
from rest_framework.test import APIClient

from apps.messaging.models import InboxEntry, Membership

pytestmark = pytest.mark.django_db


def api(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    return client


@pytest.fixture
def crew(people):
    users = [people.user(n) for n in ("alice", "bob", "carol")]
    devices = [people.device(u) for u in users]
    return users, devices


def create(devices, users, title="Crew"):
    r = api(devices[0]).post(
        "/api/v1/groups",
        {"title": title, "member_ids": [u.public_id for u in users[1:]]},
        format="json",
    )
    assert r.status_code == 201, r.content
    return r.json()


def test_create_and_read_a_group(crew):
    users, devices = crew
    group = create(devices, users)
    assert group["kind"] == "group" and group["title"] == "Crew"
    assert group["admins"] == [users[0].public_id]
    assert {m["id"] for m in group["members"]} == {u.public_id for u in users}
    assert api(devices[1]).get(f"/api/v1/groups/{group['id']}").json()["id"] == group["id"]
    listed = api(devices[2]).get("/api/v1/conversations").json()
    assert [c["id"] for c in listed] == [group["id"]]


def test_non_admins_get_403_not_admin(crew, people):
    users, devices = crew
    group = create(devices, users)
    newcomer = people.user()
    r = api(devices[1]).post(
        f"/api/v1/groups/{group['id']}/members", {"user_ids": [newcomer.public_id]}, format="json"
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_admin"
    r = api(devices[1]).delete(f"/api/v1/groups/{group['id']}/members/{users[2].public_id}")
    assert r.status_code == 403
    r = api(devices[1]).patch(f"/api/v1/groups/{group['id']}", {"title": "x"}, format="json")
    assert r.status_code == 403


def test_outsiders_see_a_group_as_if_it_did_not_exist(crew, people):
    users, devices = crew
    group = create(devices, users)
    outsider = people.device(people.user())
    real = api(outsider).get(f"/api/v1/groups/{group['id']}")
    fake = api(outsider).get("/api/v1/groups/c_42")
    assert real.status_code == fake.status_code == 404 and real.json() == fake.json()


def test_a_257th_member_is_refused_with_group_full(people):
    owner = people.user()
    device = people.device(owner)
    members = [people.user() for _ in range(255)]
    r = api(device).post(
        "/api/v1/groups",
        {"title": "Full house", "member_ids": [u.public_id for u in members]},
        format="json",
    )
    assert r.status_code == 201 and len(r.json()["members"]) == 256
    one_more = people.user()
    r = api(device).post(
        f"/api/v1/groups/{r.json()['id']}/members",
        {"user_ids": [one_more.public_id]},
        format="json",
    )
    assert r.status_code == 409
    assert r.json()["error"] == {
        "code": "group_full",
        "message": "A group has at most 256 members.",
        "max_members": 256,
    }


def test_unknown_members_are_named_in_the_error(crew):
    users, devices = crew
    r = api(devices[0]).post(
        "/api/v1/groups", {"title": "x", "member_ids": ["u_123"]}, format="json"
    )
    assert r.status_code == 400 and r.json()["error"]["unknown"] == ["u_123"]


def test_promote_remove_and_leave(crew):
    users, devices = crew
    group = create(devices, users)
    gid = group["id"]
    r = api(devices[0]).post(
        f"/api/v1/groups/{gid}/admins", {"user_id": users[1].public_id}, format="json"
    )
    assert set(r.json()["admins"]) == {users[0].public_id, users[1].public_id}
    r = api(devices[1]).delete(f"/api/v1/groups/{gid}/members/{users[2].public_id}")
    assert r.status_code == 204
    assert api(devices[2]).get(f"/api/v1/groups/{gid}").status_code == 404
    assert api(devices[0]).post(f"/api/v1/groups/{gid}/leave").status_code == 204
    detail = api(devices[1]).get(f"/api/v1/groups/{gid}").json()
    assert [m["id"] for m in detail["members"]] == [users[1].public_id]


def test_receipts_endpoint_is_for_the_sender_only(crew):
    import base64
    import uuid

    users, devices = crew
    group = create(devices, users)
    r = api(devices[0]).post(
        "/api/v1/messages",
        {
            "client_id": str(uuid.uuid4()),
            "conversation": group["id"],
            "kind": "text",
            "ciphertexts": [],
            "group_body": base64.b64encode(b"hi").decode(),
        },
        format="json",
    )
    assert r.status_code == 201
    message_id = r.json()["message_id"]
    mine = api(devices[0]).get(f"/api/v1/messages/{message_id}/receipts")
    assert mine.status_code == 200
    assert {row["user"] for row in mine.json()["receipts"]} == {
        users[1].public_id,
        users[2].public_id,
    }
    assert api(devices[1]).get(f"/api/v1/messages/{message_id}/receipts").status_code == 404


def test_staff_add_and_remove_members_in_the_admin_with_the_same_events(crew, people, staff):
    users, devices = crew
    group = create(devices, users)
    gid = int(group["id"][2:])
    browser = staff
    dave = people.user("dave")
    dave_device = people.device(dave)
    assert browser.get("/admin/groups/group/").status_code == 200
    r = browser.post(
        f"/admin/groups/group/{gid}/change/",
        {
            "title": "Crew",
            "add_members": dave.username,
            "remove_members": users[2].username,
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert r.status_code == 302, r.content[:2000]
    current = set(
        Membership.objects.current().filter(conversation_id=gid).values_list("user_id", flat=True)
    )
    assert current == {users[0].id, users[1].id, dave.id}
    actions = [
        (e.payload["action"], e.payload["actor"])
        for e in InboxEntry.objects.filter(device=devices[0], type="group").order_by("cursor")
    ]
    assert actions[-2:] == [("added", None), ("removed", None)]
    assert InboxEntry.objects.filter(device=dave_device, type="group").exists()
