from apps.accounts.models import Device, OneTimePreKey, User


def device_for_token(*, token: str) -> Device | None:
    """Return the active device a bearer token belongs to, with its user."""
    if not token or len(token) > 200:
        return None
    return (
        Device.objects.active()
        .select_related("user")
        .filter(token_hash=Device.hash_token(token), user__is_active=True)
        .first()
    )


def device_for_session(*, user_id, device_id) -> Device | None:
    """Return the device a browser session is bound to, if it is still active."""
    if user_id is None or device_id is None:
        return None
    return (
        Device.objects.active()
        .select_related("user")
        .filter(id=device_id, user_id=user_id, user__is_active=True)
        .first()
    )


def user_by_handle(*, handle: str) -> User | None:
    """Return the user with exactly this username (case-insensitive), never a prefix match."""
    return User.objects.filter(username__iexact=handle, is_active=True).first()


def user_get(*, user_id: int) -> User | None:
    return User.objects.filter(id=user_id, is_active=True).first()


def devices_active_of(*, user_id: int) -> list[Device]:
    return list(Device.objects.active().filter(user_id=user_id).order_by("created_at"))


def user_public(user: User) -> dict:
    """The public profile of a user: what anybody who knows the handle may see."""
    return {"id": user.public_id, "username": user.username, "display_name": user.display_name}


def one_time_prekeys_count(*, device: Device) -> int:
    return OneTimePreKey.objects.filter(device=device).count()
