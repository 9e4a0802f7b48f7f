"""WebSocket routes, mounted by coverproject/asgi.py under the origin check (ALLOWED_HOSTS),
channels' AuthMiddlewareStack (session) and covers.ws_auth.CallerMiddleware (key header, signed
token or session -> ``scope["cover_caller"]``).

Events arrive from covers.notifications (groups ``cover_job_<uuid>``, ``cover_owner_<key prefix>``,
``cover_user_<user id>``; message type ``job.update`` -> handler ``job_update``)."""
from django.urls import re_path

from . import consumers

websocket_urlpatterns: list = [
    re_path(r"^ws/cover/jobs/(?P<job_id>[^/]+)/$", consumers.JobConsumer.as_asgi()),
    re_path(r"^ws/cover/jobs/$", consumers.JobListConsumer.as_asgi()),
    re_path(r"", consumers.NoRouteConsumer.as_asgi()),  # anything else: close 4404, no error
]
