from celery import shared_task

from apps.media import services


@shared_task
def media_expire_task() -> dict:
    return services.media_expire()
