"""The WebSocket: one socket per device, pushing its inbox in order (PROTOCOL §5, §8)."""

import asyncio
import collections
import logging
import time
from datetime import UTC, datetime

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.accounts.scope_auth import device_for_scope
from apps.common import jsonutil, metrics
from apps.common.db import NoConnectionSweepMixin, db_call
from apps.common.errors import (
    OUTAGES,
    BadRequest,
    NatterError,
    RateLimited,
    TooLarge,
    Unavailable,
    UnknownType,
)
from apps.common.ratelimit import aconnect_hit, scope_client_ip
from apps.common.validation import validated
from apps.messaging import batching, delivery, events, selectors, serializers, services
from apps.messaging.events import device_group
from apps.presence.consumers import PresenceSocketMixin

logger = logging.getLogger("natter.ws")

CLOSE_UNAUTHORIZED = 4401
CLOSE_ELSEWHERE = 4409
CLOSE_ABUSE = 4429

# Pumps started by in-memory rings, kept referenced until they finish.
_RINGING: set = set()


class InboxConsumer(NoConnectionSweepMixin, PresenceSocketMixin, AsyncWebsocketConsumer):
    """Push a device's inbox with at most `window` unacknowledged events in flight."""

    async def connect(self):
        self.device = None
        try:
            # Counted before authentication: a flood of connects costs a Redis call each.
            await aconnect_hit(scope_client_ip(self.scope))
        except RateLimited as error:
            await self.accept()
            await self.send_frame({"type": "error", "ref": None, **error.as_dict()})
            await self.close(code=CLOSE_ABUSE)
            return
        self.device = await device_for_scope(self.scope, websocket=True)
        # Accept first: a close code (4401) can only be sent on an open socket.
        await self.accept()
        if self.device is None:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        metrics.SOCKETS.inc()
        self.counted = True
        self.window = settings.NATTER["WINDOW"]
        self.group = device_group(self.device.id)
        self.opened_at = time.time_ns()
        self.pushed_cursor = 0
        self.drain_target = 2**63  # known once the inbox is looked at, below
        self.in_flight: collections.deque[int] = collections.deque()
        self.errors: collections.deque[float] = collections.deque()
        self.drained_sent = False
        self.more_waiting = True
        self.pumping = False  # a pump is running; rings meanwhile set `rung`
        self.rung = False
        await self.channel_layer.group_add(self.group, self.channel_name)
        events.local_listen(self.device.id, self)
        # The newest socket of a device wins; older ones hear this and close (4409).
        await self.channel_layer.group_send(
            self.group,
            {"type": "socket.takeover", "channel": self.channel_name, "opened_at": self.opened_at},
        )
        await self.send_frame(hello_frame(self.device))
        await self.presence_open()
        self.drain_target = await db_call(selectors.inbox_last_cursor)(device_id=self.device.id)
        await self.pump()

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            metrics.SOCKETS.dec()
            self.counted = False
        await self.presence_close()
        if getattr(self, "group", None):
            events.local_unlisten(self.device.id, self)
            await self.channel_layer.group_discard(self.group, self.channel_name)

    # --- client frames --------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        ref = None
        try:
            await self.presence_heard()
            frame, ref = parse_frame(text_data)
            kind = frame.get("type")
            # Only a string names a handler: a list or object `type` is unhashable.
            handler = self.FRAME_HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise UnknownType(f"Unknown frame type {kind!r}."[:200])
            await handler(self, frame, ref)
        except NatterError as error:
            await self.send_error(error, ref)
        except OUTAGES:
            logger.exception("backing service error on a frame")
            await self.send_error(Unavailable(), ref)

    async def on_send(self, frame, ref):
        data = validated(serializers.MessageSendSerializer, frame, fast=serializers.send_fast)
        result = await batching.message_send(
            services.SendRequest(sender_device=self.device, **serializers.send_arguments(data))
        )
        metrics.SENDS_WS.inc()
        if result.duplicate:
            metrics.SEND_DUPLICATES.inc()
        await self.send_frame({"type": "ack", "ref": ref, **result.as_ack()})

    async def on_ack(self, frame, ref):
        cursor = validated(serializers.CursorSerializer, frame, fast=serializers.cursor_fast)[
            "cursor"
        ]
        # Never delete what this socket has not pushed: a client cannot ack unseen rows.
        cursor = min(cursor, self.pushed_cursor)
        metrics.ACKS_WS.inc()
        # Rows before the oldest one in flight were acked by earlier frames: this ack
        # deletes from there (the rows' index entries before it are left alone).
        # With none in flight, from the start, as a repeated ack may be repairing one
        # whose commit failed.
        after = self.in_flight[0] - 1 if self.in_flight and self.in_flight[0] <= cursor else 0
        while self.in_flight and self.in_flight[0] <= cursor:
            self.in_flight.popleft()
        if cursor > 0:
            # The next push reads after what was pushed, not after what was acked, so
            # it need not wait for the ack's commit (which gathers a burst of acks).
            commit = asyncio.ensure_future(batching.inbox_ack(self.device, cursor, after))
            if ref is not None:
                await commit
            else:
                commit.add_done_callback(_report_ack_failure)
        if ref is not None:
            await self.send_frame({"type": "ok", "ref": ref})
        if self.more_waiting:  # the window was full: the ack made room
            await self.pump()

    async def on_read(self, frame, ref):
        data = validated(serializers.ReadSerializer, frame)
        read_seq = await db_call(services.conversation_read)(
            device=self.device, conversation_id=data["conversation"], up_to_seq=data["up_to_seq"]
        )
        if ref is not None:
            await self.send_frame({"type": "ok", "ref": ref, "read_seq": read_seq})

    async def on_ping(self, frame, ref):
        await self.send_frame({"type": "pong", "ref": ref} if ref is not None else {"type": "pong"})
        # A heartbeat also refreshes the group membership (it expires in the layer)
        # and looks at the inbox, so a lost doorbell delays delivery by one beat only.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.pump()

    FRAME_HANDLERS = {
        "send": on_send,
        "ack": on_ack,
        "read": on_read,
        "ping": on_ping,
        **PresenceSocketMixin.PRESENCE_FRAME_HANDLERS,
    }

    # --- channel layer events -------------------------------------------------------

    async def inbox_ring(self, message):
        await self.pump(carried=message)

    async def socket_takeover(self, message):
        newer = (message["opened_at"], message["channel"]) > (self.opened_at, self.channel_name)
        if message["channel"] != self.channel_name and newer:
            events.local_unlisten(self.device.id, self)  # rings go to the newer socket now
            await self.close(code=CLOSE_ELSEWHERE)

    async def device_revoked(self, message):
        await self.close(code=CLOSE_UNAUTHORIZED)

    # --- pushing --------------------------------------------------------------------

    def doorbell(self, message):
        """A ring from this process (events.local_listen): pump outside the dispatch."""
        task = asyncio.ensure_future(self._pump_quietly(message))
        _RINGING.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_RINGING.discard)

    async def _pump_quietly(self, message):
        try:
            await self.pump(carried=message)
        except OUTAGES:  # nothing is lost: the rows wait for the next ring or heartbeat
            logger.warning("could not push the inbox of device %s", self.device.id)

    async def pump(self, carried: dict | None = None):
        """Push waiting events; one pump at a time, again if rung while it ran.

        Rings from this process arrive outside the consumer's dispatch (doorbell),
        so two pumps could otherwise read the same events and push them twice.
        `carried` is a doorbell, maybe with the events it announces
        (events.ring_doorbells_on_commit). A ring that comes while a pump runs
        makes it read the inbox once more instead.
        """
        if self.pumping:
            self.rung = True
            return
        self.pumping = True
        try:
            while True:
                self.rung = False
                await self._pump_once(carried)
                carried = None
                if not self.rung:
                    return
        finally:
            self.pumping = False

    async def _pump_once(self, ring: dict | None = None):
        """Push waiting events while the window has room; say `drained` once."""
        announced = ring.get("last") if ring else None
        if announced is not None and announced <= self.pushed_cursor:
            return  # all it announced is pushed already (a later ring came first)
        room = self.window - len(self.in_flight)
        if room <= 0:
            self.more_waiting = True
            return
        page = self._carried_page(ring, room)
        read_after_ring = page is None and announced is not None
        if page is None:
            page = await batching.inbox_after(self.device.id, self.pushed_cursor, room)
        metrics.observe_pushed(page, "ws")
        for item in page:
            await self.send(text_data=jsonutil.dumps({"type": "event", **item}))
            self.pushed_cursor = item["cursor"]
            self.in_flight.append(item["cursor"])
        if read_after_ring and len(page) < room:
            # Every row up to `last` was committed before the ring, and this read
            # found no more: cursors left unused (skipped conflicts) are passed, so
            # the next doorbell's events can be taken as they come.
            self.pushed_cursor = max(self.pushed_cursor, announced)
        if page:  # for staff's delivery trace; written in the background
            delivery.amark_pushed(
                device_id=self.device.id, cursor=self.pushed_cursor, transport="ws"
            )
        exhausted = len(page) < room
        # Until a doorbell rings, there is nothing to look for once the inbox ran out.
        self.more_waiting = not exhausted
        if not self.drained_sent and (exhausted or self.pushed_cursor >= self.drain_target):
            self.drained_sent = True
            await self.send_frame({"type": "drained"})

    def _carried_page(self, ring: dict | None, room: int) -> list[dict] | None:
        """The events a doorbell carries, when they are exactly the next ones to push.

        They are if this socket pushed everything up to the cursor they follow (its
        device's rows commit in cursor order) and the window has room for them all;
        otherwise None, and the inbox is read.
        """
        if not ring or "items" not in ring or ring["after"] != self.pushed_cursor:
            return None
        items = ring["items"]
        return items if len(items) <= room else None

    async def send_frame(self, frame: dict):
        await self.send(text_data=jsonutil.dumps(frame))

    async def send_error(self, error: NatterError, ref):
        await self.send_frame({"type": "error", "ref": ref, **error.as_dict()})
        if isinstance(error, Unavailable):
            # Our outage, not the client's abuse: a database or Redis outage must not
            # close every socket that keeps retrying with 4429 (a close for good).
            return
        now = time.monotonic()
        self.errors.append(now)
        while self.errors and self.errors[0] < now - settings.NATTER["ABUSE_WINDOW_S"]:
            self.errors.popleft()
        if len(self.errors) > settings.NATTER["ABUSE_ERRORS"]:
            await self.close(code=CLOSE_ABUSE)


