"""OpenAPI descriptions of Natter's authentication (loaded by AccountsConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The device token returned once by `POST /api/v1/auth/login`.",
        }


class DeviceSessionScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.DeviceSessionAuthentication"
    name = "sessionAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "The web UI's session, bound to one device (plus CSRF on writes).",
        }
