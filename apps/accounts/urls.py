from django.urls import path

from apps.accounts import api

urlpatterns = [
    path("auth/register", api.RegisterApi.as_view(), name="auth-register"),
    path("auth/login", api.LoginApi.as_view(), name="auth-login"),
    path("auth/logout", api.LogoutApi.as_view(), name="auth-logout"),
    path("me", api.MeApi.as_view(), name="me"),
    path("users", api.UserLookupApi.as_view(), name="user-lookup"),
    path("users/<str:user_id>/devices", api.UserDevicesApi.as_view(), name="user-devices"),
    path("keys", api.KeysApi.as_view(), name="keys"),
    path("keys/count", api.KeysCountApi.as_view(), name="keys-count"),
    path("keys/claim", api.KeysClaimApi.as_view(), name="keys-claim"),
]
