"""Authentication of raw ASGI scopes: WebSockets and the long-poll consumer."""

from urllib.parse import urlparse

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.http.request import validate_host

from apps.accounts.authentication import SESSION_DEVICE_KEY, bearer_token
from apps.accounts.models import Device
from apps.accounts.selectors import device_for_session, device_for_token
from apps.common.db import db_call

# Long-polls authenticated by a session cookie must carry this header: a foreign
# page cannot add it to a cross-site request, so it cannot ack a user's inbox.
SESSION_POLL_HEADER = b"x-natter-session"


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope) -> bool:
    origin = header(scope, b"origin")
    if not origin:
        return False
    host = urlparse(origin).hostname
    if not host:
        return False
    # ALLOWED_HOSTS writes IPv6 literals in brackets, as Host headers carry them.
    if ":" in host:
        host = f"[{host}]"
    return validate_host(host, settings.ALLOWED_HOSTS)


async def device_for_scope(scope, *, websocket: bool) -> Device | None:
    """Return the authenticated device of a connection, or None.

    A bearer token is enough. A session cookie counts only from a page of our own:
    checked by Origin for WebSockets (no cross-site WebSocket hijacking) and by a
    custom header for the long-poll.
    """
    token = bearer_token(header(scope, b"authorization"))
    if token:
        return await db_call(device_for_token)(token=token)
    session = scope.get("session")
    if session is None:
        return None
    if websocket and not origin_allowed(scope):
        return None
    if not websocket and header(scope, SESSION_POLL_HEADER) is None:
        return None
    return await db_call(_session_device)(session)


def _session_device(session) -> Device | None:
    # Reading the session loads it from the database: done in the same thread hop.
    return device_for_session(
        user_id=session.get(SESSION_KEY), device_id=session.get(SESSION_DEVICE_KEY)
    )
