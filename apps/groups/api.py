"""REST endpoints of groups (PROTOCOL §3): thin, each calls one service."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common import ids
from apps.common.errors import NotMember
from apps.common.validation import validated
from apps.groups import serializers, services
from apps.messaging import selectors as messaging_selectors

ERRORS = {
    400: OpenApiResponse(description="`bad_request` (unknown users in `unknown`)"),
    403: OpenApiResponse(description="`not_admin`: only admins may do this"),
    404: OpenApiResponse(description="`not_member` / `not_found`"),
    409: OpenApiResponse(description="`group_full` with `max_members`"),
}


def _group_id(value: str) -> int:
    key = ids.decode(ids.CONVERSATION, value)
    if key is None:
        raise NotMember()
    return key


def _describe(request, group_id: int) -> dict:
    body = messaging_selectors.conversation_for_member(user=request.user, conversation_id=group_id)
    if body is None or body["kind"] != "group":
        raise NotMember()
    return body


class GroupCreateApi(APIView):
    @extend_schema(
        request=serializers.GroupCreateSerializer,
        responses={201: serializers.GroupSerializer, **ERRORS},
    )
    def post(self, request):
        data = validated(serializers.GroupCreateSerializer, request.data)
        group = services.group_create(
            creator=request.user, title=data["title"], member_ids=data["member_ids"]
        )
        return Response(_describe(request, group.id), status=status.HTTP_201_CREATED)


class GroupDetailApi(APIView):
    @extend_schema(responses={200: serializers.GroupSerializer, 404: ERRORS[404]})
    def get(self, request, group_id: str):
        return Response(_describe(request, _group_id(group_id)))

    @extend_schema(
        request=serializers.GroupUpdateSerializer,
        responses={200: serializers.GroupSerializer, **ERRORS},
    )
    def patch(self, request, group_id: str):
        data = validated(serializers.GroupUpdateSerializer, request.data)
        group = services.group_rename(
            group_id=_group_id(group_id), actor=request.user, title=data["title"]
        )
        return Response(_describe(request, group.id))


class GroupMembersApi(APIView):
    @extend_schema(
        request=serializers.GroupMembersAddSerializer,
        responses={200: serializers.GroupSerializer, **ERRORS},
    )
    def post(self, request, group_id: str):
        data = validated(serializers.GroupMembersAddSerializer, request.data)
        group = services.group_members_add(
            group_id=_group_id(group_id), actor=request.user, user_ids=data["user_ids"]
        )
        return Response(_describe(request, group.id))


class GroupMemberApi(APIView):
    @extend_schema(request=None, responses={204: None, **ERRORS})
    def delete(self, request, group_id: str, user_id: str):
        services.group_member_remove(
            group_id=_group_id(group_id),
            actor=request.user,
            user_id=ids.decode(ids.USER, user_id) or 0,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class GroupAdminsApi(APIView):
    @extend_schema(
        request=serializers.GroupAdminSerializer,
        responses={200: serializers.GroupSerializer, **ERRORS},
    )
    def post(self, request, group_id: str):
        data = validated(serializers.GroupAdminSerializer, request.data)
        group = services.group_admin_promote(
            group_id=_group_id(group_id), actor=request.user, user_id=data["user_id"]
        )
        return Response(_describe(request, group.id))


class GroupLeaveApi(APIView):
    @extend_schema(request=None, responses={204: None, 404: ERRORS[404]})
    def post(self, request, group_id: str):
        services.group_leave(group_id=_group_id(group_id), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
