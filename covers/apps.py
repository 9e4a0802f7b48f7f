from django.apps import AppConfig


class CoversConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "covers"
    verbose_name = "Song covers"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (covers.E001: Redis must not evict)
        from . import schema  # noqa: F401  (registers the OpenAPI auth extensions)
        from .principals import connect_signals

        connect_signals()  # a revoked/deleted key, a deactivated or logged-out user: their sockets close
