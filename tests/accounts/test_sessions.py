"""The browser: a session bound to one device, for REST, WebSocket and long-poll."""

import pytest
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.conf import settings
from django.test import Client

from config.asgi import application

PASSWORD = "a long pass phrase 42"


def browser_login(client: Client, people) -> dict:
    user = people.user("webby")
    r = client.post(
        "/api/v1/auth/login",
        {
            "username": user.username,
            "password": PASSWORD,
            "device_name": "browser",
            "session": True,
        },
        content_type="application/json",
    )
    assert r.status_code == 201
    return r.json()


@pytest.mark.django_db
def test_a_logged_in_session_is_bound_to_its_device(people):
    browser = Client(enforce_csrf_checks=True)
    body = browser_login(browser, people)
    assert browser.get("/api/v1/me").json()["id"] == body["user"]["id"]
    # Logging out (with the CSRF token the page hands out) revokes the device and
    # ends the session.
    browser.get("/")
    csrf = browser.cookies["csrftoken"].value
    r = browser.post("/api/v1/auth/logout", content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert r.status_code == 204
    assert browser.get("/api/v1/me").status_code == 401


@pytest.mark.django_db
def test_session_writes_need_csrf(people):
    browser = Client(enforce_csrf_checks=True)
    browser_login(browser, people)
    r = browser.post(
        "/api/v1/read", {"conversation": "c_1", "up_to_seq": 1}, content_type="application/json"
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


@pytest.mark.django_db
def test_a_session_whose_device_was_revoked_is_not_authenticated(people):
    from apps.accounts.models import Device
    from apps.accounts.services import device_revoke

    browser = Client()
    body = browser_login(browser, people)
    device_revoke(device=Device.objects.get(id=int(body["device"]["id"][2:])))
    assert browser.get("/api/v1/me").status_code == 401


def _cookie_header(client: Client) -> bytes:
    return f"sessionid={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_websocket_accepts_the_session_cookie_from_our_origin_only(people):
    from channels.db import database_sync_to_async

    browser = Client()
    body = await database_sync_to_async(browser_login)(browser, people)
    cookie = _cookie_header(browser)
    ours = WebsocketCommunicator(
        application, "/ws/v1/", headers=[(b"origin", b"http://127.0.0.1:8000"), (b"cookie", cookie)]
    )
    assert (await ours.connect())[0]
    hello = await ours.receive_json_from()
    assert hello["type"] == "hello" and hello["device"] == body["device"]["id"]
    await ours.disconnect()
    ipv6 = WebsocketCommunicator(
        application, "/ws/v1/", headers=[(b"origin", b"http://[::1]:8000"), (b"cookie", cookie)]
    )
    assert (await ipv6.connect())[0]
    assert (await ipv6.receive_json_from())["type"] == "hello"
    await ipv6.disconnect()
    foreign = WebsocketCommunicator(
        application, "/ws/v1/", headers=[(b"origin", b"https://evil.example"), (b"cookie", cookie)]
    )
    await foreign.connect()
    assert (await foreign.receive_output())["code"] == 4401


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_long_poll_with_a_session_needs_the_natter_header(people):
    from channels.db import database_sync_to_async

    browser = Client()
    await database_sync_to_async(browser_login)(browser, people)
    cookie = _cookie_header(browser)
    path = "/api/v1/events"
    plain = HttpCommunicator(application, "GET", path, headers=[(b"cookie", cookie)])
    plain.scope["query_string"] = b"timeout=0"
    assert (await plain.get_response())["status"] == 401
    marked = HttpCommunicator(
        application, "GET", path, headers=[(b"cookie", cookie), (b"x-natter-session", b"1")]
    )
    marked.scope["query_string"] = b"timeout=0"
    response = await marked.get_response()
    assert response["status"] == 200
