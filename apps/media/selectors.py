from apps.common import ids
from apps.media.models import Media
from apps.messaging.models import Membership


def media_for_member(*, user_id: int, media_id: int) -> Media | None:
    """The media if the user is now a member of its conversation, else None (a 404)."""
    return (
        Media.objects.filter(
            id=media_id,
            state=Media.State.STORED,
            conversation__in=Membership.objects.current()
            .filter(user_id=user_id)
            .values("conversation"),
        )
        .select_related("conversation")
        .first()
    )


def media_public(media: Media) -> dict:
    """What the uploader is told: where the blob stands, and once stored its sha256."""
    body = {
        "media_id": media.public_id,
        "conversation": ids.encode(ids.CONVERSATION, media.conversation_id),
        "size": media.size,
        "offset": media.received,
        "complete": media.is_stored,
        "sha256": media.sha256 or None,
        "expires_at": media.expires_at.isoformat().replace("+00:00", "Z"),
    }
    return body
