from django.urls import path

from apps.presence import api

urlpatterns = [
    path(
        "presence/subscriptions",
        api.PresenceSubscriptionsApi.as_view(),
        name="presence-subscriptions",
    ),
    path("typing", api.TypingApi.as_view(), name="typing"),
]
