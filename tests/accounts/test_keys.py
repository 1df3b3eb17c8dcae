"""The key directory (PROTOCOL §2): upload, count, claim, prekeys_low, identity changes."""

import threading

import pytest
from django.db import connection
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from apps.accounts import services
from apps.accounts.models import OneTimePreKey
from apps.messaging.models import InboxEntry
from apps.messaging.services import conversation_direct_get_or_create
from tests.conftest import b64, keys_upload_body
from tests.messaging.helpers import events_of, send

pytestmark = pytest.mark.django_db


def api(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    return client


def put_keys(device, body):
    return api(device).put("/api/v1/keys", body, format="json")


def claim(device, user, **extra):
    return api(device).post(
        "/api/v1/keys/claim", {"user_id": user.public_id, **extra}, format="json"
    )


def error(response):
    return response.json()["error"]


@pytest.fixture
def fresh(people):
    """A user with one logged-in device that has not published keys yet."""
    user = people.user()
    return people.device(user, keys=False)


def test_upload_stores_the_keys_and_count_reports_the_stock(fresh):
    body, identity = keys_upload_body(one_time=25)
    r = put_keys(fresh, body)
    assert r.status_code == 200, r.content
    assert r.json() == {"one_time_prekeys": 25}
    assert api(fresh).get("/api/v1/keys/count").json() == {"one_time_prekeys": 25}
    fresh.refresh_from_db()
    assert bytes(fresh.identity_key) == bytes(identity.verify_key)


def test_a_signed_prekey_with_a_bad_signature_is_refused(fresh):
    body, _ = keys_upload_body()
    other = SigningKey.generate()
    spk = b64(bytes(PrivateKey.generate().public_key))
    body["signed_prekey"]["public_key"] = spk
    body["signed_prekey"]["signature"] = b64(other.sign(b"\x00" * 32).signature)
    r = put_keys(fresh, body)
    assert r.status_code == 400
    assert error(r)["code"] == "bad_signature"
    fresh.refresh_from_db()
    assert fresh.identity_key is None


def test_more_than_100_one_time_prekeys_in_one_call_are_refused(fresh):
    body, _ = keys_upload_body(one_time=101)
    r = put_keys(fresh, body)
    assert r.status_code == 400
    assert error(r)["code"] == "bad_request"
    assert not OneTimePreKey.objects.filter(device=fresh).exists()


def test_duplicate_key_ids_within_one_call_are_refused(fresh):
    body, _ = keys_upload_body(one_time=3)
    body["one_time_prekeys"][2]["key_id"] = body["one_time_prekeys"][0]["key_id"]
    r = put_keys(fresh, body)
    assert r.status_code == 400
    assert not OneTimePreKey.objects.filter(device=fresh).exists()


def test_key_ids_already_uploaded_are_refused_with_409_and_nothing_is_stored(fresh):
    body, identity = keys_upload_body(one_time=5)
    assert put_keys(fresh, body).status_code == 200
    again = {
        "identity_key": body["identity_key"],
        "one_time_prekeys": [
            {"key_id": 4, "public_key": b64(bytes(PrivateKey.generate().public_key))},
            {"key_id": 6, "public_key": b64(bytes(PrivateKey.generate().public_key))},
        ],
    }
    r = put_keys(fresh, again)
    assert r.status_code == 409
    assert error(r)["code"] == "duplicate_key_id"
    assert error(r)["key_ids"] == [4]
    assert OneTimePreKey.objects.filter(device=fresh).count() == 5


def test_a_top_up_needs_no_signed_prekey_but_a_first_upload_does(fresh):
    body, _ = keys_upload_body(one_time=2)
    first = dict(body)
    del first["signed_prekey"]
    r = put_keys(fresh, first)
    assert r.status_code == 400 and error(r)["field"] == "signed_prekey"
    assert put_keys(fresh, body).status_code == 200
    top_up, _ = keys_upload_body(one_time=3, start_id=10)
    top_up = {"identity_key": body["identity_key"], "one_time_prekeys": top_up["one_time_prekeys"]}
    r = put_keys(fresh, top_up)
    assert r.status_code == 200 and r.json() == {"one_time_prekeys": 5}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(identity_key=b64(b"\x01" * 31)),
        lambda b: b.update(identity_key="not base64!"),
        lambda b: b.update(identity_key=None),
        lambda b: b["signed_prekey"].update(key_id=0),
        lambda b: b["signed_prekey"].update(key_id=2**32),
        lambda b: b["signed_prekey"].update(key_id="7"),
        lambda b: b["signed_prekey"].update(signature=b64(b"\x00" * 63)),
        lambda b: b.update(one_time_prekeys=[{"key_id": -1, "public_key": b64(b"k" * 32)}]),
        lambda b: b.update(one_time_prekeys=[{"key_id": 1, "public_key": b64(b"k" * 33)}]),
        lambda b: b.update(one_time_prekeys="nope"),
    ],
)
def test_malformed_uploads_get_bad_request_and_store_nothing(fresh, mutate):
    body, _ = keys_upload_body()
    mutate(body)
    r = put_keys(fresh, body)
    assert r.status_code == 400, r.content
    assert error(r)["code"] == "bad_request"
    fresh.refresh_from_db()
    assert fresh.identity_key is None


