import hashlib

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Lower

from apps.common import ids


class User(AbstractUser):
    class LastSeenVisibility(models.TextChoices):
        EVERYONE = "everyone"
        CONTACTS = "contacts"
        NOBODY = "nobody"

    id = models.BigIntegerField(primary_key=True, default=ids.random_key, editable=False)
    display_name = models.CharField(max_length=100, blank=True)
    last_seen_visibility = models.CharField(
        max_length=10, choices=LastSeenVisibility.choices, default=LastSeenVisibility.EVERYONE
    )
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # "Alice" and "alice" are one handle, so nobody can impersonate by case.
            models.UniqueConstraint(Lower("username"), name="accounts_user_username_ci_unique"),
        ]

    def __str__(self):
        return self.username

    @property
    def public_id(self) -> str:
        return ids.encode(ids.USER, self.id)


class DeviceQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class Device(models.Model):
    """One client of a user: its own token, keys and inbox (PROTOCOL §1)."""

    id = models.BigIntegerField(primary_key=True, default=ids.random_key, editable=False)
    # Looked up through accounts_device_user_active (user, revoked_at).
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="devices", db_index=False)
    name = models.CharField(max_length=100)
    # Only a SHA-256 of the bearer token is kept; the token itself is shown once.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    identity_key = models.BinaryField(null=True, blank=True, editable=False)
    # The last inbox cursor handed out. Taken with a row lock in the transaction that
    # writes the inbox row, so cursors commit in increasing order per device and a
    # consumer reading "after cursor N" can never skip a row committed late.
    inbox_cursor = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["user", "revoked_at"], name="accounts_device_user_active")]

    def __str__(self):
        return f"{self.user.username}/{self.name} ({self.public_id})"

    @property
    def public_id(self) -> str:
        return ids.encode(ids.DEVICE, self.id)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()


class SignedPreKey(models.Model):
    """A device's current signed prekey (PROTOCOL §2), replaced by each upload of a new one."""

    device = models.OneToOneField(
        Device, primary_key=True, on_delete=models.CASCADE, related_name="signed_prekey"
    )
    key_id = models.BigIntegerField()
    public_key = models.BinaryField(max_length=32)
    signature = models.BinaryField(max_length=64)
    uploaded_at = models.DateTimeField(auto_now=True)


class OneTimePreKey(models.Model):
    """One X25519 one-time prekey; deleted as it is claimed, so it is handed out once."""

    id = models.BigAutoField(primary_key=True)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="one_time_prekeys")
    key_id = models.BigIntegerField()
    public_key = models.BinaryField(max_length=32)
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "key_id"], name="accounts_otpk_device_key_id"
            ),
        ]
