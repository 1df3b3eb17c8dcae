"""Writes of media: stream an upload to storage, mark it used, expire it."""

import hashlib
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Device
from apps.common.errors import BadRequest, NotFound, NotMember, OffsetMismatch, TooLarge
from apps.common.ratelimit import rate_limit_hit
from apps.media.models import Media
from apps.messaging.models import Membership

CHUNK_BYTES = 64 * 1024


def media_storage():
    return storages["media"]


def _member_check(device: Device, conversation_id: int) -> None:
    rate_limit_hit(
        scope="upload",
        key=str(device.user_id),
        limit=settings.NATTER["MEDIA_UPLOAD_RATE"],
        period_s=60,
    )
    if (
        not Membership.objects.current()
        .filter(user_id=device.user_id, conversation_id=conversation_id)
        .exists()
    ):
        raise NotMember()


def _expiry():
    return timezone.now() + timedelta(days=settings.NATTER["MEDIA_RETENTION_DAYS"])


def _store(spool, media_fields: dict) -> Media:
    """Put a complete spooled blob into storage and record it; nothing is kept on failure."""
    key = uuid.uuid4().hex
    spool.seek(0)
    blob = media_storage().save(f"blobs/{key[:2]}/{key}", File(spool, name=key))
    try:
        return Media.objects.create(blob=blob, **media_fields)
    except BaseException:
        media_storage().delete(blob)
        raise


