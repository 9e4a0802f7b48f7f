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


def _daphne_skips_twisted_form_parsing() -> None:
    """Twisted's Request parses every multipart POST body into ``request.args`` with the email
    package before daphne hands the raw body to ASGI, and daphne never reads those args: 82% of
    daphne's CPU while taking two 5 MB uploads (py-spy, bench/api_bench.py). Twisted lets a
    request opt out (``parsePOSTFormSubmission=False``); daphne builds its requests from the
    module-level name ``WebRequest``, so that name gets a subclass that opts out."""
    try:
        from daphne import http_protocol
    except ImportError:  # not served by daphne
        return
    base = http_protocol.WebRequest
    if getattr(base, "_skips_form_parsing", False):
        return

    class WebRequest(base):
        _skips_form_parsing = True

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    http_protocol.WebRequest = WebRequest


_daphne_skips_twisted_form_parsing()

application = ProtocolTypeRouter({
    "http": BodySizeLimit(django_asgi_app),  # 413 before Django spools an oversized body
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(CallerMiddleware(URLRouter(websocket_urlpatterns)))),
})
