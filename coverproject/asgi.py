"""ASGI entry point: `daphne coverproject.asgi:application`.

HTTP goes to Django; WebSocket routes come from ``covers.routing.websocket_urlpatterns``
(origin checked against ALLOWED_HOSTS, then the caller - API key header, signed token or session -
resolved by covers.ws_auth; the consumers decide what that caller may follow).
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coverproject.settings.dev")
# Initialise Django (apps, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from covers.body_limit import BodySizeLimit  # noqa: E402
from covers.checks import require_redis_noeviction  # noqa: E402
from covers.routing import websocket_urlpatterns  # noqa: E402
from covers.ws_auth import AllowedHostsOriginValidator, CallerMiddleware  # noqa: E402

require_redis_noeviction()  # daphne runs no system checks: refuse to serve on an evicting Redis

application = ProtocolTypeRouter({
    "http": BodySizeLimit(django_asgi_app),  # 413 before Django spools an oversized body
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(CallerMiddleware(URLRouter(websocket_urlpatterns)))),
})
