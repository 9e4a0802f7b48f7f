"""`python manage.py create_api_key NAME [--owner USERNAME] [--expires-days N] [limits]`

Creates an API key and prints the key once, alone on the last line (scripts read it with
`tail -n 1`). Only a hash is stored. Limits not given start at the COVER_KEY_DEFAULT_* settings."""
from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from covers.limits import default_key_limits
from covers.models import APIKey


class Command(BaseCommand):
    help = "Create an API key and print it (once, alone on the last line)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--owner", help="username of the owning user (optional)")
        parser.add_argument("--expires-days", type=float, default=None)
        parser.add_argument("--max-concurrent-jobs", type=int, default=None)
        parser.add_argument("--jobs-per-day", type=int, default=None)
        parser.add_argument("--max-upload-mb", type=float, default=None)
        parser.add_argument("--max-song-seconds", type=float, default=None)

    def handle(self, *args, name: str, owner=None, expires_days=None, **opts):
        user = None
        if owner:
            try:
                user = get_user_model().objects.get(username=owner)
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user named {owner!r}") from None
        expiry = timezone.now() + timedelta(days=expires_days) if expires_days else None
        # limits not given start at the COVER_KEY_DEFAULT_* settings (staff change them in the admin)
        limits = {field: default if opts.get(field) is None else opts[field]
                  for field, default in default_key_limits().items()}
        key_obj, key = APIKey.objects.create_key(name=name[:50], owner=user, expiry_date=expiry, **limits)
        if opts.get("verbosity", 1) >= 1:
            self.stderr.write(f"Created API key {key_obj.name!r} (prefix {key_obj.prefix}). "
                              f"It is shown only now; send it in the X-API-Key header.")
        self.stdout.write(key)