def media_upload(*, device: Device, conversation_id: int, stream) -> Media:
    """Stream an encrypted blob sent in one request into storage.

    The body is read in chunks into a temporary file while its sha256 is computed;
    past MEDIA_SINGLE_MAX_BYTES it stops with 413 and nothing is kept. Larger
    files use the resumable upload, a part per request (media_upload_start).
    """
    _member_check(device, conversation_id)
    max_bytes = settings.NATTER["MEDIA_SINGLE_MAX_BYTES"]
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR) as spool:
        while chunk := stream.read(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(
                    f"One request carries at most {max_bytes} bytes; upload larger files"
                    " in parts (POST /api/v1/media/uploads).",
                    max_bytes=max_bytes,
                )
            digest.update(chunk)
            spool.write(chunk)
        if size == 0:
            raise BadRequest("The upload is empty.")
        spool.flush()
        return _store(
            spool,
            {
                "conversation_id": conversation_id,
                "uploader_id": device.user_id,
                "uploader_device_id": device.id,
                "size": size,
                "received": size,
                "sha256": digest.hexdigest(),
                "expires_at": _expiry(),
            },
        )


def part_max_bytes() -> int:
    return settings.NATTER["MEDIA_PART_MAX_BYTES"]


def partial_path(media: Media) -> Path:
    """Where the parts of a resumable upload gather, on this server's disk."""
    return Path(settings.MEDIA_ROOT) / "partial" / str(media.id)


def media_upload_start(*, device: Device, conversation_id: int, size: int) -> Media:
    """Open a resumable upload of `size` bytes; over MEDIA_MAX_BYTES it is refused at once."""
    _member_check(device, conversation_id)
    max_bytes = settings.NATTER["MEDIA_MAX_BYTES"]
    if size > max_bytes:
        raise TooLarge(f"A file may be at most {max_bytes} bytes.", max_bytes=max_bytes)
    media = Media.objects.create(
        state=Media.State.UPLOADING,
        conversation_id=conversation_id,
        uploader_id=device.user_id,
        uploader_device_id=device.id,
        size=size,
        received=0,
        expires_at=_expiry(),
    )
    path = partial_path(media)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return media


def media_upload_part(*, device: Device, media_id: int, offset: int, stream) -> Media:
    """Append one part at `offset`; the last part moves the whole blob into storage.

    A part at another offset than the server has (a retry after a lost answer, a
    resume after a crash) is refused with `offset_mismatch` and the server's
    offset, so the client continues from there and no byte is written twice.
    """
    part_max = settings.NATTER["MEDIA_PART_MAX_BYTES"]
    with transaction.atomic():
        media = (
            Media.objects.select_for_update()
            .filter(
                id=media_id,
                uploader_device_id=device.id,
                state=Media.State.UPLOADING,
                deleted_at__isnull=True,
            )
            .first()
        )
        if media is None:
            raise NotFound("No upload in progress with this id.")
        if offset != media.received:
            raise OffsetMismatch(offset=media.received)
        path = partial_path(media)
        written = 0
        with path.open("r+b") as partial:
            partial.truncate(media.received)  # drop what a failed earlier part left
            partial.seek(media.received)
            while chunk := stream.read(CHUNK_BYTES):
                written += len(chunk)
                if written > part_max:
                    partial.truncate(media.received)
                    raise TooLarge(f"A part is at most {part_max} bytes.", max_bytes=part_max)
                if media.received + written > media.size:
                    partial.truncate(media.received)
                    raise BadRequest(
                        f"The upload was opened for {media.size} bytes; this part goes past it."
                    )
                partial.write(chunk)
        media.received += written
        if media.received < media.size:
            Media.objects.filter(id=media.id).update(received=media.received)
            return media
        return _finish_upload(media, path)


def _finish_upload(media: Media, path: Path) -> Media:
    digest = hashlib.sha256()
    with path.open("rb") as partial:
        while chunk := partial.read(1 << 20):
            digest.update(chunk)
        key = uuid.uuid4().hex
        partial.seek(0)
        blob = media_storage().save(f"blobs/{key[:2]}/{key}", File(partial, name=key))
    try:
        media.state, media.blob, media.sha256 = Media.State.STORED, blob, digest.hexdigest()
        media.save(update_fields=["state", "blob", "sha256", "received"])
    except BaseException:
        media_storage().delete(blob)
        raise
    transaction.on_commit(lambda: path.unlink(missing_ok=True))
    return media


def media_attach(*, media_id: int, sender_device: Device, conversation_id: int) -> None:
    """Mark an upload as carried by a message, so it is not removed as unused.

    Only the uploader can send it, only in the conversation it was uploaded to,
    and only while the blob exists.
    """
    updated = Media.objects.filter(
        id=media_id,
        conversation_id=conversation_id,
        uploader_id=sender_device.user_id,
        state=Media.State.STORED,
        deleted_at__isnull=True,
    ).update(referenced_at=timezone.now())
    if not updated:
        raise BadRequest(
            "No file with this media_id was uploaded by you to this conversation.",
            field="media_id",
        )


def media_delete(*, media: Media, reason: str) -> None:
    """Delete the blob (or the parts of an unfinished upload); keep a tombstone (410)."""
    if media.blob:
        media_storage().delete(media.blob)
    partial_path(media).unlink(missing_ok=True)
    with transaction.atomic():
        Media.objects.filter(id=media.id).update(
            blob="", deleted_at=timezone.now(), deleted_reason=reason
        )
    media.blob, media.deleted_reason = "", reason


def media_expire(*, now=None, batch_size: int = 500) -> dict:
    """Delete blobs past MEDIA_RETENTION_DAYS, and uploads no message used within a day.

    Runs on Celery beat. The blob goes first and then the row becomes a tombstone,
    so a crash in between only means the next run deletes a file already gone.
    """
    now = now or timezone.now()
    unreferenced_before = now - timedelta(hours=settings.NATTER["MEDIA_UNREFERENCED_HOURS"])
    counts = {"expired": 0, "unreferenced": 0}
    for reason, query in (
        ("expired", Media.objects.filter(deleted_at__isnull=True, expires_at__lte=now)),
        (
            "unreferenced",
            Media.objects.filter(
                deleted_at__isnull=True,
                referenced_at__isnull=True,
                created_at__lt=unreferenced_before,
            ),
        ),
    ):
        while batch := list(query[:batch_size]):
            for media in batch:
                media_delete(media=media, reason=reason)
            counts[reason] += len(batch)
    return counts
