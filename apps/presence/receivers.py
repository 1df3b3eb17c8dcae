"""Signal receivers of presence: a changed last_seen_visibility applies at once."""

import logging

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from apps.accounts.models import User
from apps.common.errors import OUTAGES

logger = logging.getLogger("natter.presence")


@receiver(post_save, sender=User, dispatch_uid="presence_visibility_changed")
def visibility_saved(sender, instance: User, created: bool, update_fields=None, **kwargs):
    if created or (update_fields is not None and "last_seen_visibility" not in update_fields):
        return
    user_id, visibility = instance.id, instance.last_seen_visibility
    transaction.on_commit(lambda: _apply(user_id, visibility))


def _apply(user_id: int, visibility: str) -> None:
    from apps.presence.services import presence_visibility_changed

    try:
        presence_visibility_changed(user_id=user_id, visibility=visibility)
    except OUTAGES:
        # Watchers catch up at their next subscription; the setting itself is saved.
        logger.warning("could not apply the new visibility of user %s", user_id)
