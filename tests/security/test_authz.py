"""The authorization matrix: nobody reads, acks or learns about what is not theirs.

Whatever belongs to others gets exactly the answer an id that does not exist gets
(status and body), so ids cannot be probed. The sender of a message is always the
authenticated device. Removed members and revoked devices are cut off at once.
Cross-site pages cannot use a browser's cookie. Staff never see a body.
"""

import asyncio
import base64
import uuid

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import admin
from django.test import Client
from django.urls import NoReverseMatch, reverse

from apps.accounts.models import Device
from apps.accounts.services import device_revoke
from apps.common import ids
from apps.groups import services as groups
from apps.messaging import services as messaging
from apps.messaging.models import InboxEntry, Message
from tests.conftest import b64
from tests.messaging.helpers import send
from tests.security.helpers import (
    PASSWORD,
    api,
    closed_with,
    next_of,
    open_socket,
    poll,
    reply_to,
    send_body,
    send_frame,
    socket,
)

CANARY = b"TOP-SECRET-CANARY-BODY"


def nowhere(prefix: str) -> str:
    """A well-formed id of nothing."""
    return ids.encode(prefix, ids.random_key())


class World:
    """alice (A1, A2) and bob (B1) in a direct chat and a group; carol (C1) outside."""

    def __init__(self, people, media_root=None):
        self.alice, self.bob, self.carol = people.user(), people.user(), people.user()
        self.a1, self.a2 = people.device(self.alice, "a1"), people.device(self.alice, "a2")
        self.b1 = people.device(self.bob, "b1")
        self.c1 = people.device(self.carol, "c1")
        self.direct, _ = messaging.conversation_direct_get_or_create(
            user=self.alice, other_user_id=self.bob.id
        )
        self.group = groups.group_create(
            creator=self.alice, title="Climbing", member_ids=[self.bob.id]
        )
        self.message = send(self.a1, self.direct, [self.a2, self.b1], body=CANARY).message


@pytest.fixture
def world(people):
    return World(people)


def same_answer(first, second):
    """Two REST answers are indistinguishable: same status, same JSON body."""
    assert first.status_code == second.status_code, (first.content, second.content)
    assert first.json() == second.json()
    return first


# --- REST: others' conversations, groups, receipts, media answer like nothing ---------


@pytest.mark.django_db
def test_a_strangers_conversation_answers_exactly_like_one_that_does_not_exist(world):
    carol = api(world.c1)
    cases = [
        ("get", "/api/v1/conversations/{}/devices", None),
        ("post", "/api/v1/read", lambda c: {"conversation": c, "up_to_seq": 1}),
        ("post", "/api/v1/typing", lambda c: {"conversation": c, "state": "composing"}),
    ]
    for conversation in (world.direct.public_id, world.group.public_id):
        for method, path, body in cases:
            theirs, none = (
                getattr(carol, method)(path.format(c), body(c) if body else None, format="json")
                for c in (conversation, nowhere(ids.CONVERSATION))
            )
            assert same_answer(theirs, none).status_code == 404, path
            assert theirs.json()["error"]["code"] == "not_member"


@pytest.mark.django_db
def test_a_stranger_cannot_send_into_a_conversation_and_nothing_is_stored(world):
    before = Message.objects.count(), InboxEntry.objects.count()
    carol = api(world.c1)
    devices = [world.a1, world.a2, world.b1]
    theirs = carol.post("/api/v1/messages", send_body(world.direct, devices), format="json")
    ghost = type("Ghost", (), {"public_id": nowhere(ids.CONVERSATION)})()
    none = carol.post("/api/v1/messages", send_body(ghost, devices), format="json")
    assert same_answer(theirs, none).json()["error"]["code"] == "not_member"
    group_send = {**send_body(world.group, []), "group_body": b64(b"x")}
    assert carol.post("/api/v1/messages", group_send, format="json").status_code == 404
    assert (Message.objects.count(), InboxEntry.objects.count()) == before


