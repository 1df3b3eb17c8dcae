"""Bearer tokens for every client; the browser's session bound to one device."""

from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed

from apps.accounts.selectors import device_for_session, device_for_token

SESSION_DEVICE_KEY = "natter_device_id"


def bearer_token(header_value: str | None) -> str | None:
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`: request.user is the user, request.auth the device."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        token = bearer_token(header)
        device = device_for_token(token=token) if token else None
        if device is None:
            raise AuthenticationFailed("The token is not valid or its device was revoked.")
        return device.user, device

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class DeviceSessionAuthentication(SessionAuthentication):
    """A logged-in browser session counts only while its bound device is active."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        device = device_for_session(
            user_id=user.id, device_id=request._request.session.get(SESSION_DEVICE_KEY)
        )
        if device is None:
            return None
        return device.user, device
