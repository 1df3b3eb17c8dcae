"""Bad input, on REST and the WebSocket: the documented code, never a 500, nothing stored.

One case per row of the error table of docs/protocol.md §9 (PROTOCOL §8), plus
frames over the limit, invalid UTF-8, NUL bytes, huge integers, NaN and Infinity,
too deep nesting, unknown fields, replayed client ids and duplicate prekey ids.
The media codes (`offset_mismatch`, `media_expired`, `range_not_satisfiable`) are
pinned by tests/media/test_api.py; `rate_limited` by tests/security/test_ratelimits.py;
`forbidden` and cross-site cases by tests/security/test_authz.py.
"""

import json
import uuid
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.db import OperationalError

from apps.accounts.models import OneTimePreKey
from apps.common import ids
from apps.groups import services as groups
from apps.messaging import services as messaging
from apps.messaging.models import InboxEntry, Message
from config.asgi import application
from tests.conftest import b64, keys_upload_body
from tests.security.helpers import api, open_socket, send_body, send_frame

pytestmark = pytest.mark.django_db

MAX_FRAME = settings.NATTER["FRAME_MAX_BYTES"]
MAX_CIPHERTEXT = settings.NATTER["CIPHERTEXT_MAX_BYTES"]


class Chat:
    def __init__(self, people):
        self.alice, self.bob = people.user("alice"), people.user("bob")
        self.a1, self.b1 = people.device(self.alice, "a1"), people.device(self.bob, "b1")
        self.direct, _ = messaging.conversation_direct_get_or_create(
            user=self.alice, other_user_id=self.bob.id
        )
        self.group = groups.group_create(
            creator=self.alice, title="Climbing", member_ids=[self.bob.id]
        )

    def stored(self) -> tuple[int, int]:
        return Message.objects.count(), InboxEntry.objects.filter(type="message").count()


@pytest.fixture
def chat(people):
    return Chat(people)


def raw(client, method: str, path: str, body: bytes | str, content_type="application/json"):
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    return client.generic(method, path, body, content_type=content_type)


def error_of(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return response.json()["error"]


# --- REST: each bad body with its status and code -----------------------------------------

NESTED = "[" * 50_000 + "]" * 50_000
OBJECTS = '{"a":' * 30_000 + "1" + "}" * 30_000


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "code"),
    [
        ("not json", "this is not json", "application/json", 400, "bad_request"),
        ("an array", "[1, 2, 3]", "application/json", 400, "bad_request"),
        ("a string", '"send"', "application/json", 400, "bad_request"),
        ("null", "null", "application/json", 400, "bad_request"),
        ("empty", "", "application/json", 400, "bad_request"),
        ("invalid utf-8", b'{"client_id": "\xff\xfe\xfd"}', "application/json", 400, "bad_request"),
        ("a raw NUL byte", b'{"kind": "te\x00xt"}', "application/json", 400, "bad_request"),
        ("NaN", '{"reply_to_seq": NaN}', "application/json", 400, "bad_request"),
        ("Infinity", '{"reply_to_seq": Infinity}', "application/json", 400, "bad_request"),
        ("-Infinity", '{"reply_to_seq": -Infinity}', "application/json", 400, "bad_request"),
        (
            "5000 digits",
            '{"reply_to_seq": ' + "9" * 5000 + "}",
            "application/json",
            400,
            "bad_request",
        ),
        ("nested arrays", NESTED, "application/json", 400, "bad_request"),
        ("nested objects", OBJECTS, "application/json", 400, "bad_request"),
        ("text/plain", '{"client_id": "x"}', "text/plain", 415, "unsupported_media_type"),
        (
            "a form",
            "client_id=x",
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(chat, name, body, content_type, status, code):
    before = chat.stored()
    r = raw(api(chat.a1), "POST", "/api/v1/messages", body, content_type)
    assert (r.status_code, error_of(r)["code"]) == (status, code), name
    assert chat.stored() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"client_id": "not-a-uuid"}, "client_id"),
        ({"client_id": "5d0b2a43-3c38-4f5e-9a55-0d7b3c6b2a1\u0000"}, "client_id"),
        ({"client_id": 12345}, "client_id"),
        ({"conversation": "c_\u0000"}, "conversation"),
        ({"conversation": "c_" + "9" * 30}, "conversation"),
        ({"conversation": "c_-1"}, "conversation"),
        ({"conversation": "u_12"}, "conversation"),
        ({"conversation": "c_１２"}, "conversation"),  # fullwidth digits are not digits here
        ({"kind": "sticker"}, "kind"),
        ({"reply_to_seq": 2**63}, "reply_to_seq"),
        ({"reply_to_seq": 2**64}, "reply_to_seq"),
        ({"reply_to_seq": -(2**70)}, "reply_to_seq"),
        ({"reply_to_seq": 1.5}, "reply_to_seq"),
        ({"reply_to_seq": 1e300}, "reply_to_seq"),
        ({"reply_to_seq": "3"}, "reply_to_seq"),
        ({"reply_to_seq": True}, "reply_to_seq"),
        ({"ciphertexts": "nope"}, "ciphertexts"),
        ({"ciphertexts": [{"device": "d_1", "envelope": "message", "body": "$$$"}]}, "ciphertexts"),
        (
            {"ciphertexts": [{"device": "d_1", "envelope": "message", "body": "-_8="}]},
            "ciphertexts",
        ),
        ({"ciphertexts": [{"device": "d_1", "envelope": "message", "body": "aGk"}]}, "ciphertexts"),
        ({"ciphertexts": [{"device": "d_1", "envelope": "message", "body": ""}]}, "ciphertexts"),
        ({"ciphertexts": [{"device": "d_1", "envelope": "fancy", "body": "aGk="}]}, "ciphertexts"),
        ({"media_id": "f_1"}, "media_id"),
    ],
)
def test_each_bad_field_is_bad_request_naming_it_and_nothing_is_stored(chat, change, field):
    before = chat.stored()
    body = {**send_body(chat.direct, [chat.b1]), **change}
    r = api(chat.a1).post("/api/v1/messages", body, format="json")
    error = error_of(r)
    assert (r.status_code, error["code"]) == (400, "bad_request")
    assert field in error["fields"]
    assert chat.stored() == before