@pytest.mark.django_db
def test_every_group_endpoint_answers_a_stranger_like_a_group_that_does_not_exist(world):
    carol, bob_id = api(world.c1), world.bob.public_id
    calls = [
        ("get", "/api/v1/groups/{}", None),
        ("patch", "/api/v1/groups/{}", {"title": "mine now"}),
        ("post", "/api/v1/groups/{}/members", {"user_ids": [world.carol.public_id]}),
        ("delete", "/api/v1/groups/{}/members/" + bob_id, None),
        ("post", "/api/v1/groups/{}/admins", {"user_id": world.carol.public_id}),
        ("post", "/api/v1/groups/{}/leave", None),
    ]
    for method, path, body in calls:
        theirs = getattr(carol, method)(path.format(world.group.public_id), body, format="json")
        none = getattr(carol, method)(path.format(nowhere(ids.CONVERSATION)), body, format="json")
        assert same_answer(theirs, none).status_code == 404, path
    # A direct conversation is no group, whoever asks.
    alice = api(world.a1)
    same_answer(
        alice.get(f"/api/v1/groups/{world.direct.public_id}"),
        alice.get(f"/api/v1/groups/{nowhere(ids.CONVERSATION)}"),
    )
    world.group.refresh_from_db()
    assert world.group.title == "Climbing"


@pytest.mark.django_db
def test_receipts_of_a_message_are_for_its_sender_only(world):
    path = "/api/v1/messages/{}/receipts"
    for device in (world.b1, world.c1):  # the recipient and a stranger
        theirs = api(device).get(path.format(world.message.public_id))
        none = api(device).get(path.format(nowhere(ids.MESSAGE)))
        assert same_answer(theirs, none).status_code == 404
    mine = api(world.a2).get(path.format(world.message.public_id))  # the sender's other device
    assert mine.status_code == 200 and mine.json()["receipts"][0]["user"] == world.bob.public_id


@pytest.mark.django_db
def test_media_is_for_the_members_of_its_conversation_and_parts_for_the_uploader(
    world, settings, tmp_path
):
    backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": tmp_path / "media"},
    }
    settings.STORAGES = {**settings.STORAGES, "media": backend, "default": backend}
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    up = api(world.a1).generic(
        "POST",
        f"/api/v1/media?conversation={world.direct.public_id}",
        CANARY,
        content_type="application/octet-stream",
    )
    assert up.status_code == 201
    media_id = up.json()["media_id"]
    opened = api(world.a1).post(
        f"/api/v1/media/uploads?conversation={world.direct.public_id}", {"size": 10}, format="json"
    )
    partial_id = opened.json()["media_id"]
    carol = api(world.c1)
    same_answer(carol.get(f"/api/v1/media/{media_id}"), carol.get(f"/api/v1/media/{nowhere('f')}"))
    for stranger in (world.b1, world.c1):  # a member who is not the uploader, and a stranger
        client = api(stranger)
        theirs, none = (
            client.generic(
                "PATCH",
                f"/api/v1/media/{m}?offset=0",
                b"x",
                content_type="application/octet-stream",
            )
            for m in (partial_id, nowhere("f"))
        )
        same_answer(theirs, none)
    theirs, none = (
        carol.generic(
            "POST", f"/api/v1/media?conversation={c}", b"x", content_type="application/octet-stream"
        )
        for c in (world.direct.public_id, nowhere(ids.CONVERSATION))
    )
    assert same_answer(theirs, none).status_code == 404
    # A member downloads it.
    got = api(world.b1).get(f"/api/v1/media/{media_id}")
    assert got.status_code == 200 and b"".join(got) == CANARY


@pytest.mark.django_db
def test_nobody_reads_or_acks_another_devices_inbox(world):
    waiting = InboxEntry.objects.filter(device=world.b1).count()
    assert waiting >= 1
    carol = api(world.c1)
    page = carol.get("/api/v1/events?timeout=0&cursor=999999").json()
    assert page["events"] == [] or all(
        e["event"].get("conversation") not in (world.direct.public_id, world.group.public_id)
        for e in page["events"]
    )
    assert carol.post("/api/v1/events/ack", {"cursor": 10**9}, format="json").status_code == 200
    # alice's other device acks a huge cursor: only its own rows, capped at what it was given.
    api(world.a2).post("/api/v1/events/ack", {"cursor": 10**9}, format="json")
    assert InboxEntry.objects.filter(device=world.b1).count() == waiting
    assert InboxEntry.objects.filter(device=world.a2).exists()  # never handed out: kept


