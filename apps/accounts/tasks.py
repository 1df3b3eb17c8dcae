from celery import shared_task
from django.contrib.sessions.models import Session
from django.utils import timezone


@shared_task(acks_late=True, reject_on_worker_lost=True)
def sessions_clear_task() -> int:
    """Delete expired browser sessions (Django's clearsessions, on beat)."""
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