def test_send_errors_with_their_codes_and_extra_fields(chat, settings):
    client, before = api(chat.a1), chat.stored()

    def post(**change):
        return client.post(
            "/api/v1/messages", {**send_body(chat.direct, [chat.b1]), **change}, format="json"
        )

    r = post(ciphertexts=[])
    assert r.status_code == 409 and error_of(r) | {"message": ""} == {
        "code": "device_mismatch",
        "message": "",
        "missing": [chat.b1.public_id],
        "extra": [],
    }
    stranger = ids.encode(ids.DEVICE, ids.random_key())
    r = post(
        ciphertexts=[
            *send_body(chat.direct, [chat.b1])["ciphertexts"],
            {"device": stranger, "envelope": "message", "body": b64(b"x")},
        ]
    )
    assert r.status_code == 409 and error_of(r)["extra"] == [stranger]
    r = post(ciphertexts=send_body(chat.direct, [chat.b1, chat.b1])["ciphertexts"])
    assert (r.status_code, error_of(r)["code"], error_of(r)["field"]) == (
        400,
        "bad_request",
        "ciphertexts",
    )
    r = post(
        ciphertexts=send_body(chat.direct, [chat.b1], body=b"x" * (MAX_CIPHERTEXT + 1))[
            "ciphertexts"
        ]
    )
    assert (r.status_code, error_of(r)["code"], error_of(r)["max_bytes"]) == (
        413,
        "too_large",
        MAX_CIPHERTEXT,
    )
    many = [
        {"device": f"d_{i + 1}", "envelope": "message", "body": "aGk="}
        for i in range(settings.NATTER["MAX_CIPHERTEXTS"] + 1)
    ]
    r = post(ciphertexts=many)
    assert (r.status_code, error_of(r)["code"]) == (400, "bad_request")
    r = post(reply_to_seq=1)  # seq 1 would be this message itself
    assert (r.status_code, error_of(r)["field"]) == (400, "reply_to_seq")
    r = post(group_body=b64(b"g"))
    assert (r.status_code, error_of(r)["field"]) == (400, "group_body")
    r = client.post(
        "/api/v1/messages", {**send_body(chat.group, []), "kind": "text"}, format="json"
    )
    assert (r.status_code, error_of(r)["field"]) == (400, "group_body")
    r = post(conversation=ids.encode(ids.CONVERSATION, ids.random_key()))
    assert (r.status_code, error_of(r)["code"]) == (404, "not_member")
    assert chat.stored() == before


