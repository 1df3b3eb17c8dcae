"""REST endpoints of presence and typing, for clients on the long-poll."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.validation import validated
from apps.presence import serializers, services


class PresenceSubscriptionsApi(APIView):
    @extend_schema(
        request=serializers.PresenceSubscribeSerializer,
        responses={
            200: serializers.PresenceSnapshotSerializer,
            400: OpenApiResponse(description="`bad_request` (more than 100 users)"),
        },
        description=(
            "Replace this device's presence subscriptions and answer with a snapshot; "
            "changes then arrive in the long-poll's `ephemeral` list."
        ),
    )
    def put(self, request):
        data = validated(serializers.PresenceSubscribeSerializer, request.data)
        frames = services.presence_subscribe(device=request.auth, user_ids=data["user_ids"])
        return Response({"presence": frames})


class TypingApi(APIView):
    @extend_schema(
        request=serializers.TypingSerializer,
        responses={
            204: None,
            404: OpenApiResponse(description="`not_member`"),
            429: OpenApiResponse(description="`rate_limited` with `retry_after`"),
        },
    )
    def post(self, request):
        data = validated(serializers.TypingSerializer, request.data)
        services.typing_send(
            device=request.auth, conversation_id=data["conversation"], state=data["state"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
