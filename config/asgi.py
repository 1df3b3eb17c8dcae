"""ASGI entry point: `config.asgi:application`.

The long-poll endpoint is routed to a Channels consumer *before* Django, so a
waiting poll holds neither a thread nor a database connection (STACK-NOTES trap 2).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.common.asgi import BodySizeLimit, SessionsForCookies  # noqa: E402
from apps.common.loopwatch import LoopWatch  # noqa: E402
from apps.messaging.consumers import InboxConsumer  # noqa: E402
from apps.messaging.longpoll import EventsLongPollConsumer  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": BodySizeLimit(
            URLRouter(
                [
                    re_path(
                        r"^api/v1/events/?$",
                        SessionsForCookies(EventsLongPollConsumer.as_asgi()),
                    ),
                    re_path(r"", django_asgi_app),
                ]
            )
        ),
        # Origin is checked by the consumer, only for cookie-authenticated sockets:
        # a bearer token cannot be replayed by a foreign page, a session cookie can.
        "websocket": SessionsForCookies(
            URLRouter([re_path(r"^ws/v1/?$", InboxConsumer.as_asgi())])
        ),
    }
)

# LoopWatch: each process's event-loop lag and collector pauses, in /metrics.
application = LoopWatch(router)
