"""ASGI middleware that runs before Django."""

from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings

from apps.common import jsonutil
from apps.common.errors import TooLarge


class BodySizeLimit:
    """Answer 413 `too_large` (JSON) to an API request whose declared body is too big.

    Django would refuse it too, but with a plain-text page after buffering; here
    the body is never read and the answer has the protocol's error shape.
    """

    def __init__(self, app, *, prefix: str = "/api/", uploads: str = "/api/v1/media"):
        self.app = app
        self.prefix = prefix
        self.uploads = uploads

    def limit_for(self, path: str) -> int | None:
        # Media bodies go to storage, not to a serializer: they may be larger than a
        # frame, up to what one request may carry (a whole small file, or one part).
        if path.rstrip("/") == self.uploads:
            return settings.NATTER["MEDIA_SINGLE_MAX_BYTES"]
        if path.startswith(self.uploads + "/"):
            return settings.NATTER["MEDIA_PART_MAX_BYTES"]
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            limit = self.limit_for(scope["path"])
            length = dict(scope.get("headers", [])).get(b"content-length", b"0")
            if limit is not None and length.isdigit() and int(length) > limit:
                error = TooLarge("The request body is too large.", max_bytes=limit)
                body = jsonutil.dumpb({"error": error.as_dict()})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class SessionsForCookies:
    """Give a connection Django's session only when it carries the session cookie.

    Channels' session middleware wraps every frame a socket sends; a client that
    authenticates with a bearer token (the SDK, the CLI, other servers' clients)
    has no session to load or save, and skips that work on each frame.
    """

    def __init__(self, inner):
        self.inner = inner
        self.with_session = CookieMiddleware(SessionMiddleware(inner))

    async def __call__(self, scope, receive, send):
        cookie_name = settings.SESSION_COOKIE_NAME.encode()
        for name, value in scope.get("headers", ()):
            if name == b"cookie" and cookie_name in value:
                return await self.with_session(scope, receive, send)
        return await self.inner(scope, receive, send)
