from django.conf import settings
from django.db import models

from apps.common import ids


class Conversation(models.Model):
    class Kind(models.TextChoices):
        DIRECT = "direct"
        GROUP = "group"

    id = models.BigIntegerField(primary_key=True, default=ids.random_key, editable=False)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    title = models.CharField(max_length=200, blank=True)
    # "<smaller user id>:<larger user id>" for direct conversations: the unique
    # constraint makes "the one direct conversation of two users" hold under races.
    direct_key = models.CharField(max_length=41, unique=True, null=True, editable=False)
    # The last seq handed out. Incremented under the row lock of the sending
    # transaction, so seqs are gapless: a rolled-back send rolls its seq back too.
    last_seq = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set with last_seq: the chat list shows the most recently active chats first.
    # Not indexed: the list starts from the user's memberships and sorts those, and
    # an index on a column every send changes would make each send's update of this
    # row a non-HOT one (new entries in every index of the table, and bloat).
    last_activity_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.kind} {self.public_id}"

    @property
    def public_id(self) -> str:
        return ids.encode(ids.CONVERSATION, self.id)


class MembershipQuerySet(models.QuerySet):
    def current(self):
        """Members now: not removed, not left (groups keep the rows of past members)."""
        return self.filter(left_seq__isnull=True)


class Membership(models.Model):
    # Looked up through messaging_membership_unique (conversation, user).
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    # Looked up through messaging_membership_user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        db_index=False,
    )
    # Everything up to read_seq has been read by this member (blue checks).
    read_seq = models.BigIntegerField(default=0)
    # Everything up to delivered_seq, sent by others, reached a device of this member.
    delivered_seq = models.BigIntegerField(default=0)
    is_admin = models.BooleanField(default=False)
    joined_at = models.DateTimeField(auto_now_add=True)
    # Membership at seq: a member receives the messages with joined_seq < seq and,
    # once removed or gone, none with seq > left_seq.
    joined_seq = models.BigIntegerField(default=0)
    left_seq = models.BigIntegerField(null=True, blank=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "user"], name="messaging_membership_unique"
            ),
        ]
        indexes = [models.Index(fields=["user"], name="messaging_membership_user")]

    def __str__(self):
        return f"{self.user_id} in {self.conversation_id}"


class Message(models.Model):
    """A message's metadata. Per-device ciphertexts live only in inbox rows."""

    class Kind(models.TextChoices):
        TEXT = "text"
        MEDIA = "media"
        SENDER_KEY = "sender_key"
        SYSTEM = "system"

    id = models.BigIntegerField(primary_key=True, default=ids.random_key, editable=False)
    # Looked up through messaging_message_seq_unique (conversation, seq): an index of
    # its own would be one more insert per message for nothing.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    seq = models.BigIntegerField()
    sender_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    sender_device = models.ForeignKey(
        "accounts.Device", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    client_id = models.UUIDField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    reply_to_seq = models.BigIntegerField(null=True, blank=True)
    # Groups: the one Sender Key ciphertext every member device gets, stored once and
    # cleared when the fan-out is done and every member device has acked.
    group_body = models.BinaryField(null=True, blank=True)
    # True from the send until the Celery fan-out has written every inbox row: the
    # durable fan-out job, found again by the sweeper if a worker dies.
    fanout_pending = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                name="messaging_message_fanout",
                condition=models.Q(fanout_pending=True),
            ),
        ]
        constraints = [
            # Idempotent sends: a resend with the same client id is never stored twice.
            models.UniqueConstraint(
                fields=["sender_device", "client_id"], name="messaging_message_client_id_unique"
            ),
            models.UniqueConstraint(
                fields=["conversation", "seq"], name="messaging_message_seq_unique"
            ),
        ]

    def __str__(self):
        return f"{self.public_id} #{self.seq} in {self.conversation_id}"

    @property
    def public_id(self) -> str:
        return ids.encode(ids.MESSAGE, self.id)


class InboxEntry(models.Model):
    """One durable event for one device, deleted when the device acks its cursor."""

    class Type(models.TextChoices):
        MESSAGE = "message"
        RECEIPT = "receipt"
        GROUP = "group"
        DEVICE = "device"
        PREKEYS_LOW = "prekeys_low"

    id = models.BigAutoField(primary_key=True)
    device = models.ForeignKey(
        "accounts.Device", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    cursor = models.BigIntegerField()
    type = models.CharField(max_length=16, choices=Type.choices)
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    envelope = models.CharField(max_length=10, blank=True)
    body = models.BinaryField(null=True, blank=True)
    payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "cursor"], name="messaging_inbox_cursor"),
            # One copy of a message per device, however often a fan-out runs.
            models.UniqueConstraint(
                fields=["device", "message"],
                name="messaging_inbox_message_once",
                condition=models.Q(message__isnull=False),
            ),
        ]
        verbose_name_plural = "inbox entries"

    def __str__(self):
        return f"{self.type} #{self.cursor} for device {self.device_id}"


class Receipt(models.Model):
    """Delivery and read state of one message for one recipient user."""

    # Looked up through messaging_receipt_unique (message, user).
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="receipts", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user"], name="messaging_receipt_unique"),
        ]
        indexes = [
            # The delivered watermark looks for a member's oldest undelivered message.
            models.Index(
                fields=["user", "message"],
                name="messaging_receipt_pending",
                condition=models.Q(delivered_at__isnull=True, expired_at__isnull=True),
            ),
        ]

    def __str__(self):
        return f"receipt of {self.message_id} for {self.user_id}"