@pytest.mark.django_db
def test_a_strangers_lists_show_nothing_of_others(world):
    carol = api(world.c1)
    assert carol.get("/api/v1/conversations").json() == []
    assert carol.get("/api/v1/keys/count").json() == {"one_time_prekeys": 0}
    # A user's public devices carry an id and the public identity key, nothing else.
    devices = carol.get(f"/api/v1/users/{world.alice.public_id}/devices").json()
    assert [set(d) for d in devices] == [{"id", "identity_key"}] * 2
    same_answer(
        carol.get(f"/api/v1/users/{nowhere(ids.USER)}/devices"),
        carol.get(f"/api/v1/users/{world.alice.public_id.replace('u_', 'd_')}/devices"),
    )
    # The metrics are for staff and scrapers, not for a device's token.
    assert carol.get("/metrics").status_code == 401


@pytest.mark.django_db
def test_hidden_presence_looks_exactly_like_a_user_who_does_not_exist(world):
    world.alice.last_seen_visibility = "nobody"
    world.alice.save()
    answer = api(world.c1).put(
        "/api/v1/presence/subscriptions",
        {"user_ids": [world.alice.public_id, nowhere(ids.USER)]},
        format="json",
    )
    first, second = answer.json()["presence"]
    assert {k: v for k, v in first.items() if k != "user"} == {
        k: v for k, v in second.items() if k != "user"
    }


# --- The sender is the authenticated device, never a field of the body ----------------


@pytest.mark.django_db
def test_sender_fields_in_a_send_body_are_ignored(world):
    spoof = {
        "sender": {"user": world.bob.public_id, "device": world.b1.public_id},
        "sender_user": world.bob.public_id,
        "sender_device": world.b1.public_id,
        "device": world.b1.public_id,
        "user_id": world.bob.public_id,
    }
    body = send_body(world.direct, [world.a1, world.a2], **spoof)
    r = api(world.c1).post("/api/v1/messages", body, format="json")
    assert r.status_code == 404  # carol is no member, whoever she claims to be
    body["sender_device"] = world.a1.public_id
    r = api(world.b1).post("/api/v1/messages", body, format="json")
    assert r.status_code == 201, r.content
    message = Message.objects.get(id=ids.decode(ids.MESSAGE, r.json()["message_id"]))
    assert (message.sender_device_id, message.sender_user_id) == (world.b1.id, world.bob.id)
    event = next(
        e for e in messaging_inbox(world.a1) if e.get("message_id") == r.json()["message_id"]
    )
    assert event["sender"] == {"user": world.bob.public_id, "device": world.b1.public_id}


def messaging_inbox(device) -> list[dict]:
    from apps.messaging.selectors import inbox_after

    return [i["event"] for i in inbox_after(device_id=device.id, after_cursor=0, limit=1000)]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_sender_fields_in_a_send_frame_are_ignored(people):
    world = await database_sync_to_async(World)(people)
    ws = await open_socket(world.b1)
    frame = send_frame(
        world.direct,
        [world.a1, world.a2],
        sender={"user": world.alice.public_id, "device": world.a1.public_id},
        sender_device=world.a1.public_id,
    )
    ack = await reply_to(ws, frame)
    assert ack["type"] == "ack"
    stored = await database_sync_to_async(Message.objects.get)(
        id=ids.decode(ids.MESSAGE, ack["message_id"])
    )
    assert stored.sender_device_id == world.b1.id
    await ws.disconnect()


# --- The WebSocket answers a stranger like nothing too ----------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_strangers_frames_answer_exactly_like_a_conversation_that_does_not_exist(people):
    world = await database_sync_to_async(World)(people)
    ws = await open_socket(world.c1)
    ghost = type("Ghost", (), {"public_id": nowhere(ids.CONVERSATION)})()
    for target in (world.direct, world.group):
        frames = [
            lambda c: send_frame(c, [world.a1, world.a2, world.b1]),
            lambda c: {"type": "read", "conversation": c.public_id, "up_to_seq": 5},
            lambda c: {"type": "typing", "conversation": c.public_id, "state": "composing"},
        ]
        for build in frames:
            theirs = await reply_to(ws, {**build(target), "id": "x"})
            none = await reply_to(ws, {**build(ghost), "id": "x"})
            assert theirs == none and theirs["code"] == "not_member"
    await ws.disconnect()