def test_claim_hands_each_one_time_prekey_out_once_then_the_signed_prekey_alone(people):
    bob = people.user()
    phone = people.device(bob, "phone", keys=False)
    body, identity = keys_upload_body(one_time=2)
    assert put_keys(phone, body).status_code == 200
    alice = people.device(people.user())

    got = [claim(alice, bob).json()["bundles"] for _ in range(3)]
    assert [len(b) for b in got] == [1, 1, 1]
    assert [b[0]["one_time_prekey"] and b[0]["one_time_prekey"]["key_id"] for b in got] == [
        1,
        2,
        None,
    ]
    bundle = got[0][0]
    assert bundle["device_id"] == phone.public_id
    assert bundle["identity_key"] == body["identity_key"]
    assert bundle["signed_prekey"] == body["signed_prekey"]
    assert bundle["one_time_prekey"] == body["one_time_prekeys"][0]


def test_claim_covers_every_device_with_keys_and_honours_device_ids(people):
    bob = people.user()
    phone, laptop = people.device(bob, "phone"), people.device(bob, "laptop")
    people.device(bob, "new, no keys yet", keys=False)
    alice = people.device(people.user())
    bundles = claim(alice, bob).json()["bundles"]
    assert {b["device_id"] for b in bundles} == {phone.public_id, laptop.public_id}
    only = claim(alice, bob, device_ids=[laptop.public_id]).json()["bundles"]
    assert [b["device_id"] for b in only] == [laptop.public_id]


def test_claiming_an_unknown_user_is_404(people):
    alice = people.device(people.user())
    r = api(alice).post("/api/v1/keys/claim", {"user_id": "u_12345"}, format="json")
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    r = api(alice).post("/api/v1/keys/claim", {"user_id": "c_1"}, format="json")
    assert r.status_code == 400


def test_claims_are_rate_limited_per_claimer_and_per_claimed_user(people, settings):
    settings.NATTER = {**settings.NATTER, "KEY_CLAIM_RATE_PER_USER": 3}
    bob, carol = people.user(), people.user()
    people.device(bob), people.device(carol)
    alice, dave = people.device(people.user()), people.device(people.user())
    for _ in range(3):
        assert claim(alice, bob).status_code == 200
    r = claim(alice, bob)
    assert r.status_code == 429
    assert error(r)["code"] == "rate_limited" and error(r)["retry_after"] >= 1
    assert claim(alice, carol).status_code == 200  # another user is another bucket
    assert claim(dave, bob).status_code == 200  # another claimer too


def test_prekeys_low_is_sent_once_when_the_stock_falls_below_ten(people):
    bob = people.user()
    phone = people.device(bob, keys=False)
    body, _ = keys_upload_body(one_time=11)
    put_keys(phone, body)
    alice = people.device(people.user())
    claim(alice, bob)  # 10 left: nothing yet
    assert events_of(phone, "prekeys_low") == []
    claim(alice, bob)  # 9 left
    assert events_of(phone, "prekeys_low") == [{"type": "prekeys_low", "remaining": 9}]
    claim(alice, bob)  # 8 left, but the first notice is still unacknowledged
    assert len(events_of(phone, "prekeys_low")) == 1
    InboxEntry.objects.filter(device=phone).delete()  # the device acked it
    claim(alice, bob)
    assert events_of(phone, "prekeys_low") == [{"type": "prekeys_low", "remaining": 7}]


