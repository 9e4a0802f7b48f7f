"""Decoding (by content, through FFmpeg's libraries via PyAV), resampling (soxr) and writing.

Decoding never trusts the file name: the container is probed from the bytes, and FFmpeg is
restricted to the ``file`` protocol so a playlist cannot make it open anything else.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError

log = logging.getLogger("inference.audio")

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


SUPPORTED = "WAV, FLAC, MP3, OGG/Opus, M4A/AAC"


def _open(path: Path | str, field: str):
    import av
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise InputError(field, f"{field} file is missing or unreadable", code="unsupported_media") from None
    if size == 0:
        raise InputError(field, f"{field} is an empty file (0 bytes)", code="empty_audio")
    try:
        return av.open(str(p), mode="r", options=dict(SAFE_OPTIONS), metadata_errors="ignore")
    except Exception as exc:  # av.error.InvalidDataError, PermissionError, ...
        log.info("cannot open %s as audio: %s", field, exc)
        raise InputError(field, f"{field} is not an audio file we can read (supported: {SUPPORTED})",
                         code="unsupported_media") from None


def _short(exc: Exception) -> str:
    msg = str(exc).strip() or exc.__class__.__name__
    # PyAV messages include the file path; keep the reason only.
    if ":" in msg and "/" in msg:
        msg = msg.split(":")[0]
    return msg[:160]


def probe(path: Path | str, field: str = "song", *, max_seconds: float | None = None) -> AudioInfo:
    """Read the header: container, codec, rate, channels, duration. Cheap.

    Some files carry no length (``ffmpeg ... -f flac -`` writes 0 samples, "unknown"; a piped WAV
    has 0xFFFFFFFF sizes; an MP3 without a Xing/VBRI frame count, ADTS AAC and a piped Matroska
    have none): with ``max_seconds`` given, such a file is decoded to measure it, up to just over
    ``max_seconds`` (a file that decodes to hours still stops there: its duration is then
    reported as over the limit). Without ``max_seconds`` an unknown length is 0."""
    container = _open(path, field)
    try:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise InputError(field, f"{field} has no audio stream", code="unsupported_media")
        st = streams[0]
        ctx = st.codec_context
        codec = ctx.name
        rate = int(ctx.sample_rate or st.rate or 0)
        channels = int(getattr(ctx, "channels", 0) or (ctx.layout.nb_channels if ctx.layout else 0))
        duration = _header_seconds(container, st)
        fmt, stream_bits = container.format.name, int(st.bit_rate or 0)
    finally:
        container.close()
    declared = 0.0
    if fmt == "wav":
        riff = _riff_fmt(path)
        if riff and channels <= 0:
            channels = riff[0]  # FFmpeg gives up on absurd channel counts; the header still says it
        declared = _riff_declared_seconds(path) or 0.0
    if max_seconds is not None and rate > 0 and _length_unknown(path, fmt, duration, declared):
        duration = _decoded_seconds(path, field, max_seconds)
        stream_bits = 0  # FFmpeg's bit rate was its guess too: no truncation check against it
    if fmt == "wav":
        if declared > 0 and duration < 0.95 * declared - 0.25:
            raise InputError(field, f"{field} is truncated: its header declares {declared:.1f} s but the file "
                                    f"holds {duration:.1f} s", code="corrupt_audio")
    elif fmt == "mp3" and stream_bits > 0 and duration > 1:
        # The Xing/VBRI header gives the length and the average bit rate of the whole file.
        expected = stream_bits / 8 * duration
        if Path(path).stat().st_size < 0.9 * expected - 1024:
            raise InputError(field, f"{field} is truncated: its header declares {duration:.1f} s but the file "
                                    f"is too short for that", code="corrupt_audio")
    return AudioInfo(fmt, codec, rate, channels, duration)


def _length_unknown(path: Path | str, fmt: str, duration: float, riff_declared: float) -> bool:
    """True when the file states no length of its own, and FFmpeg's figure is 0 or a guess from
    the file size and the first frame's bit rate."""
    if duration <= 0:
        return True
    if fmt == "wav":
        return riff_declared <= 0         # streamed: 0 or 0xFFFFFFFF sizes (or not RIFF at all)
    if fmt == "aac":
        return True                       # ADTS frames carry no total
    if fmt == "mp3":
        return not _mp3_frame_count(path)
    return False


