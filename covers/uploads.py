"""Cheap checks of uploaded audio before anything is queued: size, then the container header
read by content (inference.audio.probe: no full decode, unless the header gives no length)."""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass

from django.conf import settings

from .errors import UnprocessableAudio, UnsupportedMedia, UploadTooLarge

MB = 1024 * 1024
_EXT = {"wav": ".wav", "w64": ".w64", "flac": ".flac", "mp3": ".mp3", "ogg": ".ogg", "aiff": ".aiff",
        "caf": ".caf", "au": ".au", "aac": ".aac", "wv": ".wv", "ape": ".ape", "tta": ".tta",
        "mov,mp4,m4a,3gp,3g2,mj2": ".m4a", "matroska,webm": ".mka"}
# inference.errors.InputError codes that mean "audio, but unusable" (422, not 415)
_UNPROCESSABLE = {"corrupt_audio", "empty_audio", "too_long"}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_song_seconds: float
    min_song_seconds: float
    min_reference_seconds: float
    max_reference_seconds: float
    min_sample_rate: int
    max_sample_rate: int
    max_channels: int

    @classmethod
    def for_key(cls, api_key=None) -> "UploadLimits":
        max_mb = settings.COVER_MAX_UPLOAD_MB
        max_song = settings.COVER_MAX_SONG_SECONDS
        if api_key is not None:
            if api_key.max_upload_mb:
                max_mb = min(max_mb, api_key.max_upload_mb)
            if api_key.max_song_seconds:
                max_song = min(max_song, api_key.max_song_seconds)
        return cls(int(max_mb * MB), max_song, settings.COVER_MIN_SONG_SECONDS,
                   settings.COVER_MIN_REFERENCE_SECONDS, settings.COVER_MAX_REFERENCE_SECONDS,
                   settings.COVER_MIN_SAMPLE_RATE, settings.COVER_MAX_SAMPLE_RATE, settings.COVER_MAX_CHANNELS)

    @property
    def max_request_bytes(self) -> int:
        return 2 * self.max_bytes + MB


def check_size(field: str, upload, limits: UploadLimits) -> None:
    if upload.size > limits.max_bytes:
        raise UploadTooLarge(f"{field} is {upload.size / MB:.1f} MB; the limit is {limits.max_bytes / MB:.0f} MB",
                             field=field)
    if upload.size == 0:
        raise UnprocessableAudio(f"{field} is empty (0 bytes)", field=field, code="empty_audio")


# What reads an upload's header (tests swap in a decoder that crashes; it must be importable by
# name, since it runs in a child process).
PROBE_TARGET = None  # None: inference.audio.probe


def _probe(path: str, field: str, max_seconds: float):
    """The header, read in a child process when COVER_PROBE_ISOLATED (default): a decoder crash or
    hang on a hostile file ends the child (422), never the web process. A file whose header gives
    no length (a piped FLAC, WAV, MP3, ADTS...) is measured by decoding it, up to just over
    ``max_seconds`` (so a file decoding to hours fails as fast as a long song)."""
    from inference import audio

    if not settings.COVER_PROBE_ISOLATED:
        return (PROBE_TARGET or audio.probe)(path, field, max_seconds=max_seconds)
    return audio.probe_isolated(path, field, timeout=settings.COVER_PROBE_TIMEOUT_SECONDS,
                                memory_mb=settings.COVER_PROBE_MEMORY_MB, target=PROBE_TARGET,
                                max_seconds=max_seconds)


def inspect_upload(field: str, upload, limits: UploadLimits, *, reference: bool = False) -> dict:
    """Probe ``upload`` (a Django UploadedFile) and apply the limits. Returns the probe facts."""
    from inference.errors import InputError

    check_size(field, upload, limits)
    lo, hi = ((limits.min_reference_seconds, limits.max_reference_seconds) if reference
              else (limits.min_song_seconds, limits.max_song_seconds))
    path, tmp = _local_path(upload)
    try:
        try:
            info = _probe(path, field, hi)
        except InputError as exc:
            if exc.code in _UNPROCESSABLE:  # audio, but unusable (truncated, empty): 422
                raise UnprocessableAudio(_msg(field, exc.message), field=field, code=exc.code) from None
            raise UnsupportedMedia(_msg(field, exc.message), field=field) from None
    finally:
        if tmp:
            os.unlink(tmp)
        upload.seek(0)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise UnsupportedMedia(f"{field} has no decodable audio stream", field=field)
    if not (limits.min_sample_rate <= info.sample_rate <= limits.max_sample_rate):
        raise UnprocessableAudio(
            f"{field} has a sample rate of {info.sample_rate} Hz; accepted: "
            f"{limits.min_sample_rate}..{limits.max_sample_rate} Hz", field=field, code="bad_sample_rate")
    if info.channels > limits.max_channels:
        raise UnprocessableAudio(f"{field} has {info.channels} channels; at most {limits.max_channels} accepted",
                                 field=field, code="bad_channels")
    if info.duration <= 0:
        raise UnprocessableAudio(f"{field} contains no audio (zero length)", field=field, code="empty_audio")
    if info.duration < lo:
        raise UnprocessableAudio(f"{field} is {info.duration:.1f} s long; at least {lo:g} s is needed",
                                 field=field, code="too_short")
    if info.duration > hi:
        raise UnprocessableAudio(f"{field} is {info.duration:.1f} s long; the limit is {hi:g} s",
                                 field=field, code="too_long")
    facts = asdict(info)
    facts["size"] = upload.size
    facts["name"] = (upload.name or "")[:200]
    return facts


def storage_name(field: str, upload, info: dict) -> str:
    """Our own file name (never the client's path): ``song.mp3``, ``reference_voice.wav``."""
    ext = _EXT.get(info.get("format", ""), "")
    if not ext:
        m = re.search(r"\.([A-Za-z0-9]{1,5})$", upload.name or "")
        ext = f".{m.group(1).lower()}" if m else ".bin"
    return f"{field}{ext}"


def _local_path(upload) -> tuple[str, str | None]:
    if hasattr(upload, "temporary_file_path"):
        return upload.temporary_file_path(), None
    fd, tmp = tempfile.mkstemp(prefix="cover-upload-")
    with os.fdopen(fd, "wb") as fh:
        for chunk in upload.chunks():
            fh.write(chunk)
    return tmp, tmp


def _msg(field: str, message: str) -> str:
    return message if message.startswith(field) else f"{field}: {message}"