def test_a_device_is_announced_when_it_first_publishes_keys_not_at_login(people):
    alice, bob = people.user(), people.user()
    alice_phone, bob_phone = people.device(alice), people.device(bob)
    conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    laptop = people.device(bob, "laptop", keys=False)
    assert events_of(alice_phone, "device") == []
    body, _ = keys_upload_body()
    put_keys(laptop, body)
    expected = {
        "type": "device",
        "user": bob.public_id,
        "device": laptop.public_id,
        "action": "added",
    }
    assert events_of(alice_phone, "device") == [expected]
    assert events_of(bob_phone, "device") == [expected]


def test_a_new_identity_key_drops_old_prekeys_and_tells_everyone_who_shares_a_conversation(people):
    alice, bob, stranger = people.user(), people.user(), people.user()
    alice_phone, stranger_phone = people.device(alice), people.device(stranger)
    bob_phone = people.device(bob, keys=False)
    conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    body, _ = keys_upload_body(one_time=5)
    put_keys(bob_phone, body)
    InboxEntry.objects.all().delete()

    without_spk, _ = keys_upload_body()
    del without_spk["signed_prekey"]
    r = put_keys(bob_phone, without_spk)
    assert r.status_code == 400  # a new identity needs its own signed prekey
    renewed, _ = keys_upload_body(one_time=2, start_id=100)
    assert put_keys(bob_phone, renewed).json() == {"one_time_prekeys": 2}
    assert events_of(alice_phone, "device") == [
        {
            "type": "device",
            "user": bob.public_id,
            "device": bob_phone.public_id,
            "action": "identity_changed",
        }
    ]
    assert events_of(stranger_phone) == []
    assert sorted(
        OneTimePreKey.objects.filter(device=bob_phone).values_list("key_id", flat=True)
    ) == [
        100,
        101,
    ]


def test_a_device_without_keys_is_not_in_a_direct_send_and_not_in_conversation_devices(people):
    alice, bob = people.user(), people.user()
    alice_phone, bob_phone = people.device(alice), people.device(bob)
    people.device(bob, "setting up", keys=False)
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    send(alice_phone, conversation, [bob_phone])  # no device_mismatch
    r = api(alice_phone).get(f"/api/v1/conversations/{conversation.public_id}/devices")
    assert r.status_code == 200
    assert r.json()["kind"] == "direct"
    assert {d["device"] for d in r.json()["devices"]} == {
        alice_phone.public_id,
        bob_phone.public_id,
    }
    outsider = people.device(people.user())
    r = api(outsider).get(f"/api/v1/conversations/{conversation.public_id}/devices")
    assert r.status_code == 404 and error(r)["code"] == "not_member"


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_hand_out_one_key_twice(people):
    if connection.vendor != "postgresql":
        pytest.skip("needs Postgres row locks")
    bob = people.user()
    phone = people.device(bob, keys=False)
    body, _ = keys_upload_body(one_time=40)
    put_keys(phone, body)
    claimers = [people.device(people.user()) for _ in range(8)]
    results: list[int | None] = []
    lock = threading.Lock()
    start = threading.Barrier(len(claimers))

    def run(device):
        start.wait()
        try:
            for _ in range(6):
                bundles = services.keys_claim(claimer=device, user_id=bob.id)
                with lock:
                    results.append(
                        bundles[0]["one_time_prekey"] and bundles[0]["one_time_prekey"]["key_id"]
                    )
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(d,)) for d in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [k for k in results if k is not None]
    left = set(OneTimePreKey.objects.filter(device=phone).values_list("key_id", flat=True))
    assert len(results) == 48
    assert len(handed) == len(set(handed))  # none twice
    assert set(handed) | left == set(range(1, 41)) and not set(handed) & left  # none lost
    assert len(handed) >= 36  # a claim falls back only while the rest are locked