def _mp3_frame_count(path: Path | str) -> int:
    """The frame count of an MP3's Xing/Info or VBRI header (0 when it has none: FFmpeg then
    estimates the length from the size and the first frame's bit rate)."""
    import struct
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
            skip = 0
            if len(head) == 10 and head[:3] == b"ID3":  # ID3v2: syncsafe size, then the first frame
                skip = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
                             | (head[9] & 0x7F))
            fh.seek(skip)
            block = fh.read(4096)
    except OSError:
        return 0
    for tag in (b"Xing", b"Info"):
        p = block.find(tag)
        if p >= 0 and len(block) >= p + 12:
            flags, frames = struct.unpack(">II", block[p + 4:p + 12])
            if flags & 1:
                return frames
    p = block.find(b"VBRI")
    if p >= 0 and len(block) >= p + 18:
        return struct.unpack(">I", block[p + 14:p + 18])[0]
    return 0


def _decoded_seconds(path: Path | str, field: str, max_seconds: float) -> float:
    """Seconds of audio in the first stream, counted by decoding (nothing kept); stops once past
    ``max_seconds`` + 1 s, so a small file that decodes to hours costs no more than a long song."""
    container = _open(path, field)
    try:
        stream = next(s for s in container.streams if s.type == "audio")
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        stop = (float(max_seconds) + 1.0) * rate
        total = 0
        try:
            for frame in container.decode(stream):
                total += int(frame.samples)
                if total > stop:
                    break
        except Exception as exc:
            log.info("measuring %s failed after %d samples: %s", field, total, exc)
            raise InputError(field, f"{field} is corrupt or truncated: decoding failed after "
                                    f"{total / max(rate, 1):.1f} s", code="corrupt_audio") from None
        return total / rate if rate > 0 else 0.0
    finally:
        container.close()


# --------------------------------------------------------------------------------------------
# probing in a child process: a decoder that crashes or hangs on a hostile file takes the child
# down, not the caller (the web process, which probes every upload)
# --------------------------------------------------------------------------------------------
_PROBE_CTX = None


def _probe_context():
    """A forkserver: one clean single-threaded process (FFmpeg/PyAV imported once) that forks a
    child per probe; forking the multi-threaded web process itself would not be safe."""
    global _PROBE_CTX
    if _PROBE_CTX is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["inference.audio", "av"])  # av: PyAV + FFmpeg (~50 ms to import)
        _PROBE_CTX = ctx
    return _PROBE_CTX


