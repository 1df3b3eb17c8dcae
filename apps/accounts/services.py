"""Writes of the accounts app: registration, devices, tokens."""

import secrets

from django.contrib.auth import authenticate, password_validation
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import Device, User
from apps.common.errors import BadRequest, Conflict, Unauthorized
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
    rate_limit_hit(scope="login", key=username.lower()[:150], limit=20, period_s=60)
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
        from apps.messaging.services import device_event_broadcast

        device_event_broadcast(device=device, action="added")
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
