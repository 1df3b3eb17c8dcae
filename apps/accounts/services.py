"""Writes of the accounts app: registration, devices, tokens."""

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from apps.accounts.models import Device, OneTimePreKey, SignedPreKey, User
from apps.common.errors import (
    BadRequest,
    BadSignature,
    Conflict,
    DuplicateKeyId,
    NotFound,
    Unauthorized,
)
from apps.common.ratelimit import rate_limit_hit


def user_register(*, username: str, password: str, display_name: str = "") -> User:
    """Create a user; the handle is unique regardless of case."""
    user = User(username=username, display_name=display_name or username)
    try:
        user.full_clean(exclude=["password"], validate_unique=False, validate_constraints=False)
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        raise BadRequest(" ".join(exc.messages)) from exc
    user.set_password(password)
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=username).exists():
                raise Conflict("This username is taken.", field="username")
            user.save(force_insert=True)
    except IntegrityError as exc:
        raise Conflict("This username is taken.", field="username") from exc
    return user


def device_login(*, username: str, password: str, device_name: str) -> tuple[Device, str]:
    """Check the password and create a new device; return it and its token (shown once)."""
    rate_limit_hit(
        scope="login",
        key=username.lower()[:150],
        limit=settings.NATTER["LOGIN_RATE"],
        period_s=60,
        message="Too many logins for this username; retry later.",
    )
    user = authenticate(username=username, password=password)
    if user is None:
        # Usernames are matched case-insensitively at login like everywhere else.
        match = User.objects.filter(username__iexact=username).first()
        if match is not None and match.username != username:
            user = authenticate(username=match.username, password=password)
    if user is None or not user.is_active:
        raise Unauthorized("Wrong username or password.")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        device = Device.objects.create(
            user=user, name=device_name or "device", token_hash=Device.hash_token(token)
        )
    # Others hear of the device once it has published keys (keys_upload): before
    # that it cannot receive end-to-end encrypted messages, so it is nobody's
    # recipient yet.
    return device, token