def _isolated_child(conn, target, args: tuple, kwargs: dict, field: str, memory_mb: int, what: str) -> None:
    import dataclasses
    import resource

    if memory_mb > 0:  # a header declaring absurd sizes cannot make the decoder take the machine
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        out = target(*args, **kwargs)
        conn.send(("ok", dataclasses.asdict(out) if dataclasses.is_dataclass(out) else out))
    except InputError as exc:
        conn.send(("input_error", exc.field, exc.message, exc.code))
    except MemoryError:
        conn.send(("input_error", field, f"{field} could not be read: {what} needs more than "
                                         f"{memory_mb} MB", "corrupt_audio"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{exc.__class__.__name__}: {str(exc)[:200]}"))
    finally:
        conn.close()


def run_isolated(target, args: tuple, kwargs: dict | None = None, *, field: str, timeout: float,
                 memory_mb: int, what: str = "decoding it"):
    """``target(*args, **kwargs)`` in a child process (forked by the forkserver) with a time and
    an address-space limit; its (picklable) result is returned, an :class:`InputError` it raises
    is raised here. A child that dies (a decoder crash: SIGSEGV, abort), runs out of time or
    memory, or fails unexpectedly is an :class:`InputError` ``corrupt_audio`` naming ``field``;
    the caller keeps running. ``target`` must be importable by name (it is sent to the child)."""
    ctx = _probe_context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_child, args=(child, target, tuple(args), dict(kwargs or {}), field,
                                                     int(memory_mb), what), daemon=True)
    proc.start()
    child.close()
    answer, timed_out = None, False
    try:
        if parent.poll(timeout):  # an answer, or the end of the pipe (the child died)
            answer = parent.recv()
        else:
            timed_out = True
    except EOFError:  # the child died before answering
        pass
    finally:
        parent.close()
    proc.join(timeout=1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if answer is None:
        if not timed_out and proc.exitcode is not None and proc.exitcode < 0:
            import signal as _signal

            name = _signal.Signals(-proc.exitcode).name
            log.warning("%s %s: the decoder died with %s", what, field, name)
            raise InputError(field, f"{field} could not be read: the decoder crashed on it ({name})",
                             code="corrupt_audio")
        log.warning("%s %s: no answer within %.0f s", what, field, timeout)
        raise InputError(field, f"{field} could not be read: {what} took longer than {timeout:g} s",
                         code="corrupt_audio")
    kind, *rest = answer
    if kind == "ok":
        return rest[0]
    if kind == "input_error":
        which, message, code = rest
        raise InputError(which or field, message, code=code)
    log.warning("%s %s failed in the child: %s", what, field, rest[0])
    raise InputError(field, f"{field} could not be read ({rest[0][:120]})", code="corrupt_audio")


def probe_isolated(path: Path | str, field: str = "song", *, timeout: float = 10.0, memory_mb: int = 1024,
                   target=None, max_seconds: float | None = None) -> AudioInfo:
    """:func:`probe` in a child process with a time and memory limit (:func:`run_isolated`).
    ``target`` (default :func:`probe`) must be importable by name (it is sent to the child);
    ``max_seconds`` is passed on when given (a file of unknown length is measured by decoding)."""
    kwargs = {"max_seconds": max_seconds} if max_seconds is not None else {}
    out = run_isolated(target or probe, (str(path), field), kwargs, field=field, timeout=timeout,
                       memory_mb=memory_mb, what="reading its header")
    return AudioInfo(**out)


# --------------------------------------------------------------------------------------------
# decoding in a child process: what a worker opts into (isolate_decoding), so a decoder crash on
# a hostile file fails the job (corrupt_audio) instead of ending the worker
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Isolation:
    timeout: float = 120.0       # seconds for the header and the whole decode of one input
    memory_mb: int = 4096        # address-space limit of the decoding child
    target: object = None        # what runs in the child (default decode_to_file); importable by name


_ISOLATION: Isolation | None = None


def isolate_decoding(isolation: Isolation | None) -> None:
    """Per process: from now on the preprocess stage probes and decodes every input in a child
    process with these limits (:func:`decode_isolated`); ``None`` decodes in this process again."""
    global _ISOLATION
    _ISOLATION = isolation


def decoding_isolation() -> Isolation | None:
    return _ISOLATION


def decode_to_file(path: str, field: str, *, max_seconds: float | None, out: str) -> dict:
    """The child's side of :func:`decode_isolated`: :func:`probe` then :func:`decode`, the samples
    written to ``out`` (.npy); answers the probe facts and the sample rate."""
    import dataclasses

    info = probe(path, field)
    data, sr = decode(path, field, max_seconds=max_seconds)
    with open(out, "wb") as fh:
        np.save(fh, data, allow_pickle=False)
    return {"info": dataclasses.asdict(info), "sample_rate": int(sr)}


def decode_isolated(path: Path | str, field: str = "song", *, max_seconds: float | None, scratch: Path | str,
                    isolation: Isolation | None = None) -> tuple[AudioInfo, np.ndarray, int]:
    """:func:`probe` and :func:`decode` in a child process with the limits of ``isolation``
    (default: the process's, else :class:`Isolation`'s defaults). The samples come back through a
    file in ``scratch`` (removed here). Returns ``(header facts, (channels, samples) float32,
    sample rate)``; a crash, hang or runaway allocation is :class:`InputError` ``corrupt_audio``."""
    import tempfile

    iso = isolation or _ISOLATION or Isolation()
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    fd, out = tempfile.mkstemp(prefix=f"{field}-", suffix=".npy", dir=scratch)
    os.close(fd)
    try:
        got = run_isolated(iso.target or decode_to_file, (str(path), field),
                           {"max_seconds": max_seconds, "out": out}, field=field, timeout=iso.timeout,
                           memory_mb=iso.memory_mb, what="decoding it")
        data = np.load(out, allow_pickle=False)
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    if data.dtype != np.float32 or data.ndim != 2:
        raise InputError(field, f"{field} could not be read (the decoder returned {data.dtype} {data.shape})",
                         code="corrupt_audio")
    return AudioInfo(**got["info"]), data, int(got["sample_rate"])


def _header_seconds(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0
    return 0.0


def decode(path: Path | str, field: str = "song", *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 ``(channels, samples)`` at its own rate.

    Raises :class:`InputError` for anything that is not decodable audio (``unsupported_media``),
    an empty file or stream (``empty_audio``), a file that stops well before the length its
    header declares or fails mid-stream (``corrupt_audio``), and stops early once more than
    ``max_seconds`` have been decoded (``too_long``).
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
            raise InputError(field, f"{field} declares no sample rate", code="unsupported_media")
        header = _header_seconds(container, stream)
        resampler = av.AudioResampler(format="fltp", layout=None, rate=None)
        total = 0
        limit = int(max_seconds * rate) + 1 if max_seconds else None
        # decoded straight into one growing buffer per channel (sized from the header), not a
        # list of small frames to concatenate: no 2x peak and no heap fragmented by frames
        est = int(header * rate) + rate if header > 0 else 30 * rate
        if limit is not None:
            est = min(est, limit + 8192)
        bufs: list[np.ndarray] = []

        def put(arr: np.ndarray) -> None:
            nonlocal total
            m = arr.shape[1]
            if not bufs:
                bufs.extend(np.empty(max(est, m), np.float32) for _ in range(arr.shape[0]))
            if arr.shape[0] != len(bufs):
                raise ValueError("the channel count changed mid-stream")
            if total + m > len(bufs[0]):
                grow = max(total + m, int(len(bufs[0]) * 1.5))
                for c in range(len(bufs)):
                    nb = np.empty(grow, np.float32)
                    nb[:total] = bufs[c][:total]
                    bufs[c] = nb
            for c in range(len(bufs)):
                bufs[c][total:total + m] = arr[c]
            total += m

        try:
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    put(f.to_ndarray())
                if limit is not None and total > limit:
                    raise InputError(field, f"{field} is longer than the limit of {max_seconds:g} s",
                                     code="too_long")
            for f in resampler.resample(None):
                put(f.to_ndarray())
        except InputError:
            raise
        except Exception as exc:
            log.info("decoding %s failed after %d samples: %s", field, total, exc)
            raise InputError(field, f"{field} is corrupt or truncated: decoding failed after "
                                    f"{total / rate:.1f} s", code="corrupt_audio") from None
        if total == 0:
            raise InputError(field, f"{field} contains no audio samples (zero length)", code="empty_audio")
        got = total / rate
        fmt = container.format.name
        if fmt == "wav":
            header = max(header, _riff_declared_seconds(path) or 0.0)
        if header > 0 and got < 0.95 * header - 0.25:
            raise InputError(field, f"{field} is truncated: its header declares {header:.1f} s but only "
                                    f"{got:.1f} s could be decoded", code="corrupt_audio")
        if limit is not None and total > limit:
            raise InputError(field, f"{field} is longer than the limit of {max_seconds:g} s", code="too_long")
        keep = total
        # AAC/Opus/Vorbis decoders emit the encoder's padding at the end; the container
        # header holds the true length (the start is already trimmed by FFmpeg).
        if header > 0 and any(k in fmt for k in ("mp4", "ogg", "matroska")):
            want = int(round(header * rate))
            if want < total <= want + int(0.2 * rate):
                keep = want
        audio = np.empty((len(bufs), keep), dtype=np.float32)
        for c in range(len(bufs)):          # one channel's buffer at a time is let go
            audio[c] = bufs[c][:keep]
            bufs[c] = None
            row = audio[c]
            if not np.all(np.isfinite(row)):
                np.nan_to_num(row, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return audio, rate
    finally:
        container.close()


def _riff_fmt(path: Path | str) -> tuple[int, int] | None:
    """(channels, sample rate) from a RIFF/WAVE ``fmt `` chunk, or None."""
    import struct
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            for _ in range(64):
                ch = fh.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    body = fh.read(8)
                    if len(body) < 8:
                        return None
                    channels, rate = struct.unpack("<HI", body[2:8])
                    return channels, rate
                fh.seek(size + (size & 1), 1)
    except OSError:
        return None
    return None


def _riff_declared_seconds(path: Path | str) -> float | None:
    """Length a RIFF/WAVE header declares (from its ``data`` chunk size), or None.

    FFmpeg quietly decodes what is there when a WAV file was cut short; the header tells
    how long it should have been."""
    import struct
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = byte_rate = 0
            while True:
                ch = fh.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    body = fh.read(size + (size & 1))
                    if len(body) < 16:
                        return None
                    byte_rate, block_align = struct.unpack("<IH", body[8:14])
                elif cid == b"data":
                    if size in (0, 0xFFFFFFFF) or byte_rate <= 0:
                        return None          # streaming writer: size unknown
                    return size / byte_rate
                else:
                    fh.seek(size + (size & 1), 1)
    except OSError:
        return None


def resample(audio: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling of ``(channels, samples)`` or ``(samples,)`` float audio (float32 out).

    Channel by channel through ``soxr.ResampleStream`` in blocks, straight into the output
    array: no transposed or interleaved copy of the whole song."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    x = np.asarray(audio, dtype=np.float32)
    rows = x[None, :] if x.ndim == 1 else x
    n = rows.shape[1]
    cap = int(np.ceil(n * sr_out / sr_in)) + 64
    out = np.empty((rows.shape[0], cap), dtype=np.float32)
    got = 0
    for c in range(rows.shape[0]):
        rs = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality=quality)
        pos = 0
        for s in range(0, max(n, 1), _RESAMPLE_BLOCK):
            blk = np.ascontiguousarray(rows[c, s:s + _RESAMPLE_BLOCK])
            y = rs.resample_chunk(blk, last=s + _RESAMPLE_BLOCK >= n)
            if pos + len(y) > out.shape[1]:
                out = np.concatenate([out, np.empty((out.shape[0], len(y) + 64), np.float32)], axis=1)
            out[c, pos:pos + len(y)] = y
            pos += len(y)
        got = pos
    out = out[:, :got]
    return out[0] if x.ndim == 1 else out


_RESAMPLE_BLOCK = 1 << 18
_IO_BLOCK = 1 << 16


def to_mono(audio: np.ndarray) -> np.ndarray:
    return audio if audio.ndim == 1 else audio.mean(axis=0, dtype=np.float32)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC we wrote ourselves: ``(channels, samples)`` float32 (read in blocks
    straight into the result: no interleaved copy of the whole file)."""
    with sf.SoundFile(str(path)) as f:
        sr, ch, n = int(f.samplerate), f.channels, f.frames
        out = np.empty((ch, n), dtype=np.float32)
        buf = np.empty((_IO_BLOCK, ch), dtype=np.float32)
        pos = 0
        while pos < n:
            got = f.read(min(_IO_BLOCK, n - pos), dtype="float32", always_2d=True, out=buf[: min(_IO_BLOCK, n - pos)])
            if len(got) == 0:
                break
            out[:, pos:pos + len(got)] = got.T
            pos += len(got)
    return (out if pos == n else out[:, :pos]), sr


def write_wav(path: Path | str, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    """Write ``(channels, samples)`` or ``(samples,)``; ``subtype`` PCM_16, PCM_24 or FLOAT.
    Written in blocks (an interleaved copy of one block at a time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = audio[None, :] if audio.ndim == 1 else audio
    tmp = path.with_name(path.name + ".part")
    with sf.SoundFile(str(tmp), "w", samplerate=int(sr), channels=int(x.shape[0]), subtype=subtype,
                      format=_format_for(path)) as f:
        for s in range(0, x.shape[1], _IO_BLOCK):
            f.write(np.ascontiguousarray(x[:, s:s + _IO_BLOCK].T))
    tmp.replace(path)
    return path


def _format_for(path: Path) -> str:
    return {".flac": "FLAC", ".wav": "WAV", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