# --- Removed members and revoked devices: cut off at once ------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_removed_member_is_cut_off_from_the_group_at_once(people):
    world = await database_sync_to_async(World)(people)
    bob_ws = await open_socket(world.b1)
    await database_sync_to_async(groups.group_member_remove)(
        group_id=world.group.id, actor=world.alice, user_id=world.bob.id
    )
    removed = await next_of(bob_ws, "event")
    assert removed["event"]["action"] == "removed"
    await bob_ws.send_json_to({"type": "ack", "cursor": removed["cursor"]})
    # Nothing of the group reaches bob any more: messages, typing.
    alice_ws = await open_socket(world.a1)
    group_send = {**send_frame(world.group, []), "group_body": b64(CANARY)}
    ack = await reply_to(alice_ws, group_send)
    assert ack["type"] == "ack"
    # The fan-out (a Celery task) writes the rows of the members at that seq.
    await database_sync_to_async(messaging.message_fanout)(
        message_id=ids.decode(ids.MESSAGE, ack["message_id"])
    )
    fanned = await database_sync_to_async(
        lambda: set(
            InboxEntry.objects.filter(
                message_id=ids.decode(ids.MESSAGE, ack["message_id"])
            ).values_list("device_id", flat=True)
        )
    )()
    assert fanned == {world.a2.id}
    typing = {"type": "typing", "id": "t", "conversation": world.group.public_id}
    assert (await reply_to(alice_ws, {**typing, "state": "composing"}))["type"] == "ok"
    assert await bob_ws.receive_nothing(timeout=1.5)
    # And bob can do nothing in it: the answers are those for a group that does not exist.
    for frame in (
        {**send_frame(world.group, []), "group_body": b64(b"x")},
        {**typing, "state": "paused"},
    ):
        assert (await reply_to(bob_ws, frame))["code"] == "not_member"
    bob = api(world.b1)
    for path in ("/api/v1/groups/{}", "/api/v1/conversations/{}/devices"):
        theirs, none = await database_sync_to_async(
            lambda p=path: (
                bob.get(p.format(world.group.public_id)),
                bob.get(p.format(nowhere(ids.CONVERSATION))),
            )
        )()
        same_answer(theirs, none)
    listed = await database_sync_to_async(lambda: bob.get("/api/v1/conversations").json())()
    assert world.group.public_id not in [c["id"] for c in listed]
    for ws in (alice_ws, bob_ws):
        await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_revoked_device_is_cut_off_within_five_seconds_everywhere(people):
    world = await database_sync_to_async(World)(people)
    await database_sync_to_async(InboxEntry.objects.filter(device=world.a2).delete)()
    ws = await open_socket(world.a2)
    held = asyncio.ensure_future(poll(world.a2, b"timeout=20&cursor=0"))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await database_sync_to_async(device_revoke)(device=world.a2)
    assert await closed_with(ws, timeout=5) == 4401
    status, _, body = await asyncio.wait_for(held, timeout=5)
    assert status == 401 and b'"unauthorized"' in body
    assert loop.time() - started < 5
    # The old token is dead on every door.
    r = await database_sync_to_async(lambda: api(world.a2).get("/api/v1/me"))()
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    again = socket(world.a2)
    await again.connect()
    assert await closed_with(again) == 4401
    assert (await poll(world.a2))[0] == 401
    assert not await database_sync_to_async(InboxEntry.objects.filter(device=world.a2).exists)()


@pytest.mark.django_db
def test_a_browser_session_of_a_revoked_device_is_dead_too(people):
    user = people.user()
    browser = Client()
    r = browser.post(
        "/api/v1/auth/login",
        {"username": user.username, "password": PASSWORD, "session": True},
        content_type="application/json",
    )
    device = Device.objects.get(id=ids.decode(ids.DEVICE, r.json()["device"]["id"]))
    assert browser.get("/api/v1/me").status_code == 200
    device_revoke(device=device)
    assert browser.get("/api/v1/me").status_code == 401


# --- Cross-site requests with a browser's cookie ---------------------------------------


