"""WebSocket routes, mounted by coverproject/asgi.py under AllowedHostsOriginValidator and
AuthMiddlewareStack. Consumers (issue 4) add their paths here, e.g.
``re_path(r"^ws/cover/jobs/(?P<job_id>[0-9a-f-]+)/$", consumers.JobConsumer.as_asgi())``.
Events arrive from covers.notifications (groups ``cover_job_<uuid>``, ``cover_owner_<key prefix>``,
``cover_user_<user id>``; message type ``job.update`` -> handler ``job_update``)."""

websocket_urlpatterns: list = []
