import uuid

from apps.messaging import services


def send(device, conversation, devices, body: bytes = b"ciphertext", client_id=None, **kw):
    """Send a direct message with one ciphertext for each of `devices`."""
    return services.message_send(
        sender_device=device,
        conversation_id=conversation.id,
        client_id=client_id or uuid.uuid4(),
        kind="text",
        ciphertexts=[
            services.Ciphertext(d.id, "message", body + b"/" + str(d.id).encode()) for d in devices
        ],
        **kw,
    )


def inbox(device):
    from apps.messaging.selectors import inbox_after

    return inbox_after(device_id=device.id, after_cursor=0, limit=10_000)


def events_of(device, type_=None):
    return [i["event"] for i in inbox(device) if type_ is None or i["event"]["type"] == type_]