def test_a_body_over_the_frame_limit_is_413_too_large(chat):
    before = chat.stored()
    body = {**send_body(chat.direct, [chat.b1]), "pad": "x" * MAX_FRAME}
    r = api(chat.a1).post("/api/v1/messages", body, format="json")
    assert (r.status_code, error_of(r)["code"], error_of(r)["max_bytes"]) == (
        413,
        "too_large",
        MAX_FRAME,
    )
    assert chat.stored() == before


@pytest.mark.asyncio
async def test_daphne_refuses_a_declared_oversized_body_before_reading_it():
    comm = HttpCommunicator(
        application,
        "POST",
        "/api/v1/messages",
        body=b"{}",
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", str(MAX_FRAME + 1).encode()),
        ],
    )
    response = await comm.get_response()
    assert response["status"] == 413 and b'"too_large"' in response["body"]


def test_unknown_fields_are_ignored_and_stored_nowhere(chat):
    body = {**send_body(chat.direct, [chat.b1]), "x_future": {"nested": [1, 2]}, "priority": 9}
    r = api(chat.a1).post("/api/v1/messages", body, format="json")
    assert r.status_code == 201
    event = InboxEntry.objects.get(device=chat.b1, type="message")
    assert event.payload is None  # the wire event is built from known columns only


def test_a_replayed_client_id_gets_the_original_ack_and_is_stored_once(chat):
    client, client_id = api(chat.a1), uuid.uuid4()
    first = client.post(
        "/api/v1/messages", send_body(chat.direct, [chat.b1], client_id=client_id), format="json"
    )
    again = client.post(
        "/api/v1/messages",
        send_body(chat.direct, [chat.b1], client_id=client_id, body=b"different"),
        format="json",
    )
    upper = client.post(
        "/api/v1/messages",
        send_body(chat.direct, [chat.b1], client_id=str(client_id).upper()),
        format="json",
    )
    assert (first.status_code, again.status_code, upper.status_code) == (201, 200, 200)
    assert first.json() == again.json() == upper.json()
    assert chat.stored() == (1, 1)
    assert bytes(InboxEntry.objects.get(device=chat.b1, type="message").body) == b"sealed"


def test_text_fields_refuse_nul_and_lone_surrogates(chat, people):
    client = api(chat.a1)
    cases = [
        ("PATCH", "/api/v1/me", '{"display_name": "a\\u0000b"}'),
        ("PATCH", "/api/v1/me", '{"display_name": "\\ud800"}'),
        ("PATCH", "/api/v1/me", '{"last_seen_visibility": "\\u0000"}'),
        ("POST", "/api/v1/groups", '{"title": "x\\u0000", "member_ids": []}'),
        ("POST", "/api/v1/groups", '{"title": "\\udfff", "member_ids": []}'),
        ("PUT", "/api/v1/presence/subscriptions", '{"user_ids": ["\\ud800"]}'),
        ("POST", "/api/v1/typing", '{"conversation": "c_1\\u0000", "state": "composing"}'),
    ]
    anonymous = [
        (
            "POST",
            "/api/v1/auth/register",
            '{"username": "nul\\u0000", "password": "a long pass phrase 42"}',
        ),
        (
            "POST",
            "/api/v1/auth/register",
            '{"username": "ok_name", "password": "a long pass phrase 42", "display_name": "\\ud83d"}',
        ),
        ("POST", "/api/v1/auth/login", '{"username": "alice", "password": "\\u0000"}'),
        (
            "POST",
            "/api/v1/auth/login",
            '{"username": "alice", "password": "a long pass phrase 42", "device_name": "\\ud800"}',
        ),
    ]
    for who, rows in ((client, cases), (api(), anonymous)):
        for method, path, body in rows:
            r = raw(who, method, path, body)
            assert (r.status_code, error_of(r)["code"]) == (400, "bad_request"), (path, body)
    for path in ("/api/v1/users?handle=%00", "/api/v1/events?cursor=%00&timeout=0"):
        r = client.get(path)
        assert (r.status_code, error_of(r)["code"]) == (400, "bad_request"), path
    for path in (
        "/api/v1/groups/c_1%00",
        "/api/v1/users/u_1%00/devices",
        "/api/v1/messages/%ED%A0%80/receipts",
    ):
        assert client.get(path).status_code == 404, path


