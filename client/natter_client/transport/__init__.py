"""Connections to a device's inbox over WebSocket or long-poll, with one public interface.

Both transports hand inbox events to the application through one queue, de-duplicate them,
acknowledge by cursor, and resend a message with the same client_id until the server acks it.
"""

from .base import Connection
from .longpoll import LongPollConnection
from .websocket import WebSocketConnection

__all__ = ["Connection", "LongPollConnection", "WebSocketConnection"]
