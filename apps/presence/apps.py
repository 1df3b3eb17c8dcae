from django.apps import AppConfig


class PresenceConfig(AppConfig):
    name = "apps.presence"
    label = "presence"

    def ready(self):
        from apps.presence import receivers  # noqa: F401