def device_revoke(*, device: Device) -> None:
    """Revoke a device: its token stops working, its inbox is dropped, its sockets close."""
    from apps.messaging.events import device_revoked_on_commit
    from apps.messaging.services import device_event_broadcast, inbox_drop

    with transaction.atomic():
        updated = Device.objects.filter(id=device.id, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if not updated:
            return
        device.revoked_at = timezone.now()
        inbox_drop(device=device)
        device_event_broadcast(device=device, action="removed")
        device_revoked_on_commit(device_id=device.id)


def user_update(*, user: User, display_name: str | None = None, last_seen_visibility=None) -> User:
    fields = []
    if display_name is not None:
        user.display_name = display_name
        fields.append("display_name")
    if last_seen_visibility is not None:
        user.last_seen_visibility = last_seen_visibility
        fields.append("last_seen_visibility")
    if fields:
        user.save(update_fields=fields)
    return user


# --- Key directory (PROTOCOL §2, docs/crypto.md) -------------------------------------


@dataclass(frozen=True)
class PreKeyUpload:
    key_id: int
    public_key: bytes
    signature: bytes = b""


def keys_upload(
    *,
    device: Device,
    identity_key: bytes,
    signed_prekey: PreKeyUpload | None,
    one_time_prekeys: list[PreKeyUpload],
) -> int:
    """Publish a device's identity key, signed prekey and one-time prekeys.

    The signed prekey must carry a valid Ed25519 signature by the identity key.
    A device's first upload announces it (`device added`); a new identity key
    throws away every prekey made under the old one and tells everyone who shares
    a conversation (`identity_changed`). Returns the one-time prekey stock.
    """
    from apps.messaging.services import device_event_broadcast

    limit = settings.NATTER["PREKEYS_PER_UPLOAD"]
    if len(one_time_prekeys) > limit:
        raise BadRequest(f"At most {limit} one-time prekeys per upload.", field="one_time_prekeys")
    key_ids = [k.key_id for k in one_time_prekeys]
    if len(set(key_ids)) != len(key_ids):
        raise BadRequest("A one-time prekey id appears twice.", field="one_time_prekeys")
    if signed_prekey is not None:
        try:
            VerifyKey(identity_key).verify(signed_prekey.public_key, signed_prekey.signature)
        except (BadSignatureError, ValueError) as exc:
            raise BadSignature() from exc

    with transaction.atomic():
        locked = Device.objects.select_for_update().get(id=device.id)
        previous = bytes(locked.identity_key) if locked.identity_key is not None else None
        changed = previous is not None and previous != identity_key
        if changed:
            SignedPreKey.objects.filter(device=locked).delete()
            OneTimePreKey.objects.filter(device=locked).delete()
        if signed_prekey is None and (
            previous is None or changed or not SignedPreKey.objects.filter(device=locked).exists()
        ):
            raise BadRequest(
                "A signed prekey is required with a new identity key.", field="signed_prekey"
            )
        if previous != identity_key:
            Device.objects.filter(id=locked.id).update(identity_key=identity_key)
            device.identity_key = identity_key
        if signed_prekey is not None:
            SignedPreKey.objects.update_or_create(
                device=locked,
                defaults={
                    "key_id": signed_prekey.key_id,
                    "public_key": signed_prekey.public_key,
                    "signature": signed_prekey.signature,
                },
            )
        stock = OneTimePreKey.objects.filter(device=locked).count()
        if stock + len(one_time_prekeys) > settings.NATTER["PREKEYS_MAX_STOCK"]:
            raise BadRequest(
                f"A device holds at most {settings.NATTER['PREKEYS_MAX_STOCK']} one-time"
                f" prekeys; it has {stock}.",
                field="one_time_prekeys",
            )
        taken = sorted(
            OneTimePreKey.objects.filter(device=locked, key_id__in=key_ids).values_list(
                "key_id", flat=True
            )
        )
        if taken:
            raise DuplicateKeyId(key_ids=taken)
        OneTimePreKey.objects.bulk_create(
            [
                OneTimePreKey(device=locked, key_id=k.key_id, public_key=k.public_key)
                for k in one_time_prekeys
            ]
        )
        if previous is None:
            device_event_broadcast(device=locked, action="added")
        elif changed:
            device_event_broadcast(device=locked, action="identity_changed")
    return stock + len(one_time_prekeys)


def keys_claim(*, claimer: Device, user_id: int, device_ids: list[int] | None = None) -> list[dict]:
    """Hand out one bundle per active device of a user, each one-time prekey only once.

    A one-time prekey is deleted in the statement that reads it, and rows locked by
    a concurrent claim are skipped rather than waited for, so two claims never get
    the same key. A device with none left is given its signed prekey alone.
    """
    rate_limit_hit(
        scope="claim",
        key=str(claimer.id),
        limit=settings.NATTER["KEY_CLAIM_RATE"],
        period_s=60,
    )
    rate_limit_hit(
        scope="claim-user",
        key=f"{claimer.id}:{user_id}",
        limit=settings.NATTER["KEY_CLAIM_RATE_PER_USER"],
        period_s=60,
    )
    devices = Device.objects.active().filter(
        user_id=user_id, user__is_active=True, identity_key__isnull=False
    )
    if device_ids is not None:
        devices = devices.filter(id__in=device_ids)
    devices = list(devices.exclude(id=claimer.id).select_related("signed_prekey"))
    devices = [d for d in devices if hasattr(d, "signed_prekey")]
    if not devices:
        if not User.objects.filter(id=user_id, is_active=True).exists():
            raise NotFound("No such user.")
        return []
    with transaction.atomic():
        claimed = _one_time_prekeys_take([d.id for d in devices])
        _prekeys_low_notify([d.id for d in devices])
    return [
        {
            "device_id": d.public_id,
            "identity_key": bytes(d.identity_key),
            "signed_prekey": {
                "key_id": d.signed_prekey.key_id,
                "public_key": bytes(d.signed_prekey.public_key),
                "signature": bytes(d.signed_prekey.signature),
            },
            "one_time_prekey": claimed.get(d.id),
        }
        for d in devices
    ]


def _one_time_prekeys_take(device_ids: list[int]) -> dict[int, dict]:
    """Delete and return the lowest-numbered one-time prekey of each device."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                """
                DELETE FROM accounts_onetimeprekey
                WHERE id IN (
                    SELECT picked.id
                    FROM unnest(%s::bigint[]) AS d(device_id)
                    CROSS JOIN LATERAL (
                        SELECT k.id FROM accounts_onetimeprekey k
                        WHERE k.device_id = d.device_id
                        ORDER BY k.key_id
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED
                    ) AS picked
                )
                RETURNING device_id, key_id, public_key
                """,
                [device_ids],
            )
            rows = cursor.fetchall()
    else:
        # The embedded SQLite default has one writer at a time: the transaction
        # around this call already makes the read and the delete one step.
        rows = []
        for device_id in device_ids:
            key = OneTimePreKey.objects.filter(device_id=device_id).order_by("key_id").first()
            if key is not None:
                key.delete()
                rows.append((device_id, key.key_id, key.public_key))
    return {
        device_id: {"key_id": key_id, "public_key": bytes(public_key)}
        for device_id, key_id, public_key in rows
    }


def _prekeys_low_notify(device_ids: list[int]) -> None:
    """Ask devices whose stock fell below PREKEYS_LOW to upload more, once per shortage.

    A device that still has an unacknowledged `prekeys_low` event is not asked again.
    """
    from django.db.models import Count

    from apps.messaging.models import InboxEntry
    from apps.messaging.services import inbox_append

    threshold = settings.NATTER["PREKEYS_LOW"]
    stock = dict(
        OneTimePreKey.objects.filter(device_id__in=device_ids)
        .values("device_id")
        .annotate(n=Count("id"))
        .values_list("device_id", "n")
    )
    low = {d: stock.get(d, 0) for d in device_ids if stock.get(d, 0) < threshold}
    if not low:
        return
    already = set(
        InboxEntry.objects.filter(device_id__in=low, type=InboxEntry.Type.PREKEYS_LOW).values_list(
            "device_id", flat=True
        )
    )
    inbox_append(
        [
            InboxEntry(
                device_id=d,
                type=InboxEntry.Type.PREKEYS_LOW,
                payload={"type": "prekeys_low", "remaining": n},
            )
            for d, n in low.items()
            if d not in already
        ]
    )
