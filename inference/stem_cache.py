"""Separation results cached by what they depend on.

A second cover of the same song (another voice, another pitch) needs the same stems: the
separate stage looks them up under a key made of the decoded song's content (sha256 of the
working-rate PCM), the separator's name, its options and this package's version, and skips
the separator on a hit (the stage is reported with ``cached=True``).

The cache is an interface passed into :class:`inference.Pipeline` from outside
(``stem_cache=``): :class:`FileStemCache` keeps entries in a local folder (the CLI's
``--stem-cache DIR``); the web service passes one backed by its Django storage (S3 or a
shared disk) so that every worker on every machine sees the same entries. A cache that fails
(unreachable storage, a half-written entry) is a miss, never a failed job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import __version__

log = logging.getLogger("inference.stem_cache")

# Bump when what an entry holds changes meaning (not needed for engine changes: the package
# version is part of the key).
CACHE_FORMAT = 1
VOCALS, INSTRUMENTAL, META = "vocals.wav", "instrumental.wav", "meta.json"


@dataclass
class CachedStems:
    """A hit: local copies of the two stems (work rate) and what the stage recorded with them."""

    vocals: Path
    instrumental: Path
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StemCache(Protocol):
    def get(self, key: str, dest: Path) -> CachedStems | None:
        """The entry ``key`` copied into the local folder ``dest``, or None (a miss)."""

    def put(self, key: str, vocals: Path, instrumental: Path, meta: dict[str, Any]) -> None:
        """Store the two stem files (and ``meta``, JSON-able) under ``key``."""


def stem_cache_key(song: np.ndarray, sr: int, separator: str, options: dict[str, Any] | None = None,
                   engine_version: str | None = None) -> str:
    """sha256 over the decoded song (float32 PCM, shape and rate) and the separator's identity."""
    pcm = np.ascontiguousarray(song, dtype=np.float32)
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "inference": __version__, "separator": separator,
                         "options": options or {}, "engine_version": engine_version, "sr": int(sr),
                         "shape": list(pcm.shape)}, sort_keys=True, default=str).encode())
    h.update(memoryview(pcm).cast("B"))
    return h.hexdigest()


class FileStemCache:
    """Entries in ``root/<key>/`` on a local (or shared) disk; writes are atomic (a temp folder
    renamed into place), entries older than ``max_age_seconds`` count as missing and
    :meth:`purge` deletes them."""

    def __init__(self, root: Path | str, max_age_seconds: float | None = None):
        self.root = Path(root)
        self.max_age_seconds = max_age_seconds

    def _entry(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a stem cache key: {key!r}")
        return self.root / key

    def _expired(self, meta_path: Path, now: float | None = None) -> bool:
        if self.max_age_seconds is None:
            return False
        return (now or time.time()) - meta_path.stat().st_mtime > self.max_age_seconds

    def get(self, key: str, dest: Path) -> CachedStems | None:
        entry = self._entry(key)
        try:
            meta_path = entry / META
            if not meta_path.is_file() or self._expired(meta_path):
                return None
            meta = json.loads(meta_path.read_text())
            dest = Path(dest)
            dest.mkdir(parents=True, exist_ok=True)
            out = []
            for name in (VOCALS, INSTRUMENTAL):
                target = dest / f"cached-{name}"
                shutil.copyfile(entry / name, target)
                out.append(target)
            return CachedStems(out[0], out[1], meta)
        except (OSError, ValueError) as exc:
            log.warning("stem cache entry %s unreadable (%s): a miss", key[:12], exc)
            return None

    def put(self, key: str, vocals: Path, instrumental: Path, meta: dict[str, Any]) -> None:
        entry = self._entry(key)
        if (entry / META).is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.root))
        try:
            shutil.copyfile(vocals, tmp / VOCALS)
            shutil.copyfile(instrumental, tmp / INSTRUMENTAL)
            (tmp / META).write_text(json.dumps(meta, default=str))
            try:
                os.rename(tmp, entry)
            except OSError:  # another process stored it first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def purge(self) -> int:
        """Delete expired (and half-written) entries; returns how many went."""
        if not self.root.is_dir():
            return 0
        now, gone = time.time(), 0
        for entry in self.root.iterdir():
            meta = entry / META
            try:
                stale = not meta.is_file() and now - entry.stat().st_mtime > 3600
                if stale or (meta.is_file() and self._expired(meta, now)):
                    shutil.rmtree(entry, ignore_errors=True)
                    gone += 1
            except OSError:
                continue
        return gone
