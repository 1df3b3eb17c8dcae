from django.urls import path

from apps.messaging import api

urlpatterns = [
    path("conversations", api.ConversationListApi.as_view(), name="conversation-list"),
    path("conversations/direct", api.ConversationDirectApi.as_view(), name="conversation-direct"),
    path(
        "conversations/<str:conversation_id>/devices",
        api.ConversationDevicesApi.as_view(),
        name="conversation-devices",
    ),
    path("messages", api.MessageSendApi.as_view(), name="message-send"),
    path(
        "messages/<str:message_id>/receipts",
        api.MessageReceiptsApi.as_view(),
        name="message-receipts",
    ),
    path("events", api.EventsPollApi.as_view(), name="events-poll"),
    path("events/ack", api.EventsAckApi.as_view(), name="events-ack"),
    path("read", api.ReadApi.as_view(), name="read"),
]
