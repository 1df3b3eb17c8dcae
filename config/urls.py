from django.contrib import admin
from django.urls import include, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView

from apps.common.metrics import metrics_view

urlpatterns = [
    # The page sets the CSRF cookie the browser's session-authenticated writes need.
    path("", ensure_csrf_cookie(TemplateView.as_view(template_name="index.html")), name="home"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/", include("apps.accounts.urls")),
    path("api/v1/", include("apps.messaging.urls")),
    path("api/v1/", include("apps.presence.urls")),
    path("api/v1/", include("apps.groups.urls")),
    path("api/v1/", include("apps.media.urls")),
]