def test_huge_integers_in_queries_and_bodies_are_bad_requests(chat):
    client = api(chat.a1)
    for path in (
        "/api/v1/events?cursor=99999999999999999999999999&timeout=0",
        "/api/v1/events?timeout=31",
        "/api/v1/events?limit=501",
        "/api/v1/events?limit=0",
        "/api/v1/events?timeout=1e3",
    ):
        r = client.get(path)
        assert (r.status_code, error_of(r)["code"]) == (400, "bad_request"), path
    for path, body in (
        ("/api/v1/events/ack", {"cursor": 2**63}),
        ("/api/v1/events/ack", {"cursor": -1}),
        ("/api/v1/read", {"conversation": chat.direct.public_id, "up_to_seq": 2**64}),
        ("/api/v1/read", {"conversation": chat.direct.public_id, "up_to_seq": 1e400}),
    ):
        r = raw(client, "POST", path, json.dumps(body))
        assert (r.status_code, error_of(r)["code"]) == (400, "bad_request"), (path, body)


def test_prekey_uploads_refuse_duplicate_ids_and_store_nothing(people):
    device = people.device(people.user(), keys=False)
    client = api(device)
    body, _ = keys_upload_body(one_time=3)
    body["one_time_prekeys"][2]["key_id"] = body["one_time_prekeys"][0]["key_id"]
    r = client.put("/api/v1/keys", body, format="json")
    assert (r.status_code, error_of(r)["code"]) == (400, "bad_request")
    assert not OneTimePreKey.objects.filter(device=device).exists()
    body, identity = keys_upload_body(one_time=3)
    assert client.put("/api/v1/keys", body, format="json").status_code == 200
    again = {
        "identity_key": body["identity_key"],
        "one_time_prekeys": body["one_time_prekeys"][1:]
        + keys_upload_body(one_time=1, start_id=50)[0]["one_time_prekeys"],
    }
    r = client.put("/api/v1/keys", again, format="json")
    assert r.status_code == 409
    assert error_of(r) | {"message": ""} == {
        "code": "duplicate_key_id",
        "message": "",
        "key_ids": [2, 3],
    }
    assert OneTimePreKey.objects.filter(device=device).count() == 3  # id 50 was not stored
    for key_id in (0, 2**32, -1, 1.0, "1", 2**70):
        bad = {
            "identity_key": body["identity_key"],
            "one_time_prekeys": [
                {"key_id": key_id, "public_key": body["one_time_prekeys"][0]["public_key"]}
            ],
        }
        r = client.put("/api/v1/keys", bad, format="json")
        assert (r.status_code, error_of(r)["code"]) == (400, "bad_request"), key_id
    forged = {**body, "signed_prekey": {**body["signed_prekey"], "signature": b64(bytes(64))}}
    r = client.put("/api/v1/keys", forged, format="json")
    assert (r.status_code, error_of(r)["code"]) == (400, "bad_signature")


def test_the_rest_of_the_error_table(chat, people, settings):
    """unauthorized, method_not_allowed, not_found, not_admin, group_full, conflict."""
    r = api().get("/api/v1/me")
    assert (r.status_code, error_of(r)["code"]) == (401, "unauthorized")
    assert r["WWW-Authenticate"] == 'Bearer realm="api"'
    r = api().get("/api/v1/me", HTTP_AUTHORIZATION="Bearer " + "x" * 5000)
    assert (r.status_code, error_of(r)["code"]) == (401, "unauthorized")
    r = api(chat.a1).delete("/api/v1/messages")
    assert (r.status_code, error_of(r)["code"]) == (405, "method_not_allowed")
    r = api(chat.a1).get("/api/v1/users?handle=nobody_at_all")
    assert (r.status_code, error_of(r)["code"]) == (404, "not_found")
    r = api(chat.b1).patch(f"/api/v1/groups/{chat.group.public_id}", {"title": "x"}, format="json")
    assert (r.status_code, error_of(r)["code"]) == (403, "not_admin")
    settings.NATTER = {**settings.NATTER, "GROUP_MAX_MEMBERS": 2}
    carol = people.user("carol")
    r = api(chat.a1).post(
        f"/api/v1/groups/{chat.group.public_id}/members",
        {"user_ids": [carol.public_id]},
        format="json",
    )
    assert (r.status_code, error_of(r)["code"], error_of(r)["max_members"]) == (
        409,
        "group_full",
        2,
    )
    r = api().post(
        "/api/v1/auth/register",
        {"username": "ALICE", "password": "a long pass phrase 42"},
        format="json",
    )
    assert (r.status_code, error_of(r)["code"], error_of(r)["field"]) == (
        409,
        "conflict",
        "username",
    )