def _browser(people) -> tuple[Client, bytes]:
    user = people.user()
    browser = Client()
    r = browser.post(
        "/api/v1/auth/login",
        {"username": user.username, "password": PASSWORD, "session": True},
        content_type="application/json",
    )
    assert r.status_code == 201
    return browser, f"sessionid={browser.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cross_site_websocket_hijacking_with_a_session_cookie_is_refused(people):
    _, cookie = await database_sync_to_async(_browser)(people)
    for origin in (
        b"https://evil.example",
        b"http://127.0.0.1.evil.example",
        b"null",
        b"file://",
        b"",
        None,
    ):
        headers = [(b"cookie", cookie)]
        if origin is not None:
            headers.append((b"origin", origin))
        ws = socket(None, origin=None, headers=headers)
        assert (await ws.connect())[0]
        assert await closed_with(ws) == 4401, origin
    # A bad bearer token never falls back to the cookie, even from our own page.
    ws = socket(
        None,
        headers=[(b"cookie", cookie), (b"authorization", b"Bearer not-a-token")],
    )
    await ws.connect()
    assert await closed_with(ws) == 4401
    ours = socket(None, headers=[(b"cookie", cookie)])
    await ours.connect()
    assert (await ours.receive_json_from(timeout=5))["type"] == "hello"
    await ours.disconnect()


@pytest.mark.django_db
def test_a_cross_site_link_cannot_ack_a_browsers_inbox(people):
    """The long-poll acks with a GET: a cookie alone (a foreign page's link) is refused.

    Daphne serves it from a consumer that required the header already; the Django
    view behind the same URL (WSGI deployments, the test client) did not.
    """
    browser, _ = _browser(people)
    assert browser.get("/api/v1/events?timeout=0&cursor=5").status_code == 401
    answer = browser.get("/api/v1/events?timeout=0", HTTP_X_NATTER_SESSION="1")
    assert answer.status_code == 200
    csrf_browser = Client(enforce_csrf_checks=True)
    csrf_browser.cookies = browser.cookies
    r = csrf_browser.post("/api/v1/events/ack", {"cursor": 1}, content_type="application/json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# --- Staff never see a message body ------------------------------------------------------


def _admin_urls(world) -> list[str]:
    """Every page the admin has for every registered model, for every object."""
    urls = ["/admin/"]
    standard = {"changelist", "add", "change", "history", "delete"}
    for model, model_admin in admin.site._registry.items():
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}_"
        urls += [reverse(prefix + "changelist"), reverse(prefix + "changelist") + "?q=a"]
        objects = list(model_admin.get_queryset(_staff_request()).all()[:50])
        for obj in objects:
            urls += [
                reverse(prefix + view, args=[obj.pk]) for view in ("change", "history", "delete")
            ]
        names = [getattr(p, "name", None) or "" for p in model_admin.get_urls()]
        if prefix.removeprefix("admin:") + "add" in names:
            urls.append(reverse(prefix + "add"))
        for pattern in model_admin.get_urls():
            name = getattr(pattern, "name", None) or ""
            if not name or name.removeprefix(prefix.removeprefix("admin:")) in standard:
                continue
            # Views a model admin adds of its own (a delivery trace, say).
            if pattern.pattern.regex.groups == 0:
                urls.append(reverse(f"admin:{name}"))
            else:
                for obj in objects:
                    try:
                        urls.append(reverse(f"admin:{name}", args=[obj.pk]))
                    except NoReverseMatch:
                        pass
    return urls


def _staff_request():
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = AnonymousUser()
    return request


@pytest.mark.django_db
def test_no_admin_page_of_any_model_shows_a_message_body(world, staff):
    # A group message too, whose one group body is stored with the message until acked.
    groups_body = CANARY + b"-GROUP"
    messaging.message_send(
        sender_device=world.a1,
        conversation_id=world.group.id,
        client_id=uuid.uuid4(),
        kind="text",
        ciphertexts=[],
        group_body=groups_body,
    )
    # A media row too (its blob is ciphertext the admin never opens).
    from django.utils import timezone

    from apps.media.models import Media

    Media.objects.create(
        conversation=world.direct,
        uploader=world.alice,
        uploader_device_id=world.a1.id,
        blob="blobs/00/none",
        size=len(CANARY),
        expires_at=timezone.now(),
    )
    forbidden = {
        CANARY,
        base64.b64encode(CANARY),
        base64.b64encode(CANARY)[:16],
        CANARY.hex().encode(),
        groups_body,
        base64.b64encode(groups_body),
    }
    for device in (world.b1, world.a2):
        body = bytes(InboxEntry.objects.filter(device=device).exclude(body=None).first().body)
        forbidden |= {body, base64.b64encode(body), body.hex().encode()}
    pages = _admin_urls(world)
    assert len(pages) > 20
    for url in pages:
        response = staff.get(url)
        assert response.status_code in (200, 302, 403), (url, response.status_code)
        content = response.content
        for needle in forbidden:
            assert needle not in content, (url, needle)
