"""The floor under Natter's latency: its frames, relayed with none of its work.

`bench.load --app bench.floor:application` runs the same generator against daphne
processes that serve this application instead of Natter's. Its /ws/v1/ socket
speaks the frames a direct message costs in Natter: the hello, the send's ack, the
recipient's `message` event, the recipient's ack, the sender's `delivered`
receipt and its ack. They have the same fields and sizes. But nothing is stored,
checked or read: the database is used once per socket, to find the device from its
token. A send goes from the sender's socket to the recipient's in memory when both
are in the process (as Natter's doorbells do), and through the channel layer
otherwise.

What it measures is what daphne, Channels, the event loop and the generator cost
on this machine by themselves: a latency Natter cannot go below here, however
little its own work costs. A diagnostic, never a result against a target.
"""

import base64
import collections
import itertools
import os
from datetime import UTC, datetime

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()  # before the models are imported below

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from apps.accounts.scope_auth import device_for_scope  # noqa: E402
from apps.common import ids, jsonutil  # noqa: E402
from apps.common.asgi import SessionsForCookies  # noqa: E402
from apps.common.db import NoConnectionSweepMixin  # noqa: E402
from apps.common.loopwatch import LoopWatch  # noqa: E402
from apps.messaging.consumers import hello_frame, parse_frame  # noqa: E402
from apps.messaging.selectors import message_event  # noqa: E402
from config.asgi import router as natter_router  # noqa: E402

# This process's sockets, by device id (the newest wins, as in Natter).
_SOCKETS: dict[int, "FloorConsumer"] = {}
# Server-assigned numbers, per process: message ids and each conversation's seqs.
_MESSAGE_IDS = itertools.count(1)
_SEQS: collections.defaultdict[str, itertools.count] = collections.defaultdict(
    lambda: itertools.count(1)
)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _group(device_id: int) -> str:
    return f"floor.{device_id}"


class FloorConsumer(NoConnectionSweepMixin, AsyncWebsocketConsumer):
    """Relay sends to their recipients' sockets and acks back as receipts."""

    async def connect(self):
        self.device = await device_for_scope(self.scope, websocket=True)
        await self.accept()
        if self.device is None:
            await self.close(code=4401)
            return
        self.cursor = 0
        # Pushed and not yet acked: (cursor, sender device, conversation, seq) of messages.
        self.unacked: collections.deque[tuple[int, int | None, str, int]] = collections.deque()
        self.user_public_id = self.device.user.public_id
        _SOCKETS[self.device.id] = self
        await self.channel_layer.group_add(_group(self.device.id), self.channel_name)
        await self.send_frame(hello_frame(self.device))
        await self.send_frame({"type": "drained"})

    async def disconnect(self, code):
        if getattr(self, "device", None) is not None:
            if _SOCKETS.get(self.device.id) is self:
                del _SOCKETS[self.device.id]
            await self.channel_layer.group_discard(_group(self.device.id), self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        frame, ref = parse_frame(text_data)
        kind = frame.get("type")
        if kind == "send":
            await self.on_send(frame, ref)
        elif kind == "ack":
            await self.on_ack(int(frame["cursor"]))
        elif kind == "ping":
            await self.send_frame({"type": "pong", "ref": ref})

    async def on_send(self, frame: dict, ref):
        conversation = frame["conversation"]
        seq = next(_SEQS[conversation])
        message_id = next(_MESSAGE_IDS)
        now = datetime.now(UTC)
        await self.send_frame(
            {
                "type": "ack",
                "ref": ref,
                "client_id": frame["client_id"],
                "message_id": ids.encode(ids.MESSAGE, message_id),
                "conversation": conversation,
                "seq": seq,
                "server_ts": _iso(now),
            }
        )
        for ciphertext in frame["ciphertexts"]:
            # Built by Natter's own code, so the frame is the one Natter would push.
            event = message_event(
                message_id,
                frame["client_id"],
                ids.decode(ids.CONVERSATION, conversation),
                seq,
                self.device.user_id,
                self.device.id,
                frame.get("kind", "text"),
                now,
                frame.get("reply_to_seq"),
                ciphertext["envelope"],
                base64.b64decode(ciphertext["body"]),
                None,
            )
            await self.relay(
                ids.decode(ids.DEVICE, ciphertext["device"]),
                {"type": "floor.push", "event": event, "from_device": self.device.id},
            )

    async def on_ack(self, cursor: int):
        """Tell each sender, once per ack, up to which seq its messages arrived."""
        for sender, receipt in self.receipts_upto(cursor):
            await self.relay(sender, {"type": "floor.push", "event": receipt, "from_device": None})

    def receipts_upto(self, cursor: int) -> list[tuple[int, dict]]:
        """The `delivered` receipts an ack up to `cursor` owes: (sender device, event),
        one per sender and conversation."""
        upto: dict[tuple[int, str], int] = {}
        while self.unacked and self.unacked[0][0] <= cursor:
            _, sender, conversation, seq = self.unacked.popleft()
            if sender is not None:
                upto[(sender, conversation)] = max(seq, upto.get((sender, conversation), 0))
        now = _iso(datetime.now(UTC))
        return [
            (
                sender,
                {
                    "type": "receipt",
                    "conversation": conversation,
                    "status": "delivered",
                    "by_user": self.user_public_id,
                    "up_to_seq": seq,
                    "at": now,
                },
            )
            for (sender, conversation), seq in upto.items()
        ]

    async def relay(self, device_id: int, message: dict):
        socket = _SOCKETS.get(device_id)
        if socket is not None:
            await socket.floor_push(message)
        else:
            await self.channel_layer.group_send(_group(device_id), message)

    async def floor_push(self, message: dict):
        self.cursor += 1
        event = message["event"]
        if event["type"] == "message":
            self.unacked.append(
                (self.cursor, message["from_device"], event["conversation"], event["seq"])
            )
        await self.send_frame({"type": "event", "cursor": self.cursor, "event": event})

    async def send_frame(self, frame: dict):
        await self.send(text_data=jsonutil.dumps(frame))


# Watched as Natter's own application is (config/asgi.py), for the same figures.
application = LoopWatch(
    ProtocolTypeRouter(
        {
            # The same HTTP side (bench.server waits for "/" to answer before it runs).
            "http": natter_router.application_mapping["http"],
            "websocket": SessionsForCookies(
                URLRouter([re_path(r"^ws/v1/?$", FloorConsumer.as_asgi())])
            ),
        }
    )
)
