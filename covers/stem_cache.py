"""The stem cache of the service: inference.stem_cache's interface over Django storage.

Entries live under ``stem-cache/<key>/`` in the default storage (local disk, or S3 through
django-storages), so every worker on every machine shares them: ``vocals.wav``,
``instrumental.wav`` and ``meta.json`` (written last: an entry without it is incomplete and
counts as missing). Entries older than COVER_RESULT_TTL_HOURS are misses, and the cleanup
(covers.cleanup.expire_stem_cache) deletes them.
"""
from __future__ import annotations

import json
import logging
import posixpath
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.utils import timezone

from inference.stem_cache import INSTRUMENTAL, META, VOCALS, CachedStems

log = logging.getLogger(__name__)

PREFIX = "stem-cache"


def _aware(dt):
    return timezone.make_aware(dt, timezone.get_default_timezone()) if timezone.is_naive(dt) else dt


class StorageStemCache:
    def __init__(self, storage=None, prefix: str = PREFIX, max_age: timedelta | None = None):
        self.storage = storage or default_storage
        self.prefix = prefix
        self.max_age = max_age if max_age is not None else timedelta(hours=settings.COVER_RESULT_TTL_HOURS)

    def _name(self, key: str, name: str) -> str:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a stem cache key: {key!r}")
        return posixpath.join(self.prefix, key, name)

    def get(self, key: str, dest: Path) -> CachedStems | None:
        meta_name = self._name(key, META)
        try:
            if not self.storage.exists(meta_name):
                return None
            if timezone.now() - _aware(self.storage.get_modified_time(meta_name)) > self.max_age:
                return None
            with self.storage.open(meta_name, "rb") as fh:
                meta = json.loads(fh.read().decode())
            files = meta.pop("files", {}) or {}
            dest = Path(dest)
            dest.mkdir(parents=True, exist_ok=True)
            out = []
            for name in (VOCALS, INSTRUMENTAL):
                target = dest / f"cached-{name}"
                with self.storage.open(files.get(name) or self._name(key, name), "rb") as src, \
                        open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                out.append(target)
            return CachedStems(out[0], out[1], meta)
        except Exception as exc:  # unreachable storage, a half-deleted entry: a miss
            log.warning("stem cache entry %s unreadable (%s: %s): a miss", key[:12], exc.__class__.__name__, exc)
            return None

    def put(self, key: str, vocals: Path, instrumental: Path, meta: dict[str, Any]) -> None:
        meta_name = self._name(key, META)
        if self.storage.exists(meta_name):
            return
        saved = {}
        try:
            for name, path in ((VOCALS, vocals), (INSTRUMENTAL, instrumental)):
                with open(path, "rb") as fh:
                    # another worker storing the same entry at once gets other names (local storage)
                    saved[name] = self.storage.save(self._name(key, name), File(fh, name=name))
            body = json.dumps({**meta, "files": saved}, default=str).encode()
            stored_meta = self.storage.save(meta_name, ContentFile(body, name=META))
            if stored_meta != meta_name:  # lost a race: the other entry stands, drop ours
                for name in [stored_meta, *saved.values()]:
                    self.storage.delete(name)
        except Exception:
            for name in saved.values():
                try:
                    self.storage.delete(name)
                except Exception:
                    pass
            raise


def stem_cache():
    """The cache the worker passes to the pipeline (None when COVER_STEM_CACHE is off)."""
    return StorageStemCache() if settings.COVER_STEM_CACHE else None
