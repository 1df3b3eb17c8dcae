"""MEDIA_STORAGE=s3: the same uploads and downloads against an S3-compatible server."""

import hashlib
import socket

import boto3
import pytest
from moto.server import ThreadedMotoServer
from rest_framework.test import APIClient

from apps.media.models import Media
from apps.messaging.services import conversation_direct_get_or_create

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume"),
]


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="natter-media")
    yield url
    server.stop()


@pytest.fixture
def s3_storage(settings, s3_endpoint, tmp_path):
    # The same OPTIONS config/settings.py builds from the MEDIA_S3_* variables.
    backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": "natter-media",
            "endpoint_url": s3_endpoint,
            "region_name": "us-east-1",
            "access_key": "test",
            "secret_key": "test",
            "location": "natter",
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
    settings.STORAGES = {**settings.STORAGES, "media": backend, "default": backend}
    settings.MEDIA_ROOT = tmp_path
    settings.NATTER = {**settings.NATTER, "MEDIA_PART_MAX_BYTES": 64 * 1024}
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def test_blobs_go_to_the_bucket_and_come_back_whole_and_by_range(people, s3_storage):
    alice, bob = people.user(), people.user()
    a, b = people.device(alice), people.device(bob)
    conversation, _ = conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    sender, reader = APIClient(), APIClient()
    sender.credentials(HTTP_AUTHORIZATION=f"Bearer {a.token}")
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {b.token}")

    small = b"small ciphertext" * 100
    r = sender.generic(
        "POST",
        f"/api/v1/media?conversation={conversation.public_id}",
        small,
        content_type="application/octet-stream",
    )
    assert r.status_code == 201, r.content
    big = bytes(range(256)) * 1000  # 256,000 bytes in 64 KiB parts
    opened = sender.post(
        f"/api/v1/media/uploads?conversation={conversation.public_id}",
        {"size": len(big)},
        format="json",
    ).json()
    offset = 0
    while offset < len(big):
        answer = sender.generic(
            "PATCH",
            f"/api/v1/media/{opened['media_id']}?offset={offset}",
            big[offset : offset + 64 * 1024],
            content_type="application/octet-stream",
        ).json()
        offset = answer["offset"]
    assert answer["complete"] and answer["sha256"] == hashlib.sha256(big).hexdigest()

    keys = [o["Key"] for o in s3_storage.list_objects_v2(Bucket="natter-media")["Contents"]]
    assert len(keys) == 2 and all(k.startswith("natter/blobs/") for k in keys)
    for media_id, data in ((r.json()["media_id"], small), (opened["media_id"], big)):
        response = reader.get(f"/api/v1/media/{media_id}")
        assert response.status_code == 200 and b"".join(response) == data
    response = reader.get(f"/api/v1/media/{opened['media_id']}", HTTP_RANGE="bytes=1000-1999")
    assert response.status_code == 206 and b"".join(response) == big[1000:2000]

    from apps.media.services import media_delete

    media_delete(media=Media.objects.get(id=int(opened["media_id"][2:])), reason="staff")
    keys = [o["Key"] for o in s3_storage.list_objects_v2(Bucket="natter-media")["Contents"]]
    assert len(keys) == 1
    assert reader.get(f"/api/v1/media/{opened['media_id']}").status_code == 410
