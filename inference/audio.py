"""Decoding (by content, through FFmpeg's libraries via PyAV), resampling (soxr) and writing.

Decoding never trusts the file name: the container is probed from the bytes, and FFmpeg is
restricted to the ``file`` protocol so a playlist cannot make it open anything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError

# FFmpeg options: only read the given file, no network or nested protocols.
SAFE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": (
    "wav,w64,flac,mp3,ogg,matroska,webm,mov,mp4,m4a,3gp,3g2,mj2,aac,aiff,caf,au,opus,wv,ape,tta"
)}
ACCEPTED_FORMATS = set(SAFE_OPTIONS["format_whitelist"].split(",")) | {
    "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}


@dataclass(frozen=True)
class AudioInfo:
    format: str
    codec: str
    sample_rate: int
    channels: int
    duration: float  # seconds, from the container header (may be an estimate)


def _open(path: Path | str, field: str):
    import av
    try:
        return av.open(str(path), mode="r", options=dict(SAFE_OPTIONS), metadata_errors="ignore")
    except Exception as exc:  # av.error.InvalidDataError, PermissionError, ...
        raise InputError(field, f"{field} is not a readable audio file ({_short(exc)})",
                         code="unsupported_media") from None


def _short(exc: Exception) -> str:
    msg = str(exc).strip() or exc.__class__.__name__
    # PyAV messages include the file path; keep the reason only.
    if ":" in msg and "/" in msg:
        msg = msg.split(":")[0]
    return msg[:160]


def probe(path: Path | str, field: str = "song") -> AudioInfo:
    """Read the header only: container, codec, rate, channels, duration. Cheap."""
    container = _open(path, field)
    try:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise InputError(field, f"{field} has no audio stream", code="unsupported_media")
        st = streams[0]
        ctx = st.codec_context
        rate = int(ctx.sample_rate or st.rate or 0)
        channels = int(getattr(ctx, "channels", 0) or (ctx.layout.nb_channels if ctx.layout else 0))
        if st.duration is not None and st.time_base is not None:
            duration = float(st.duration * st.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000.0
        else:
            duration = 0.0
        return AudioInfo(container.format.name, ctx.name, rate, channels, duration)
    finally:
        container.close()


def decode(path: Path | str, field: str = "song", *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 ``(channels, samples)`` at its own rate.

    Raises :class:`InputError` for anything that is not decodable audio, and stops
    early (with an error) once more than ``max_seconds`` have been decoded.
    """
    import av
    container = _open(path, field)
    try:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise InputError(field, f"{field} has no audio stream", code="unsupported_media")
        stream = streams[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if rate <= 0:
            raise InputError(field, f"{field} declares no sample rate")
        resampler = av.AudioResampler(format="fltp", layout=None, rate=None)
        chunks: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * rate) + rate if max_seconds else None
        try:
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    arr = f.to_ndarray()
                    chunks.append(arr.astype(np.float32, copy=False))
                    total += arr.shape[1]
                if limit is not None and total > limit:
                    raise InputError(field, f"{field} is longer than the limit of {max_seconds:.0f} s",
                                     code="too_long")
        except InputError:
            raise
        except Exception as exc:
            raise InputError(field, f"{field} is corrupt or truncated ({_short(exc)})",
                             code="corrupt_audio") from None
        if total == 0:
            raise InputError(field, f"{field} contains no audio samples (zero length)", code="empty_audio")
        audio = np.concatenate(chunks, axis=1)
        if not np.all(np.isfinite(audio)):
            audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        return audio, rate
    finally:
        container.close()


def resample(audio: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling of ``(channels, samples)`` or ``(samples,)`` float audio."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    if audio.ndim == 1:
        return soxr.resample(audio.astype(np.float32), sr_in, sr_out, quality=quality).astype(np.float32)
    out = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float32), sr_in, sr_out, quality=quality)
    return np.ascontiguousarray(out.T, dtype=np.float32)


def to_mono(audio: np.ndarray) -> np.ndarray:
    return audio if audio.ndim == 1 else audio.mean(axis=0).astype(np.float32)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC we wrote ourselves: ``(channels, samples)`` float32."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


def write_wav(path: Path | str, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    """Write ``(channels, samples)`` or ``(samples,)``; ``subtype`` PCM_16, PCM_24 or FLOAT."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio.T if audio.ndim == 2 else audio
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), data, sr, subtype=subtype, format=_format_for(path))
    tmp.replace(path)
    return path


def _format_for(path: Path) -> str:
    return {".flac": "FLAC", ".wav": "WAV", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
