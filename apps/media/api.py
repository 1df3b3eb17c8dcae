"""REST endpoints of media (PROTOCOL §7): stream an upload in, stream a blob out."""

import asyncio
import re

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common import ids, jsonutil
from apps.common.errors import MediaExpired, NotFound
from apps.common.fields import PublicIdField, StrictIntegerField
from apps.common.validation import validated
from apps.media import selectors, services

CHUNK_BYTES = 64 * 1024
_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RawBodyParser(BaseParser):
    """Accept any body without reading it: the service streams it from the request.

    A parser must exist for DRF's CSRF check on cookie sessions, which asks for
    `request.POST`; without one that check fails with 415.
    """

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class UploadQuerySerializer(serializers.Serializer):
    conversation = PublicIdField(ids.CONVERSATION)


class MediaSerializer(serializers.Serializer):
    media_id = serializers.CharField()
    conversation = serializers.CharField()
    size = serializers.IntegerField()
    offset = serializers.IntegerField(help_text="Bytes the server holds (== size once complete).")
    complete = serializers.BooleanField()
    sha256 = serializers.CharField(
        allow_null=True, help_text="Lowercase hex SHA-256 of the blob, once complete."
    )
    expires_at = serializers.DateTimeField()


class UploadStartSerializer(serializers.Serializer):
    size = StrictIntegerField(min_value=1, max_value=2**53, help_text="The blob's size in bytes.")


class PartQuerySerializer(serializers.Serializer):
    offset = serializers.IntegerField(min_value=0, max_value=2**53)


class MediaUploadApi(APIView):
    # The body is the encrypted file itself, read as a stream by the service.
    parser_classes = [RawBodyParser]

    @extend_schema(
        parameters=[UploadQuerySerializer],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            201: MediaSerializer,
            400: OpenApiResponse(description="`bad_request` (an empty body)"),
            404: OpenApiResponse(description="`not_member`"),
            413: OpenApiResponse(description="`too_large` with `max_bytes`"),
            429: OpenApiResponse(description="`rate_limited` with `retry_after`"),
        },
        description=(
            "Upload an encrypted attachment (libsodium secretstream, docs/crypto.md §10)"
            " for a conversation you are in. Streamed to storage; at most MEDIA_MAX_BYTES."
        ),
    )
    def post(self, request):
        query = validated(UploadQuerySerializer, request.query_params.dict())
        media = services.media_upload(
            device=request.auth, conversation_id=query["conversation"], stream=request._request
        )
        return Response(selectors.media_public(media), status=status.HTTP_201_CREATED)


class MediaUploadStartApi(APIView):
    @extend_schema(
        parameters=[UploadQuerySerializer],
        request=UploadStartSerializer,
        responses={
            201: MediaSerializer,
            404: OpenApiResponse(description="`not_member`"),
            413: OpenApiResponse(description="`too_large`: over MEDIA_MAX_BYTES"),
            429: OpenApiResponse(description="`rate_limited`"),
        },
        description=(
            "Open a resumable upload of `size` bytes, then send it in parts with"
            " `PATCH /api/v1/media/{media_id}?offset=N`."
        ),
    )
    def post(self, request):
        query = validated(UploadQuerySerializer, request.query_params.dict())
        data = validated(UploadStartSerializer, request.data)
        media = services.media_upload_start(
            device=request.auth, conversation_id=query["conversation"], size=data["size"]
        )
        body = {**selectors.media_public(media), "part_max_bytes": services.part_max_bytes()}
        return Response(body, status=status.HTTP_201_CREATED)


class MediaDownloadApi(APIView):
    # PATCH bodies are raw parts, read as a stream by the service.
    parser_classes = [RawBodyParser]

    @extend_schema(
        parameters=[PartQuerySerializer],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            200: MediaSerializer,
            404: OpenApiResponse(description="`not_found`: no upload of yours in progress"),
            409: OpenApiResponse(description="`offset_mismatch` with the server's `offset`"),
            413: OpenApiResponse(description="`too_large`: a part over MEDIA_PART_MAX_BYTES"),
        },
        description=(
            "Append the next part of a resumable upload at `offset`. The answer's"
            " `complete` turns true with the last part, beside the blob's sha256."
        ),
    )
    def patch(self, request, media_id: str):
        key = ids.decode(ids.MEDIA, media_id)
        if key is None:
            raise NotFound("No upload in progress with this id.")
        query = validated(PartQuerySerializer, request.query_params.dict())
        media = services.media_upload_part(
            device=request.auth, media_id=key, offset=query["offset"], stream=request._request
        )
        return Response(selectors.media_public(media))

    @extend_schema(
        parameters=[
            OpenApiParameter("Range", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False)
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="`not_found`: no such file, or not yours to see"),
            410: OpenApiResponse(description="`media_expired`"),
            416: OpenApiResponse(description="`range_not_satisfiable`"),
        },
        description=(
            "The encrypted blob, to members of its conversation only. `Range: bytes=a-b`"
            " resumes a download (206)."
        ),
    )
    def get(self, request, media_id: str):
        key = ids.decode(ids.MEDIA, media_id)
        media = selectors.media_for_member(user_id=request.user.id, media_id=key) if key else None
        if media is None:
            raise NotFound("No such file.")
        if media.is_deleted:
            raise MediaExpired()
        start, end, partial = 0, media.size - 1, False
        wanted = request.headers.get("Range")
        if wanted:
            parsed = _parse_range(wanted, media.size)
            if parsed == "unsatisfiable":
                return _range_not_satisfiable(media.size)
            if parsed is not None:
                (start, end), partial = parsed, True
        response = StreamingHttpResponse(
            _blob_chunks(media.blob, start, end),
            status=206 if partial else 200,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(end - start + 1)
        response["Accept-Ranges"] = "bytes"
        response["ETag"] = f'"{media.sha256}"'
        response["Cache-Control"] = "private, no-cache"
        if partial:
            response["Content-Range"] = f"bytes {start}-{end}/{media.size}"
        return response


def _parse_range(header: str, size: int):
    """One `bytes=a-b` range as (start, end), "unsatisfiable", or None to send it all.

    Several ranges, or a header we do not understand, get the whole blob: a
    server may ignore Range (RFC 9110 §14.2).
    """
    match = _SINGLE_RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return (max(0, size - length), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return (start, end)


def _range_not_satisfiable(size: int):
    from django.http import HttpResponse

    body = {
        "error": {
            "code": "range_not_satisfiable",
            "message": f"The file has {size} bytes.",
            "size": size,
        }
    }
    response = HttpResponse(jsonutil.dumpb(body), status=416, content_type="application/json")
    response["Content-Range"] = f"bytes */{size}"
    return response


async def _blob_chunks(name: str, start: int, end: int):
    """Read the blob's bytes start..end in chunks, off the event loop, never all at once."""
    handle = await asyncio.to_thread(services.media_storage().open, name, "rb")
    try:
        if start:
            await asyncio.to_thread(handle.seek, start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
