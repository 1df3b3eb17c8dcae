from apps.accounts.models import Device


class ConnectedDevice(Device):
    """No table of its own: gives the admin a page that reads the connection registry."""

    class Meta:
        proxy = True
        verbose_name = "connected device"
        verbose_name_plural = "connected devices"
