import threading
import time
import uuid

from django.db import connection, connections, transaction

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


def run_in_threads(*bodies, timeout: float = 60, meanwhile=None) -> None:
    """Run each body on a thread (and database connection) of its own and wait for
    them all; `meanwhile` runs on the test's thread once they started. Raises the
    first error of any."""
    errors = []

    def guarded(body):
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - raised below, on the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guarded, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        for thread in threads:
            thread.join(timeout)
    if errors:
        raise errors[0]


def run_interleaved(holder, waiter, timeout: float = 20) -> None:
    """Run `holder` in a transaction kept open until `waiter`, started after it on
    another thread, waits for a row lock; then let both finish.

    For two services that meet on a lock: the second must see what the first
    committed while it waited.
    """
    holding, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            holder()
            holding.set()
            if not release.wait(timeout):
                raise TimeoutError("never released")

    def wait():
        if not holding.wait(timeout):
            raise TimeoutError("the holder never got there")
        waiter()

    def release_once_waiting():
        try:
            if holding.wait(timeout):
                _wait_for_a_lock_wait(timeout)
        finally:
            release.set()

    run_in_threads(hold, wait, timeout=timeout, meanwhile=release_once_waiting)


def _wait_for_a_lock_wait(timeout: float) -> None:
    """Until some backend of this database waits for a row lock."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cur.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no backend waited for a lock")