def test_an_outage_is_503_unavailable_with_retry_after(chat):
    with mock.patch(
        "apps.messaging.services._counters_statement", side_effect=OperationalError("down")
    ):
        r = api(chat.a1).post("/api/v1/messages", send_body(chat.direct, [chat.b1]), format="json")
    assert (r.status_code, error_of(r)["code"]) == (503, "unavailable")
    assert r["Retry-After"] == "2"


# --- The WebSocket: the same codes as error frames; the socket stays open ------------------


def _frames(chat) -> list[tuple[str, object, str, object]]:
    """(what, text or bytes sent, the expected code, the expected ref)."""
    send = send_frame(chat.direct, [chat.b1], frame_id="s")
    big = {"type": "ping", "id": "big", "pad": "x" * MAX_FRAME}
    multibyte = '{"type":"ping","pad":"' + "€" * (MAX_FRAME // 3 + 1) + '"}'
    return [
        ("not json", "this is not json", "bad_request", None),
        ("binary", b"\x00\x01\x02", "bad_request", None),
        ("an array", "[1,2,3]", "bad_request", None),
        ("a number", "42", "bad_request", None),
        ("null", "null", "bad_request", None),
        ("whitespace", "  ", "bad_request", None),
        ("a lone surrogate", '{"type":"ping","x":"\ud800"}', "bad_request", None),
        ("an escaped lone surrogate", '{"type":"ping","x":"\\udc00"}', "bad_request", None),
        ("a raw NUL", '{"type":"pi\x00ng"}', "bad_request", None),
        ("NaN", '{"type":"ack","id":"n","cursor":NaN}', "bad_request", None),
        ("Infinity", '{"type":"ack","id":"n","cursor":Infinity}', "bad_request", None),
        ("1e400", '{"type":"ack","id":"n","cursor":1e400}', "bad_request", None),
        (
            "a 2^64 cursor",
            '{"type":"ack","id":"h","cursor":18446744073709551616}',
            "bad_request",
            "h",
        ),
        (
            "a 2^63 cursor",
            '{"type":"ack","id":"h","cursor":9223372036854775808}',
            "bad_request",
            "h",
        ),
        ("a string cursor", '{"type":"ack","id":"e7","cursor":"5"}', "bad_request", "e7"),
        (
            "deep nesting",
            '{"type":"ping","x":' + "[" * 5000 + "]" * 5000 + "}",
            "bad_request",
            None,
        ),
        ("over the frame limit", big, "too_large", None),
        ("over the limit in UTF-8 bytes", multibyte, "too_large", None),
        ("an unknown type", {"type": "subscribe", "id": "e1"}, "unknown_type", "e1"),
        ("no type", {"id": "e2"}, "unknown_type", "e2"),
        ("a list as type", {"type": ["send"], "id": "e3"}, "unknown_type", "e3"),
        ("an object as type", {"type": {"a": 1}, "id": "e4"}, "unknown_type", "e4"),
        ("a NUL in the type", {"type": "send\u0000", "id": "e5"}, "unknown_type", "e5"),
        ("an id of 65 characters", {"type": "ping", "id": "x" * 65}, "bad_request", None),
        ("a float id", {"type": "ping", "id": 1.5}, "bad_request", None),
        ("a boolean id", {"type": "ping", "id": True}, "bad_request", None),
        ("an object id", {"type": "ping", "id": {"a": 1}}, "bad_request", None),
        ("a 2^63 id", '{"type":"ping","id":9223372036854775808}', "bad_request", None),
        ("a bad client_id", {**send, "client_id": "nope"}, "bad_request", "s"),
        ("a NUL client_id", {**send, "client_id": "\u0000"}, "bad_request", "s"),
        (
            "an url-safe body",
            {**send, "ciphertexts": [{**send["ciphertexts"][0], "body": "-_8="}]},
            "bad_request",
            "s",
        ),
        ("a huge reply_to_seq", {**send, "reply_to_seq": 2**63}, "bad_request", "s"),
        ("a device twice", {**send, "ciphertexts": send["ciphertexts"] * 2}, "bad_request", "s"),
        ("a missing device", {**send, "ciphertexts": []}, "device_mismatch", "s"),
        (
            "a ciphertext over the limit",
            {
                **send,
                "ciphertexts": [
                    {**send["ciphertexts"][0], "body": b64(b"x" * (MAX_CIPHERTEXT + 1))}
                ],
            },
            "too_large",
            "s",
        ),
        (
            "a stranger's conversation",
            {**send, "conversation": ids.encode(ids.CONVERSATION, ids.random_key())},
            "not_member",
            "s",
        ),
        (
            "a negative read",
            {"type": "read", "id": "r", "conversation": chat.direct.public_id, "up_to_seq": -1},
            "bad_request",
            "r",
        ),
        (
            "a bad typing state",
            {
                "type": "typing",
                "id": "t",
                "conversation": chat.direct.public_id,
                "state": "singing",
            },
            "bad_request",
            "t",
        ),
        (
            "101 subscriptions",
            {
                "type": "presence.subscribe",
                "id": "p",
                "user_ids": [f"u_{i + 1}" for i in range(101)],
            },
            "bad_request",
            "p",
        ),
    ]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_every_bad_frame_gets_its_error_and_the_socket_stays_open(people, settings, subtests):
    import orjson

    settings.NATTER = {**settings.NATTER, "ABUSE_ERRORS": 1000}
    chat = await database_sync_to_async(Chat)(people)
    ws = await open_socket(chat.a1)
    for what, sent, code, ref in _frames(chat):
        with subtests.test(what):
            if isinstance(sent, bytes):
                await ws.send_to(bytes_data=sent)
            else:
                await ws.send_to(
                    text_data=sent if isinstance(sent, str) else orjson.dumps(sent).decode()
                )
            reply = await ws.receive_json_from(timeout=5)
            assert reply["type"] == "error" and reply["code"] == code, reply
            assert reply["ref"] == ref
            if code == "too_large":
                assert reply["max_bytes"] in (MAX_FRAME, MAX_CIPHERTEXT)
            if code == "device_mismatch":
                assert reply["missing"] == [chat.b1.public_id] and reply["extra"] == []
    # Still open, still working, and nothing was stored.
    await ws.send_json_to({"type": "ping", "id": "alive"})
    assert await ws.receive_json_from(timeout=5) == {"type": "pong", "ref": "alive"}
    assert await database_sync_to_async(chat.stored)() == (0, 0)
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_socket_unknown_fields_are_ignored_and_a_replayed_client_id_is_acked_once(people):
    chat = await database_sync_to_async(Chat)(people)
    ws = await open_socket(chat.a1)
    client_id = uuid.uuid4()
    frame = {
        **send_frame(chat.direct, [chat.b1], client_id=client_id),
        "x_future": [1, {"a": None}],
    }
    await ws.send_json_to(frame)
    first = await ws.receive_json_from(timeout=5)
    await ws.send_json_to(
        {
            **frame,
            "id": "again",
            "ciphertexts": [{**frame["ciphertexts"][0], "body": b64(b"other")}],
        }
    )
    again = await ws.receive_json_from(timeout=5)
    assert first["type"] == again["type"] == "ack"
    assert {k: v for k, v in first.items() if k != "ref"} == {
        k: v for k, v in again.items() if k != "ref"
    }
    assert again["ref"] == "again"
    assert await database_sync_to_async(chat.stored)() == (1, 1)
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_outage_on_a_frame_is_an_unavailable_error_and_the_socket_stays_open(people):
    chat = await database_sync_to_async(Chat)(people)
    ws = await open_socket(chat.a1)
    with mock.patch(
        "apps.messaging.services._counters_statement", side_effect=OperationalError("down")
    ):
        await ws.send_json_to(send_frame(chat.direct, [chat.b1], frame_id="o"))
        reply = await ws.receive_json_from(timeout=5)
    assert reply | {"message": ""} == {
        "type": "error",
        "ref": "o",
        "code": "unavailable",
        "message": "",
        "retry_after": 2,
    }
    await ws.send_json_to({"type": "ping", "id": "p"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "pong"
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_long_poll_refuses_bad_queries_and_methods(people):
    from tests.security.helpers import poll

    device = await database_sync_to_async(people.device)(
        await database_sync_to_async(people.user)()
    )
    for query in (
        b"timeout=31",
        b"limit=501",
        b"cursor=-1",
        b"cursor=%00",
        b"cursor=" + b"9" * 40,
        b"timeout=\xff",
    ):
        status, _, body = await poll(device, query)
        assert status == 400 and b'"bad_request"' in body, query
    comm = HttpCommunicator(
        application,
        "POST",
        "/api/v1/events",
        headers=[(b"authorization", f"Bearer {device.token}".encode())],
    )
    response = await comm.get_response()
    assert response["status"] == 405 and b'"method_not_allowed"' in response["body"]
    status, headers, body = await poll(None)
    assert status == 401 and headers[b"www-authenticate"] == b'Bearer realm="api"'
