from django.urls import path

from apps.groups import api

urlpatterns = [
    path("groups", api.GroupCreateApi.as_view(), name="group-create"),
    path("groups/<str:group_id>", api.GroupDetailApi.as_view(), name="group-detail"),
    path("groups/<str:group_id>/members", api.GroupMembersApi.as_view(), name="group-members"),
    path(
        "groups/<str:group_id>/members/<str:user_id>",
        api.GroupMemberApi.as_view(),
        name="group-member",
    ),
    path("groups/<str:group_id>/admins", api.GroupAdminsApi.as_view(), name="group-admins"),
    path("groups/<str:group_id>/leave", api.GroupLeaveApi.as_view(), name="group-leave"),
]
