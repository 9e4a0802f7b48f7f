"""`python manage.py create_api_key NAME [--owner USERNAME] [--expires-days N] [limits]`

Creates an API key and prints the key once, alone on the last line (scripts read it with
`tail -n 1`). Only a hash is stored."""
from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

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
        key_obj, key = APIKey.objects.create_key(
            name=name[:50], owner=user, expiry_date=expiry,
            max_concurrent_jobs=opts.get("max_concurrent_jobs"), jobs_per_day=opts.get("jobs_per_day"),
            max_upload_mb=opts.get("max_upload_mb"), max_song_seconds=opts.get("max_song_seconds"))
        if opts.get("verbosity", 1) >= 1:
            self.stderr.write(f"Created API key {key_obj.name!r} (prefix {key_obj.prefix}). "
                              f"It is shown only now; send it in the X-API-Key header.")
        self.stdout.write(key)
