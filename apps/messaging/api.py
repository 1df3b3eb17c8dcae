"""REST endpoints of messaging: thin, each validates, calls a service, shapes the answer."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.authentication import DeviceSessionAuthentication
from apps.common import ids, metrics
from apps.common.errors import NotFound, NotMember, Unauthorized
from apps.common.ratelimit import connect_hit
from apps.common.validation import validated
from apps.messaging import selectors, serializers, services

ERRORS = {
    400: OpenApiResponse(description="`bad_request`"),
    401: OpenApiResponse(description="`unauthorized`"),
    404: OpenApiResponse(description="`not_member` / `not_found`"),
    409: OpenApiResponse(description="`device_mismatch` with `missing` and `extra`"),
    413: OpenApiResponse(description="`too_large` with `max_bytes`"),
    429: OpenApiResponse(description="`rate_limited` with `retry_after`"),
}


class ConversationListApi(APIView):
    @extend_schema(responses={200: serializers.ConversationSerializer(many=True)})
    def get(self, request):
        return Response(selectors.conversation_list(user=request.user))


class ConversationDevicesApi(APIView):
    @extend_schema(
        responses={
            200: serializers.ConversationDevicesSerializer,
            404: OpenApiResponse(description="`not_member`"),
        },
        description=(
            "Every active device of the conversation's members that has published keys:"
            " the devices a send is encrypted for (a client skips its own)."
        ),
    )
    def get(self, request, conversation_id: str):
        key = ids.decode(ids.CONVERSATION, conversation_id)
        body = (
            selectors.conversation_devices(user=request.user, conversation_id=key) if key else None
        )
        if body is None:
            raise NotMember()
        return Response(body)


class ConversationDirectApi(APIView):
    @extend_schema(
        request=serializers.DirectConversationSerializer,
        responses={
            200: serializers.ConversationSerializer,
            201: serializers.ConversationSerializer,
        },
    )
    def post(self, request):
        data = validated(serializers.DirectConversationSerializer, request.data)
        conversation, created = services.conversation_direct_get_or_create(
            user=request.user, other_user_id=data["user_id"]
        )
        body = selectors.conversation_for_member(user=request.user, conversation_id=conversation.id)
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class MessageSendApi(APIView):
    @extend_schema(
        request=serializers.MessageSendSerializer,
        responses={
            201: serializers.AckResultSerializer,
            200: OpenApiResponse(serializers.AckResultSerializer, "A duplicate client_id."),
            **ERRORS,
        },
    )
    def post(self, request):
        data = validated(serializers.MessageSendSerializer, request.data)
        result = services.message_send(
            sender_device=request.auth, **serializers.send_arguments(data)
        )
        metrics.SENDS_REST.inc()
        if result.duplicate:
            metrics.SEND_DUPLICATES.inc()
        return Response(
            result.as_ack(),
            status=status.HTTP_200_OK if result.duplicate else status.HTTP_201_CREATED,
        )


class EventsAckApi(APIView):
    @extend_schema(
        request=serializers.CursorSerializer, responses={200: serializers.CursorSerializer}
    )
    def post(self, request):
        data = validated(serializers.CursorSerializer, request.data)
        acked = services.inbox_ack_handed_out(device=request.auth, cursor=data["cursor"])
        metrics.ACKS_REST.inc()
        return Response({"cursor": acked})


class ReadApi(APIView):
    @extend_schema(
        request=serializers.ReadSerializer, responses={200: serializers.ReadResultSerializer}
    )
    def post(self, request):
        data = validated(serializers.ReadSerializer, request.data)
        read_seq = services.conversation_read(
            device=request.auth, conversation_id=data["conversation"], up_to_seq=data["up_to_seq"]
        )
        return Response({"conversation": request.data["conversation"], "read_seq": read_seq})


class EventsPollApi(APIView):
    """The long-poll, as the OpenAPI schema and WSGI deployments see it.

    Under ASGI (daphne) `/api/v1/events` is served by `EventsLongPollConsumer`,
    which holds the request without a thread; this view answers at once.
    """

    @extend_schema(
        parameters=[serializers.EventsQuerySerializer],
        responses={200: serializers.EventsPageSerializer, 400: ERRORS[400], 401: ERRORS[401]},
        description=(
            "Acknowledge everything up to `cursor` and return the next events; when none "
            "is waiting, hold the request up to `timeout` seconds (≤ 30) until one arrives."
        ),
    )
    def get(self, request):
        # A GET that acks: like the consumer, a cookie counts only with the header a
        # foreign page cannot add (a cross-site link must not empty anybody's inbox).
        if isinstance(
            request.successful_authenticator, DeviceSessionAuthentication
        ) and not request.headers.get("X-Natter-Session"):
            raise Unauthorized("A session needs the X-Natter-Session header here.")
        connect_hit(request.META.get("REMOTE_ADDR"))
        query = validated(serializers.EventsQuerySerializer, request.query_params.dict())
        return Response(
            services.inbox_poll(device=request.auth, cursor=query["cursor"], limit=query["limit"])
        )


class MessageReceiptsApi(APIView):
    @extend_schema(
        responses={
            200: OpenApiResponse(
                description="`{message_id, conversation, seq, receipts: [{user, delivered_at, read_at, expired_at}]}`"
            ),
            404: OpenApiResponse(description="`not_found`: no such message of yours"),
        },
        description="Who has a message delivered and read. Only its sender may ask.",
    )
    def get(self, request, message_id: str):
        key = ids.decode(ids.MESSAGE, message_id)
        body = selectors.message_receipts(user=request.user, message_id=key) if key else None
        if body is None:
            raise NotFound("No such message of yours.")
        return Response(body)
