"""REST endpoints of accounts (PROTOCOL §1)."""

import base64

from django.contrib.auth import login as session_login
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, serializers, services
from apps.accounts.authentication import SESSION_DEVICE_KEY
from apps.common import ids
from apps.common.errors import NotFound
from apps.common.validation import validated


def me_body(user) -> dict:
    return {**selectors.user_public(user), "last_seen_visibility": user.last_seen_visibility}


class RegisterApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        request=serializers.RegisterSerializer,
        responses={
            201: serializers.RegisterResultSerializer,
            400: OpenApiResponse(description="`bad_request`"),
            409: OpenApiResponse(description="`conflict`: the username is taken"),
        },
    )
    def post(self, request):
        data = validated(serializers.RegisterSerializer, request.data)
        user = services.user_register(
            username=data["username"],
            password=data["password"],
            display_name=data.get("display_name", ""),
        )
        return Response({"user": selectors.user_public(user)}, status=status.HTTP_201_CREATED)


class LoginApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        request=serializers.LoginSerializer,
        responses={
            201: serializers.LoginResultSerializer,
            401: OpenApiResponse(description="`unauthorized`: wrong username or password"),
            429: OpenApiResponse(description="`rate_limited`"),
        },
    )
    def post(self, request):
        data = validated(serializers.LoginSerializer, request.data)
        device, token = services.device_login(
            username=data["username"], password=data["password"], device_name=data["device_name"]
        )
        if data["session"]:
            session_login(
                request._request, device.user, backend="django.contrib.auth.backends.ModelBackend"
            )
            request._request.session[SESSION_DEVICE_KEY] = device.id
        return Response(
            {
                "user": selectors.user_public(device.user),
                "device": {"id": device.public_id, "name": device.name},
                "token": token,
            },
            status=status.HTTP_201_CREATED,
        )


class LogoutApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        services.device_revoke(device=request.auth)
        if hasattr(request._request, "session"):
            request._request.session.flush()
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(responses={200: serializers.MeSerializer})
    def get(self, request):
        return Response(me_body(request.user))

    @extend_schema(
        request=serializers.MeUpdateSerializer, responses={200: serializers.MeSerializer}
    )
    def patch(self, request):
        data = validated(serializers.MeUpdateSerializer, request.data)
        user = services.user_update(user=request.user, **data)
        return Response(me_body(user))


class UserLookupApi(APIView):
    @extend_schema(
        parameters=[serializers.HandleQuerySerializer],
        responses={
            200: serializers.UserPublicSerializer,
            404: OpenApiResponse(description="`not_found`"),
        },
        description="Look a user up by exact username. There is no listing or prefix search.",
    )
    def get(self, request):
        query = validated(serializers.HandleQuerySerializer, request.query_params.dict())
        user = selectors.user_by_handle(handle=query["handle"])
        if user is None:
            raise NotFound("No user has this username.")
        return Response(selectors.user_public(user))


class UserDevicesApi(APIView):
    @extend_schema(
        responses={
            200: serializers.PublicDeviceSerializer(many=True),
            404: OpenApiResponse(description="`not_found`"),
        }
    )
    def get(self, request, user_id: str):
        key = ids.decode(ids.USER, user_id)
        user = selectors.user_get(user_id=key) if key else None
        if user is None:
            raise NotFound("No such user.")
        return Response(
            [
                {
                    "id": d.public_id,
                    "identity_key": base64.b64encode(bytes(d.identity_key)).decode()
                    if d.identity_key
                    else None,
                }
                for d in selectors.devices_active_of(user_id=user.id)
            ]
        )


class KeysApi(APIView):
    @extend_schema(
        request=serializers.KeysUploadSerializer,
        responses={
            200: serializers.KeysCountSerializer,
            400: OpenApiResponse(description="`bad_request` or `bad_signature`"),
            409: OpenApiResponse(description="`duplicate_key_id` with `key_ids`"),
        },
        description=(
            "Publish this device's identity key, signed prekey and up to 100 one-time"
            " prekeys. The signed prekey's signature (Ed25519, over its 32 raw bytes) is"
            " checked against the identity key."
        ),
    )
    def put(self, request):
        data = validated(serializers.KeysUploadSerializer, request.data)
        spk = data.get("signed_prekey")
        stock = services.keys_upload(
            device=request.auth,
            identity_key=data["identity_key"],
            signed_prekey=services.PreKeyUpload(**spk) if spk else None,
            one_time_prekeys=[services.PreKeyUpload(**k) for k in data["one_time_prekeys"]],
        )
        return Response({"one_time_prekeys": stock})


class KeysCountApi(APIView):
    @extend_schema(responses={200: serializers.KeysCountSerializer})
    def get(self, request):
        return Response({"one_time_prekeys": selectors.one_time_prekeys_count(device=request.auth)})


class KeysClaimApi(APIView):
    @extend_schema(
        request=serializers.KeysClaimSerializer,
        responses={
            200: serializers.KeysClaimResultSerializer,
            404: OpenApiResponse(description="`not_found`: no such user"),
            429: OpenApiResponse(description="`rate_limited` with `retry_after`"),
        },
        description=(
            "One bundle for every active device of the user that has published keys."
            " Each one-time prekey is handed out once; when a device has none left its"
            " bundle carries `one_time_prekey: null`."
        ),
    )
    def post(self, request):
        data = validated(serializers.KeysClaimSerializer, request.data)
        bundles = services.keys_claim(
            claimer=request.auth, user_id=data["user_id"], device_ids=data.get("device_ids")
        )
        return Response(serializers.KeysClaimResultSerializer({"bundles": bundles}).data)
