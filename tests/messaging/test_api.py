"""The REST API of accounts and messaging, through Django's test client on Postgres."""

import uuid

import pytest
from rest_framework.test import APIClient

from apps.messaging.models import InboxEntry, Message
from tests.conftest import b64, keys_upload_body

pytestmark = pytest.mark.django_db

PASSWORD = "a long pass phrase 42"


def client_for(token=None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def signup(name: str, device: str = "laptop") -> dict:
    anon = client_for()
    r = anon.post(
        "/api/v1/auth/register",
        {"username": name, "password": PASSWORD, "display_name": name.title()},
        format="json",
    )
    assert r.status_code == 201, r.content
    r = anon.post(
        "/api/v1/auth/login",
        {"username": name, "password": PASSWORD, "device_name": device},
        format="json",
    )
    assert r.status_code == 201, r.content
    return publish(r.json())


def publish(login_answer: dict) -> dict:
    """Publish keys for a freshly logged-in device, as every real client does at once."""
    body, _ = keys_upload_body()
    r = client_for(login_answer["token"]).put("/api/v1/keys", body, format="json")
    assert r.status_code == 200, r.content
    return login_answer


def login(name: str, device: str) -> dict:
    r = client_for().post(
        "/api/v1/auth/login",
        {"username": name, "password": PASSWORD, "device_name": device},
        format="json",
    )
    assert r.status_code == 201
    return publish(r.json())


@pytest.fixture
def pair():
    alice, bob = signup("alice"), signup("bob")
    a, b = client_for(alice["token"]), client_for(bob["token"])
    r = a.post("/api/v1/conversations/direct", {"user_id": bob["user"]["id"]}, format="json")
    assert r.status_code == 201
    InboxEntry.objects.all().delete()
    return alice, bob, a, b, r.json()


def message(conversation, devices, client_id=None, body=b"hi"):
    return {
        "client_id": str(client_id or uuid.uuid4()),
        "conversation": conversation["id"],
        "kind": "text",
        "ciphertexts": [{"device": d, "envelope": "message", "body": b64(body)} for d in devices],
    }


def test_register_login_me_and_the_token_is_stored_only_as_a_hash():
    from apps.accounts.models import Device

    body = signup("carol")
    assert body["user"]["username"] == "carol" and body["device"]["name"] == "laptop"
    device = Device.objects.get()
    assert body["token"] not in device.token_hash and len(device.token_hash) == 64
    me = client_for(body["token"]).get("/api/v1/me").json()
    assert me == {**body["user"], "last_seen_visibility": "everyone"}


def test_each_login_is_a_new_device_with_its_own_token():
    first = signup("dave")
    second = login("dave", "phone")
    assert first["device"]["id"] != second["device"]["id"] and first["token"] != second["token"]
    devices = client_for(first["token"]).get(f"/api/v1/users/{first['user']['id']}/devices").json()
    assert {d["id"] for d in devices} == {first["device"]["id"], second["device"]["id"]}


def test_a_taken_username_is_a_conflict_whatever_its_case():
    signup("erin")
    r = client_for().post(
        "/api/v1/auth/register", {"username": "ERIN", "password": PASSWORD}, format="json"
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_wrong_password_is_401_with_the_error_shape():
    signup("frank")
    r = client_for().post(
        "/api/v1/auth/login", {"username": "frank", "password": "nope"}, format="json"
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_weak_password_is_refused_with_bad_request():
    r = client_for().post(
        "/api/v1/auth/register", {"username": "gina", "password": "123"}, format="json"
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_no_token_or_a_bad_one_is_401():
    assert client_for().get("/api/v1/me").status_code == 401
    r = client_for("bogus").get("/api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_logout_revokes_the_device_and_its_token():
    body = signup("hank")
    c = client_for(body["token"])
    assert c.post("/api/v1/auth/logout").status_code == 204
    assert c.get("/api/v1/me").status_code == 401


def test_user_lookup_is_by_exact_handle_only():
    body = signup("ivy")
    c = client_for(body["token"])
    assert c.get("/api/v1/users", {"handle": "IVY"}).json()["id"] == body["user"]["id"]
    assert c.get("/api/v1/users", {"handle": "iv"}).status_code == 404
    assert c.get("/api/v1/users").status_code == 400


def test_patch_me_changes_display_name_and_visibility():
    body = signup("jack")
    c = client_for(body["token"])
    r = c.patch(
        "/api/v1/me", {"display_name": "Jack R.", "last_seen_visibility": "nobody"}, format="json"
    )
    assert r.json()["display_name"] == "Jack R." and r.json()["last_seen_visibility"] == "nobody"
    r = c.patch("/api/v1/me", {"last_seen_visibility": "martians"}, format="json")
    assert r.status_code == 400


def test_send_is_201_and_a_resend_is_200_with_the_same_ack(pair):
    alice, bob, a, b, conversation = pair
    body = message(conversation, [bob["device"]["id"]])
    first = a.post("/api/v1/messages", body, format="json")
    again = a.post("/api/v1/messages", body, format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json() == again.json() and first.json()["seq"] == 1
    assert Message.objects.count() == 1


def test_device_mismatch_is_409_with_missing_and_extra(pair):
    alice, bob, a, b, conversation = pair
    r = a.post("/api/v1/messages", message(conversation, ["d_12345"]), format="json")
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "device_mismatch"
    assert error["missing"] == [bob["device"]["id"]] and error["extra"] == ["d_12345"]


def test_sending_to_a_conversation_you_are_not_in_looks_like_it_does_not_exist(pair):
    alice, bob, a, b, conversation = pair
    mallory = signup("mallory")
    m = client_for(mallory["token"])
    real = m.post("/api/v1/messages", message(conversation, []), format="json")
    fake = m.post("/api/v1/messages", message({"id": "c_999"}, []), format="json")
    assert real.status_code == fake.status_code == 404
    assert real.json() == fake.json()


def test_bad_input_gets_documented_codes_never_a_500(pair, settings):
    alice, bob, a, b, conversation = pair
    cases = [
        ("not json at all", 400, "bad_request"),
        ({"conversation": conversation["id"]}, 400, "bad_request"),
        ({**message(conversation, [bob["device"]["id"]]), "kind": "poem"}, 400, "bad_request"),
        ({**message(conversation, [bob["device"]["id"]]), "reply_to_seq": "x"}, 400, "bad_request"),
        ({**message(conversation, [bob["device"]["id"]]), "conversation": 5}, 400, "bad_request"),
    ]
    for payload, status, code in cases:
        r = a.post(
            "/api/v1/messages",
            payload,
            format="json" if isinstance(payload, dict) else None,
            content_type=None if isinstance(payload, dict) else "application/json",
        )
        assert r.status_code == status, (payload, r.content)
        assert r.json()["error"]["code"] == code
    bad_b64 = message(conversation, [bob["device"]["id"]])
    bad_b64["ciphertexts"][0]["body"] = "***"
    assert a.post("/api/v1/messages", bad_b64, format="json").status_code == 400
    huge = message(
        conversation,
        [bob["device"]["id"]],
        body=b"x" * (settings.NATTER["CIPHERTEXT_MAX_BYTES"] + 1),
    )
    r = a.post("/api/v1/messages", huge, format="json")
    assert r.status_code == 413
    assert r.json()["error"]["max_bytes"] == settings.NATTER["CIPHERTEXT_MAX_BYTES"]
    assert Message.objects.count() == 0


def test_send_rate_limit_is_429_with_retry_after(pair, settings):
    settings.NATTER = {**settings.NATTER, "SEND_RATE": 1, "SEND_BURST": 3}
    alice, bob, a, b, conversation = pair
    statuses = [
        a.post("/api/v1/messages", message(conversation, [bob["device"]["id"]]), format="json")
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [201, 201, 201, 429]
    assert int(statuses[-1]["Retry-After"]) >= 1
    assert statuses[-1].json()["error"]["retry_after"] >= 1


def test_conversation_list_has_last_seq_and_my_read_seq(pair):
    alice, bob, a, b, conversation = pair
    for _ in range(3):
        a.post("/api/v1/messages", message(conversation, [bob["device"]["id"]]), format="json")
    r = b.post("/api/v1/read", {"conversation": conversation["id"], "up_to_seq": 2}, format="json")
    assert r.json() == {"conversation": conversation["id"], "read_seq": 2}
    (listed,) = b.get("/api/v1/conversations").json()
    assert listed["last_seq"] == 3 and listed["read_seq"] == 2 and listed["title"] == "Alice"
    assert {m["username"] for m in listed["members"]} == {"alice", "bob"}


def test_events_page_acks_by_cursor_and_drains_page_by_page(pair):
    alice, bob, a, b, conversation = pair
    for _ in range(5):
        a.post("/api/v1/messages", message(conversation, [bob["device"]["id"]]), format="json")
    page = b.get("/api/v1/events", {"cursor": 0, "limit": 2, "timeout": 0}).json()
    assert [e["event"]["seq"] for e in page["events"]] == [1, 2] and page["has_more"]
    page = b.get(
        "/api/v1/events", {"cursor": page["next_cursor"], "limit": 10, "timeout": 0}
    ).json()
    assert [e["event"]["seq"] for e in page["events"]] == [3, 4, 5] and not page["has_more"]
    assert (
        b.post("/api/v1/events/ack", {"cursor": page["next_cursor"]}, format="json").status_code
        == 200
    )
    assert InboxEntry.objects.filter(device__user__username="bob").count() == 0
    assert b.get("/api/v1/events", {"timeout": 99}).status_code == 400


def test_openapi_schema_lists_every_endpoint():
    r = client_for().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    paths = r.json()["paths"] if r["Content-Type"].endswith("json") else r.content.decode()
    for path in [
        "/api/v1/messages",
        "/api/v1/events",
        "/api/v1/events/ack",
        "/api/v1/read",
        "/api/v1/auth/login",
        "/api/v1/conversations",
        "/api/v1/users/{user_id}/devices",
    ]:
        assert path in paths


def test_an_ack_beyond_what_was_handed_out_deletes_nothing_unseen(pair):
    alice, bob, a, b, conversation = pair
    a.post("/api/v1/messages", message(conversation, [bob["device"]["id"]]), format="json")
    # Bob names a cursor far ahead of anything he was given: nothing is deleted.
    page = b.get("/api/v1/events", {"cursor": 99, "timeout": 0}).json()
    assert [e["event"]["seq"] for e in page["events"]] == [1]
    assert b.post("/api/v1/events/ack", {"cursor": 500}, format="json").json() == {
        "cursor": page["next_cursor"]
    }
    a.post("/api/v1/messages", message(conversation, [bob["device"]["id"]]), format="json")
    assert b.post("/api/v1/events/ack", {"cursor": 500}, format="json").status_code == 200
    page = b.get("/api/v1/events", {"cursor": 0, "timeout": 0}).json()
    assert [e["event"]["seq"] for e in page["events"]] == [2]


def test_a_redis_outage_is_503_unavailable_not_a_500(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    r = client_for().post("/api/v1/auth/login", {"username": "x", "password": "y"}, format="json")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable" and r["Retry-After"]
