"""ASGI middleware that runs before Django."""

from django.conf import settings

from apps.common import jsonutil
from apps.common.errors import TooLarge


class BodySizeLimit:
    """Answer 413 `too_large` (JSON) to an API request whose declared body is too big.

    Django would refuse it too, but with a plain-text page after buffering; here
    the body is never read and the answer has the protocol's error shape.
    """

    def __init__(self, app, *, prefix: str = "/api/"):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
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