def hello_frame(device) -> dict:
    """The first frame of a socket: who it is, and the heartbeat and window it gets."""
    conf = settings.NATTER
    return {
        "type": "hello",
        "user": device.user.public_id,
        "device": device.public_id,
        "heartbeat_s": conf["HEARTBEAT_S"],
        "window": conf["WINDOW"],
        "server_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def parse_frame(text_data: str | None) -> tuple[dict, str | int | None]:
    """Read a client frame: a JSON object of at most FRAME_MAX_BYTES, with a valid `id`.

    Returns the frame and its `id` (None when it has none); raises BadRequest or
    TooLarge, and never anything else, whatever the client sent.
    """
    if text_data is None:
        raise BadRequest("Frames must be JSON text.")
    if _utf8_length(text_data) > settings.NATTER["FRAME_MAX_BYTES"]:
        raise TooLarge("The frame is too large.", max_bytes=settings.NATTER["FRAME_MAX_BYTES"])
    try:
        frame = jsonutil.loads(text_data)
    except ValueError as exc:  # orjson: also NaN, Infinity, lone surrogates, > 64-bit ints
        raise BadRequest("The frame is not valid JSON.") from exc
    if not isinstance(frame, dict):
        raise BadRequest("A frame is a JSON object.")
    ref = frame.get("id")
    if ref is not None and not _valid_ref(ref):
        raise BadRequest("A frame id is a string of at most 64 characters or an integer.")
    return frame, ref


def _valid_ref(ref) -> bool:
    if isinstance(ref, bool):
        return False
    if isinstance(ref, int):
        return -(2**63) <= ref < 2**63
    return isinstance(ref, str) and len(ref) <= 64


def _utf8_length(text: str) -> int:
    # A character is at most 4 bytes: only frames near the limit pay for encoding.
    if len(text) * 4 <= settings.NATTER["FRAME_MAX_BYTES"]:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _report_ack_failure(commit: "asyncio.Future") -> None:
    # Nothing is lost when an ack fails: its rows stay and come back on reconnect.
    if not commit.cancelled() and commit.exception() is not None:
        logger.warning("an ack could not be committed: %s", commit.exception())
