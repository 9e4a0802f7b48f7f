"""Per-API-key limits that the create service checks beyond covers.services' own
(``_check_key_limits``: 429 for concurrent and daily jobs; covers.uploads: 413 for the file size).
New keys start with the COVER_KEY_DEFAULT_* settings (:func:`default_key_limits`).

A key's ``max_song_seconds`` is a quota of the key, not a property of the audio, so exceeding
it is a 413 ``song_too_long`` (the service-wide COVER_MAX_SONG_SECONDS stays a 422 ``too_long``).
"""
from __future__ import annotations

from dataclasses import replace

from django.conf import settings

from .errors import UploadTooLarge
from .uploads import UploadLimits


# key field -> the setting that gives a new key its starting value
DEFAULT_KEY_LIMITS = {"max_concurrent_jobs": "COVER_KEY_DEFAULT_MAX_CONCURRENT",
                      "jobs_per_day": "COVER_KEY_DEFAULT_JOBS_PER_DAY",
                      "max_upload_mb": "COVER_KEY_DEFAULT_MAX_UPLOAD_MB",
                      "max_song_seconds": "COVER_KEY_DEFAULT_MAX_SONG_SECONDS"}


def default_key_limits() -> dict:
    """The limits a new API key starts with (create_api_key, the admin's add form), from the
    COVER_KEY_DEFAULT_* settings; a setting of 0 (or empty) leaves that limit off."""
    out = {}
    for field, name in DEFAULT_KEY_LIMITS.items():
        value = getattr(settings, name, None)
        out[field] = value if value else None
    return out


def upload_limits_for_key(api_key) -> UploadLimits:
    """The upload limits for probing: the key's size limit, but the service-wide song duration
    (the key's own duration limit is checked by :func:`check_song_duration`)."""
    limits = UploadLimits.for_key(api_key)
    return replace(limits, max_song_seconds=settings.COVER_MAX_SONG_SECONDS)


def check_song_duration(api_key, song_info: dict) -> None:
    if api_key is None or not api_key.max_song_seconds:
        return
    duration = float(song_info.get("duration") or 0)
    if duration > api_key.max_song_seconds:
        raise UploadTooLarge(f"song is {duration:.1f} s long; this API key accepts songs of at most "
                             f"{api_key.max_song_seconds:g} s", field="song", code="song_too_long")


def lock_key_and_recheck(api_key, check) -> None:
    """Inside the create transaction: lock the key's row, then run the count-based checks
    (``check(api_key)``, covers.services._check_key_limits) again, so two simultaneous requests
    cannot both take the last free slot (on SQLite the IMMEDIATE transaction serializes them)."""
    if api_key is None or (api_key.max_concurrent_jobs is None and api_key.jobs_per_day is None):
        return
    from .models import APIKey

    APIKey.objects.select_for_update().filter(pk=api_key.pk).values_list("pk", flat=True).first()
    check(api_key)
