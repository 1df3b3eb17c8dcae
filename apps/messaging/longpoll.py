"""`GET /api/v1/events`: the long-poll, held without a thread or a database connection.

A Channels consumer routed before Django (STACK-NOTES trap 2): it answers at once
when events wait; otherwise it joins the device's doorbell group and answers on
the first ring or when the timeout passes. Database work happens in short hops,
never across the wait (trap 3).
"""

import asyncio
import contextlib
from urllib.parse import parse_qsl

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer

from apps.accounts.scope_auth import device_for_scope
from apps.common import jsonutil, metrics
from apps.common.db import NoConnectionSweepMixin, db_call
from apps.common.errors import OUTAGES, MethodNotAllowed, NatterError, Unauthorized, Unavailable
from apps.common.ratelimit import aconnect_hit, scope_client_ip
from apps.common.validation import validated
from apps.messaging import serializers, services
from apps.messaging.events import device_group
from apps.presence.consumers import PresencePollMixin


class EventsLongPollConsumer(NoConnectionSweepMixin, PresencePollMixin, AsyncHttpConsumer):
    group: str | None = None
    timer: asyncio.TimerHandle | None = None
    responded = False

    async def __call__(self, scope, receive, send):
        # A held poll waits on the channel layer, which is Redis: when Redis goes
        # away under it, answer the retryable 503 `unavailable` like every other
        # path does, instead of letting daphne turn the exception into a 500 page
        # (which clients rightly take as final).
        try:
            await super().__call__(scope, receive, send)
        except OUTAGES:
            if not self.responded:
                with contextlib.suppress(StopConsumer):
                    await self.respond_error(Unavailable())

    async def http_request(self, message):
        if message.get("more_body"):
            return
        try:
            if self.scope["method"] != "GET":
                await self.respond_error(MethodNotAllowed())
            await aconnect_hit(scope_client_ip(self.scope))
            self.device = await device_for_scope(self.scope, websocket=False)
            if self.device is None:
                raise Unauthorized()
            query = dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))
            params = validated(serializers.EventsQuerySerializer, query)
            self.limit = params["limit"]
            # The request is the device's heartbeat; it also learns missed presence changes.
            await self.presence_poll_start(timeout=params["timeout"])
            # Join before reading, so a ring between the read and the join is not missed.
            self.group = device_group(self.device.id)
            await self.channel_layer.group_add(self.group, self.channel_name)
            page = await db_call(services.inbox_poll)(
                device=self.device, cursor=params["cursor"], limit=self.limit
            )
            self.cursor = page["next_cursor"]
            if page["events"] or self.ephemeral or params["timeout"] == 0:
                await self.finish(page)
            await self.presence_poll_wait()
            metrics.LONGPOLLS_WAITING.inc()
            self.waiting = True
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(params["timeout"], self._timed_out)
        except NatterError as error:
            await self.respond_error(error)
        except OUTAGES:
            await self.respond_error(Unavailable())

    def _timed_out(self):
        # Hand the timeout to the consumer's own queue, so it is handled in order
        # with doorbells and the StopConsumer ends this consumer.
        asyncio.ensure_future(self.channel_layer.send(self.channel_name, {"type": "poll.timeout"}))

    async def inbox_ring(self, message):
        try:
            page = await db_call(services.inbox_page)(
                device=self.device, after_cursor=self.cursor, limit=self.limit
            )
        except OUTAGES:
            await self.respond_error(Unavailable())
        if page["events"]:
            await self.finish(page)

    async def poll_timeout(self, message):
        await self.finish(
            {"events": [], "next_cursor": self.cursor, "ephemeral": [], "has_more": False}
        )

    async def device_revoked(self, message):
        await self.respond_error(Unauthorized("This device was revoked."))

    async def socket_takeover(self, message):
        """A WebSocket of the same device opened; a long-poll is not affected."""

    async def finish(self, body: dict):
        metrics.observe_pushed(body["events"], "longpoll")
        metrics.LONGPOLLS.labels("events" if body["events"] else "empty").inc()
        await self.presence_poll_answered()
        await self.send_json(200, {**body, "ephemeral": self.ephemeral}, [])

    async def answer_ephemeral(self):
        """A typing or presence notice arrived during the wait: answer with it now."""
        await self.finish({"events": [], "next_cursor": self.cursor, "has_more": False})

    async def respond_error(self, error: NatterError, status: int | None = None):
        headers = []
        if "retry_after" in error.extra:
            headers.append((b"retry-after", str(error.extra["retry_after"]).encode()))
        if error.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="api"'))
        await self.send_json(status or error.status, {"error": error.as_dict()}, headers)

    async def send_json(self, status: int, body: dict, headers: list):
        data = jsonutil.dumpb(body)
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
        ]
        self.responded = True
        await self.send_response(status, data, headers=headers)
        await self.leave()
        raise StopConsumer()

    async def leave(self):
        if getattr(self, "waiting", False):
            metrics.LONGPOLLS_WAITING.dec()
            self.waiting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        group, self.group = self.group, None
        # Best effort: groups expire in the layer, and Redis may be what just failed.
        with contextlib.suppress(*OUTAGES):
            if group is not None:
                await self.channel_layer.group_discard(group, self.channel_name)
            await self.presence_poll_leave()

    async def http_disconnect(self, message):
        await self.leave()
        raise StopConsumer()
