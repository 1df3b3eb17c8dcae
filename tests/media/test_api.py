"""Media over REST: upload, who may download, ranges, expiry, unused uploads, limits."""

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.media import services
from apps.media.models import Media
from apps.messaging.models import Message
from apps.messaging.services import conversation_direct_get_or_create
from tests.messaging.helpers import send

pytestmark = [
    pytest.mark.django_db,
    # Downloads stream through an async iterator, as daphne serves them; the test
    # client's synchronous iteration collects it, and says so.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume"),
]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": tmp_path / "media"},
    }
    settings.STORAGES = {**settings.STORAGES, "media": backend, "default": backend}
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    settings.MEDIA_ROOT = tmp_path / "media"  # partial uploads gather here
    return tmp_path / "media"


def blobs(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def api(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.token}")
    return client


def upload(device, conversation, data: bytes):
    return api(device).generic(
        "POST",
        f"/api/v1/media?conversation={conversation.public_id}",
        data,
        content_type="application/octet-stream",
    )


def download(device, media_id: str, **headers):
    # The view streams with an async iterator (as served by daphne); the test
    # client's synchronous iteration collects it, with a warning.
    response = api(device).get(f"/api/v1/media/{media_id}", **headers)
    body = b"".join(response) if response.streaming else response.content
    return response, body


@pytest.fixture
def chat(people):
    alice, bob = people.user(), people.user()
    a, b = people.device(alice), people.device(bob)
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    return a, b, conversation


def test_a_member_uploads_and_both_members_download_the_same_bytes(chat, media_root):
    a, b, conversation = chat
    data = bytes(range(256)) * 1000
    r = upload(a, conversation, data)
    assert r.status_code == 201, r.content
    answer = r.json()
    assert answer["size"] == len(data)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["media_id"].startswith("f_")
    assert len(blobs(media_root)) == 1
    for device in (a, b):
        response, body = download(device, answer["media_id"])
        assert response.status_code == 200 and body == data
        assert response["Content-Length"] == str(len(data))
        assert response["Accept-Ranges"] == "bytes"


def test_outsiders_get_the_same_404_as_for_an_id_that_does_not_exist(chat, people):
    a, _, conversation = chat
    media_id = upload(a, conversation, b"secret bytes").json()["media_id"]
    outsider = people.device(people.user())
    theirs, _ = download(outsider, media_id)
    nothing, _ = download(outsider, "f_12345")
    junk, _ = download(outsider, "m_1")
    assert theirs.status_code == nothing.status_code == junk.status_code == 404
    assert theirs.json() == nothing.json() == junk.json()
    r = upload(outsider, conversation, b"x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_member"


def test_ranges_resume_a_download(chat):
    a, b, conversation = chat
    data = bytes(range(200))
    media_id = upload(a, conversation, data).json()["media_id"]
    response, body = download(b, media_id, HTTP_RANGE="bytes=10-19")
    assert response.status_code == 206 and body == data[10:20]
    assert response["Content-Range"] == "bytes 10-19/200"
    response, body = download(b, media_id, HTTP_RANGE="bytes=150-")
    assert response.status_code == 206 and body == data[150:]
    response, body = download(b, media_id, HTTP_RANGE="bytes=-5")
    assert response.status_code == 206 and body == data[-5:]
    response, body = download(b, media_id, HTTP_RANGE="bytes=500-")
    assert response.status_code == 416 and response["Content-Range"] == "bytes */200"
    assert response.json()["error"]["code"] == "range_not_satisfiable"
    response, body = download(b, media_id, HTTP_RANGE="bytes=0-1,5-6")  # several: all of it
    assert response.status_code == 200 and body == data


def test_an_expired_blob_is_deleted_and_answers_410(chat, media_root):
    a, b, conversation = chat
    media_id = upload(a, conversation, b"old photo").json()["media_id"]
    Media.objects.update(referenced_at=timezone.now())
    counts = services.media_expire(now=timezone.now() + timedelta(days=31))
    assert counts == {"expired": 1, "unreferenced": 0}
    assert blobs(media_root) == []
    response, _ = download(b, media_id)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "media_expired"


def test_an_upload_no_message_named_within_a_day_is_removed_and_a_sent_one_stays(chat, media_root):
    a, b, conversation = chat
    unsent = upload(a, conversation, b"never sent").json()["media_id"]
    sent = upload(a, conversation, b"sent").json()["media_id"]
    r = api(a).post(
        "/api/v1/messages",
        {
            "client_id": str(uuid.uuid4()),
            "conversation": conversation.public_id,
            "kind": "media",
            "media_id": sent,
            "ciphertexts": [{"device": b.public_id, "envelope": "message", "body": "AAAA"}],
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    counts = services.media_expire(now=timezone.now() + timedelta(hours=25))
    assert counts == {"expired": 0, "unreferenced": 1}
    assert download(b, unsent)[0].status_code == 410
    assert download(b, sent)[1] == b"sent"
    assert len(blobs(media_root)) == 1


def test_a_message_can_only_name_its_senders_own_upload_in_that_conversation(chat, people):
    a, b, conversation = chat
    bobs = upload(b, conversation, b"bob's").json()["media_id"]

    def send_media(media_id, kind="media"):
        return api(a).post(
            "/api/v1/messages",
            {
                "client_id": str(uuid.uuid4()),
                "conversation": conversation.public_id,
                "kind": kind,
                "media_id": media_id,
                "ciphertexts": [{"device": b.public_id, "envelope": "message", "body": "AAAA"}],
            },
            format="json",
        )

    for media_id in (bobs, "f_999"):
        r = send_media(media_id)
        assert r.status_code == 400 and r.json()["error"]["field"] == "media_id"
    mine = upload(a, conversation, b"mine").json()["media_id"]
    r = send_media(mine, kind="text")
    assert r.status_code == 400 and "media_id" in r.json()["error"]["fields"]
    assert send(a, conversation, [b]) is not None  # nothing stored by the refusals
    assert Message.objects.filter(conversation=conversation).count() == 1


def test_uploads_over_the_limit_get_413_and_leave_nothing(chat, settings, media_root, tmp_path):
    settings.NATTER = {**settings.NATTER, "MEDIA_SINGLE_MAX_BYTES": 1000}
    a, _, conversation = chat
    r = upload(a, conversation, b"x" * 1001)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "too_large" and error["max_bytes"] == 1000
    assert "in parts" in error["message"]
    assert blobs(media_root) == [] and not Media.objects.exists()
    assert [p for p in tmp_path.iterdir() if p.is_file()] == []  # no spool left behind
    assert upload(a, conversation, b"x" * 1000).status_code == 201


def test_an_empty_upload_is_refused(chat):
    a, _, conversation = chat
    r = upload(a, conversation, b"")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_uploads_are_rate_limited_per_user(chat, settings):
    settings.NATTER = {**settings.NATTER, "MEDIA_UPLOAD_RATE": 2}
    a, _, conversation = chat
    assert [upload(a, conversation, b"1").status_code for _ in range(3)] == [201, 201, 429]


def test_staff_see_blobs_and_can_delete_one(chat, staff, media_root):
    a, b, conversation = chat
    media_id = upload(a, conversation, b"z" * 2048).json()["media_id"]
    page = staff.get("/admin/media/media/")
    assert page.status_code == 200 and media_id in page.content.decode()
    assert "2.0\xa0KB" in page.content.decode()
    media = Media.objects.get()
    r = staff.post(
        "/admin/media/media/",
        {"action": "delete_blobs", "_selected_action": [media.pk]},
        follow=True,
    )
    assert r.status_code == 200
    media.refresh_from_db()
    assert media.deleted_reason == "staff" and blobs(media_root) == []
    assert download(b, media_id)[0].status_code == 410


def start(device, conversation, size: int):
    return api(device).post(
        f"/api/v1/media/uploads?conversation={conversation.public_id}",
        {"size": size},
        format="json",
    )


def part(device, media_id: str, offset: int, data: bytes):
    return api(device).generic(
        "PATCH",
        f"/api/v1/media/{media_id}?offset={offset}",
        data,
        content_type="application/octet-stream",
    )


def test_a_resumable_upload_goes_up_in_parts_and_resumes_after_a_lost_answer(
    chat, settings, media_root, django_capture_on_commit_callbacks
):
    settings.NATTER = {**settings.NATTER, "MEDIA_PART_MAX_BYTES": 1000}
    a, b, conversation = chat
    data = bytes(range(256)) * 10  # 2560 bytes: three parts
    r = start(a, conversation, len(data))
    assert r.status_code == 201
    opened = r.json()
    assert opened["offset"] == 0 and opened["complete"] is False
    assert opened["part_max_bytes"] == 1000 and opened["sha256"] is None
    media_id = opened["media_id"]
    assert download(b, media_id)[0].status_code == 404  # not there until complete

    assert part(a, media_id, 0, data[:1000]).json()["offset"] == 1000
    # The answer to the second part is "lost": the client sends it again.
    assert part(a, media_id, 1000, data[1000:2000]).json()["offset"] == 2000
    again = part(a, media_id, 1000, data[1000:2000])
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "offset_mismatch",
        "message": again.json()["error"]["message"],
        "offset": 2000,
    }
    with django_capture_on_commit_callbacks(execute=True):  # the parts go once committed
        done = part(a, media_id, 2000, data[2000:])
    assert done.status_code == 200
    assert done.json()["complete"] is True and done.json()["offset"] == len(data)
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert download(b, media_id)[1] == data
    assert not (media_root / "partial").exists() or list((media_root / "partial").iterdir()) == []


def test_resumable_upload_limits(chat, settings, people):
    settings.NATTER = {**settings.NATTER, "MEDIA_PART_MAX_BYTES": 100, "MEDIA_MAX_BYTES": 500}
    a, b, conversation = chat
    r = start(a, conversation, 501)
    assert r.status_code == 413 and r.json()["error"]["max_bytes"] == 500
    assert start(a, conversation, 0).status_code == 400
    media_id = start(a, conversation, 150).json()["media_id"]
    r = part(a, media_id, 0, b"x" * 101)
    assert r.status_code == 413 and r.json()["error"]["max_bytes"] == 100
    assert part(a, media_id, 0, b"x" * 100).json()["offset"] == 100
    r = part(a, media_id, 100, b"x" * 51)  # past the declared size
    assert r.status_code == 400
    assert part(b, media_id, 100, b"x" * 50).status_code == 404  # not Bob's upload
    outsider = people.device(people.user())
    assert start(outsider, conversation, 10).status_code == 404
    r = api(a).post(
        "/api/v1/messages",
        {
            "client_id": str(uuid.uuid4()),
            "conversation": conversation.public_id,
            "kind": "media",
            "media_id": media_id,
            "ciphertexts": [{"device": b.public_id, "envelope": "message", "body": "AAAA"}],
        },
        format="json",
    )
    assert r.status_code == 400  # an unfinished upload cannot be sent
    assert part(a, media_id, 100, b"x" * 50).json()["complete"] is True


def test_an_unfinished_upload_is_removed_after_a_day(chat, media_root):
    a, _, conversation = chat
    media_id = start(a, conversation, 10).json()["media_id"]
    part(a, media_id, 0, b"12345")
    assert len(blobs(media_root)) == 1  # the partial file
    counts = services.media_expire(now=timezone.now() + timedelta(hours=25))
    assert counts["unreferenced"] == 1
    assert blobs(media_root) == []
    assert part(a, media_id, 5, b"67890").status_code == 404


def test_a_browser_session_uploads_with_its_csrf_token_and_not_without(people, media_root):
    from django.test import Client

    alice, bob = people.user(), people.user()
    people.device(bob)
    browser = Client(enforce_csrf_checks=True)
    answer = browser.post(
        "/api/v1/auth/login",
        {"username": alice.username, "password": "a long pass phrase 42", "session": True},
        content_type="application/json",
    )
    assert answer.status_code == 201
    device_token = answer.json()["token"]
    keys = APIClient()
    keys.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token}")
    from tests.conftest import keys_upload_body

    assert keys.put("/api/v1/keys", keys_upload_body()[0], format="json").status_code == 200
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    url = f"/api/v1/media?conversation={conversation.public_id}"
    refused = browser.generic("POST", url, b"blob", content_type="application/octet-stream")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    token = browser.cookies["csrftoken"].value
    for content_type in ("application/octet-stream", ""):
        r = browser.generic(
            "POST", url, b"encrypted blob", content_type=content_type, HTTP_X_CSRFTOKEN=token
        )
        assert r.status_code == 201, r.content
        assert r.json()["size"] == len(b"encrypted blob")
