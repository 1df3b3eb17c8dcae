from django.conf import settings
from django.db import models

from apps.common import ids


class Media(models.Model):
    """One encrypted blob in storage: the server holds ciphertext and a few sizes, no key.

    When the blob is deleted (expired, never used, or by staff) the row stays as a
    tombstone, so a late download gets 410 `media_expired`, not a puzzling 404.
    """

    class DeletedReason(models.TextChoices):
        EXPIRED = "expired"
        UNREFERENCED = "unreferenced"
        STAFF = "staff"

    class State(models.TextChoices):
        UPLOADING = "uploading"  # a resumable upload still receiving parts
        STORED = "stored"

    id = models.BigIntegerField(primary_key=True, default=ids.random_key, editable=False)
    state = models.CharField(max_length=10, choices=State.choices, default=State.STORED)
    # Bytes received so far by a resumable upload (== size once stored).
    received = models.BigIntegerField(default=0)
    conversation = models.ForeignKey(
        "messaging.Conversation", on_delete=models.CASCADE, related_name="media"
    )
    uploader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    uploader_device_id = models.BigIntegerField()
    # The storage name of the blob; empty until stored and once deleted.
    blob = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    # Set when a `media` message names this blob; an upload nobody sends is removed.
    referenced_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_reason = models.CharField(max_length=16, choices=DeletedReason.choices, blank=True)

    class Meta:
        verbose_name_plural = "media"
        indexes = [
            models.Index(
                fields=["expires_at"],
                name="media_live_by_expiry",
                condition=models.Q(deleted_at__isnull=True),
            ),
            models.Index(
                fields=["created_at"],
                name="media_unreferenced",
                condition=models.Q(deleted_at__isnull=True, referenced_at__isnull=True),
            ),
        ]

    def __str__(self):
        return self.public_id

    @property
    def public_id(self) -> str:
        return ids.encode(ids.MEDIA, self.id)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def is_stored(self) -> bool:
        return self.state == self.State.STORED
