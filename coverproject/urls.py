from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from covers import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("api/v1/cover/", include("covers.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("covers.web")),  # the cover page, log in/out
]

if settings.COVER_SERVE_STATIC:
    # daphne serves no static files by itself: the admin's and the API docs' (Swagger UI from
    # drf-spectacular-sidecar) come from the apps' static folders. Put a proxy/CDN in front in
    # production and set COVER_SERVE_STATIC=false.
    urlpatterns += [re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True})]
