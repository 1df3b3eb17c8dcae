"""Schemathesis over the OpenAPI document: no endpoint answers 500, whatever it is sent.

Every operation of `GET /api/schema/` is called through Django's WSGI application
with generated (valid and invalid) parameters and bodies, authenticated with a
real device's bearer token, in the test's database transaction. A bounded number
of examples keeps the run near a minute; examples are derandomized.
"""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hsettings

from apps.messaging import services as messaging

# Loaded at collection: the document needs neither authentication nor the database.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture(autouse=True)
def _wsgi_in_the_test_transaction(db, settings, tmp_path):
    # Uploads land in a temporary directory; the limits are the defaults.
    backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": tmp_path / "media"},
    }
    settings.STORAGES = {**settings.STORAGES, "media": backend, "default": backend}
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    # Past the limits (tested on their own), so that every example reaches the code.
    settings.NATTER = {**settings.NATTER, "RATE_LIMITS": False}
    # What Django's test client does: the handler must not close the connection that
    # holds the test's transaction at the end of each request.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def devices(people):
    """alice's device (whose token every call carries) in a chat with bob, and a spare one."""
    alice, bob = people.user(), people.user()
    a1 = people.device(alice)
    people.device(bob)
    messaging.conversation_direct_get_or_create(user=alice, other_user_id=bob.id)
    return {"main": a1, "spare": people.device(alice, "spare", keys=False), "people": people}


@schema.parametrize()
@hsettings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_a_server_error(case, devices):
    device = devices["main"]
    if case.path == "/api/v1/auth/logout":
        # Logging out revokes the calling device: use one made for it.
        device = devices["spare"] = devices["people"].device(
            devices["main"].user, "spare", keys=False
        )
    response = case.call(headers={"Authorization": f"Bearer {device.token}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", ""):
        body = response.json()
        assert isinstance(body.get("error", {}).get("code"), str), body
