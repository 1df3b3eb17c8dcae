"""Celery side of groups: the fan-out and the sweeper that makes it survive workers."""

from celery import shared_task
from django.conf import settings

from apps.messaging import services


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fanout_message_task(message_id: int) -> int:
    """Write a group message's inbox rows (idempotent: safe to run twice)."""
    return services.message_fanout(message_id=message_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fanout_sweep_task() -> int:
    """Queue again every fan-out still pending after FANOUT_STALE_S (a worker died).

    On the Redis broker an unacknowledged task returns only after the visibility
    timeout (an hour); this sweep is what brings a killed fan-out back in seconds.
    """
    pending = services.fanout_pending_ids(older_than_s=settings.NATTER["FANOUT_STALE_S"])
    for message_id in pending:
        fanout_message_task.delay(message_id)
    return len(pending)
