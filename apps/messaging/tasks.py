from celery import shared_task

from apps.messaging import services


@shared_task(acks_late=True, reject_on_worker_lost=True)
def inbox_expire_task() -> dict:
    """Expire undelivered inbox rows past RETENTION_DAYS (scheduled by beat)."""
    return services.inbox_expire()
