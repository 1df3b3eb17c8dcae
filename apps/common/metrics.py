"""Prometheus metrics (`GET /metrics`, staff or `METRICS_TOKEN`), on prometheus_client.

Counters and histograms are updated where things happen (sockets, sends, acks,
pushes, long-polls); inbox depth and fan-out lag are read from Postgres when
scraped. With several processes on one host set PROMETHEUS_MULTIPROC_DIR (as
`make run-cluster` does): every process writes its samples there and any process
answers the scrape with all of them.
"""

import hmac
import os
import time
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

# Registered with the rest: each process's event-loop lag and collector pauses.
from apps.common import loopwatch  # noqa: F401

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

SOCKETS = Gauge(
    "natter_connected_sockets",
    "WebSockets open now.",
    multiprocess_mode="livesum",
)
LONGPOLLS_WAITING = Gauge(
    "natter_longpolls_waiting",
    "Long-polls held open now, waiting for an event.",
    multiprocess_mode="livesum",
)
LONGPOLLS = Counter("natter_longpolls_total", "Long-poll requests answered.", ["outcome"])
SENDS = Counter("natter_sends_total", "Messages accepted (acked to the sender).", ["transport"])
SEND_DUPLICATES = Counter(
    "natter_send_duplicates_total", "Sends answered with the original ack (a resend)."
)
ACKS = Counter("natter_acks_total", "Inbox acknowledgements received.", ["transport"])
PUSHED = Counter("natter_events_pushed_total", "Inbox events handed to devices.", ["transport"])
DELIVERY = Histogram(
    "natter_delivery_latency_seconds",
    "From a message's store to its push to a device (first hand-out).",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
)


def observe_pushed(events, transport: str) -> None:
    """Count pushed events and the delivery latency of their messages."""
    now = time.time()
    count = 0
    for item in events:
        count += 1
        event = item["event"]
        if event.get("type") == "message":
            sent = event.get("sent_at")
            if sent:
                DELIVERY.observe(max(0.0, now - datetime.fromisoformat(sent).timestamp()))
    if count:
        _PUSHED_BY[transport].inc(count)


# Label children looked up once: `.labels()` takes a lock and builds a key per call,
# and a socket process counts every frame.
SENDS_WS, SENDS_REST = SENDS.labels("ws"), SENDS.labels("rest")
ACKS_WS, ACKS_REST = ACKS.labels("ws"), ACKS.labels("rest")
_PUSHED_BY = {transport: PUSHED.labels(transport) for transport in ("ws", "longpoll")}


class DatabaseCollector:
    """Read at scrape time: what waits in the inboxes and how far fan-out lags."""

    def describe(self):
        # Registering asks for the names; answer without touching the database.
        return [
            GaugeMetricFamily("natter_inbox_depth", ""),
            GaugeMetricFamily("natter_fanout_lag_seconds", ""),
            GaugeMetricFamily("natter_fanout_pending", ""),
        ]

    def collect(self):
        from apps.messaging.models import InboxEntry, Message

        depth = GaugeMetricFamily(
            "natter_inbox_depth", "Inbox events stored and not yet acknowledged (estimate)."
        )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class"
                    " WHERE oid = 'messaging_inboxentry'::regclass"
                )
                depth.add_metric([], cursor.fetchone()[0])
        else:
            depth.add_metric([], InboxEntry.objects.count())
        yield depth
        pending = Message.objects.filter(fanout_pending=True)
        oldest = pending.order_by("created_at").values_list("created_at", flat=True).first()
        lag = GaugeMetricFamily(
            "natter_fanout_lag_seconds", "Age of the oldest group message not fanned out yet."
        )
        lag.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp()))
        yield lag
        count = GaugeMetricFamily("natter_fanout_pending", "Group messages not fanned out yet.")
        count.add_metric([], pending.count())
        yield count


_DATABASE = DatabaseCollector()
if not MULTIPROCESS:
    REGISTRY.register(_DATABASE)


def _registry():
    if not MULTIPROCESS:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(_DATABASE)
    return registry


def _allowed(request) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer "), token)
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def metrics_view(request):
    if not _allowed(request):
        response = HttpResponse("Staff or the metrics token only.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
