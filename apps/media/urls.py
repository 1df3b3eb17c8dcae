from django.urls import path

from apps.media import api

urlpatterns = [
    path("media", api.MediaUploadApi.as_view(), name="media-upload"),
    path("media/uploads", api.MediaUploadStartApi.as_view(), name="media-upload-start"),
    path("media/<str:media_id>", api.MediaDownloadApi.as_view(), name="media-download"),
]
