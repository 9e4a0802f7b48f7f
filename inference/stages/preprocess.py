"""Stage 1: decode and check the song and the reference voice, resample to the work rate.

Writes ``song.wav`` (the song at ``cfg.work_sample_rate``, its own channel count) and
``reference.wav`` (mono, work rate). Every rejection is an :class:`InputError` naming the
input (``song`` / ``reference_voice``) with a code and a message a user can act on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal as sps

from .. import audio
from ..config import PipelineConfig
from ..context import StageContext
from ..errors import InputError

log = logging.getLogger("inference.preprocess")

SONG, REFERENCE = "song", "reference_voice"
DIGITAL_SILENCE = 1.0 / 65536        # below half a 16-bit step: nothing but zeros
MIN_VOICE_SECONDS = 1.0              # the reference must hold at least this much voice


@dataclass
class Preprocessed:
    song: np.ndarray                 # (channels, samples) float32 at ``sr``
    sr: int
    reference: np.ndarray            # (samples,) float32 mono at ``ref_sr``
    ref_sr: int
    original_sr: int
    original_channels: int
    original_samples: int
    original_duration: float         # seconds
    song_format: str
    reference_duration: float
    reference_voice_seconds: float
    song_path: Path
    reference_path: Path


def _check_header(info: audio.AudioInfo, field: str, cfg: PipelineConfig, max_seconds: float) -> audio.AudioInfo:
    lim = cfg.limits
    if info.sample_rate and not (lim.min_sample_rate <= info.sample_rate <= lim.max_sample_rate):
        raise InputError(field, f"{field} has a sample rate of {info.sample_rate} Hz; supported rates are "
                                f"{lim.min_sample_rate}-{lim.max_sample_rate} Hz", code="unsupported_rate")
    # Header durations can be estimates (MP3) or 0 (unknown: a piped FLAC); the decode measures
    # the real length (bounded by max_seconds). Refuse early only when clearly over.
    if info.duration > max_seconds * 1.1 + 1:
        raise InputError(field, f"{field} is {info.duration:.0f} s long; the limit is {max_seconds:g} s",
                         code="too_long")
    return info


def _decode(path, field: str, cfg: PipelineConfig, max_seconds: float, scratch: Path | None = None
            ) -> tuple[np.ndarray, int, str]:
    """Header checks, then the samples. In a process that opted in (audio.isolate_decoding: the
    service's worker) both happen in a child process with limits, so a decoder that crashes or
    hangs on a hostile file fails this input (corrupt_audio), not the process."""
    isolation = audio.decoding_isolation()
    if isolation is None:
        info = _check_header(audio.probe(path, field), field, cfg, max_seconds)
    try:
        if isolation is None:
            data, sr = audio.decode(path, field, max_seconds=max_seconds)
        else:
            info, data, sr = audio.decode_isolated(path, field, max_seconds=max_seconds,
                                                   scratch=scratch or Path(path).parent, isolation=isolation)
    except InputError as exc:
        if exc.code == "too_long":
            raise InputError(field, f"{field} is longer than the limit of {max_seconds:g} s",
                             code="too_long") from None
        raise
    if isolation is not None:
        _check_header(info, field, cfg, max_seconds)
    lim = cfg.limits
    if not (lim.min_sample_rate <= sr <= lim.max_sample_rate):
        raise InputError(field, f"{field} has a sample rate of {sr} Hz; supported rates are "
                                f"{lim.min_sample_rate}-{lim.max_sample_rate} Hz", code="unsupported_rate")
    return data, sr, info.format


def _check_not_silent(x: np.ndarray, field: str) -> None:
    x2 = x[None, :] if x.ndim == 1 else x
    peak = max((float(np.max(np.abs(x2[:, s:s + (1 << 18)]))) for s in range(0, x2.shape[1], 1 << 18)),
               default=0.0)                     # block by block: no full-length |x| copy
    if peak < DIGITAL_SILENCE:
        raise InputError(field, f"{field} is digital silence (every sample is zero)", code="silent_audio")


# -- voice detection ---------------------------------------------------------------------------

def voice_seconds(x: np.ndarray, sr: int) -> float:
    """Seconds of voiced sound (periodic, 70-500 Hz fundamental, not too quiet) in mono ``x``.

    A fallback voice activity detector that needs no model: the signal is whitened by a
    global linear-prediction filter (so coloured noise loses its slow correlation), then each
    40 ms frame counts as voiced when its energy is within 40 dB of the loudest frames and
    its normalised autocorrelation has a strong peak at a pitch period.
    """
    sr16 = 16000
    y = audio.resample(np.asarray(x, dtype=np.float32), sr, sr16, quality="MQ").astype(np.float64)
    if len(y) < sr16 // 10:
        return 0.0
    # global LPC whitening (order 16)
    order = 16
    r = _autocorr_fft(y, order)
    if r[0] <= 0:
        return 0.0
    r = r.copy()
    r[0] *= 1.0 + 1e-6
    from scipy.linalg import solve_toeplitz
    try:
        a = solve_toeplitz(r[:order], -r[1: order + 1])
    except Exception:
        a = np.zeros(order)
    e = sps.lfilter(np.concatenate([[1.0], a]), [1.0], y)
    frame, hop = 640, 320
    n = 1 + (len(e) - frame) // hop if len(e) >= frame else 0
    if n <= 0:
        return 0.0
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    fr = e[idx] * np.hanning(frame)[None, :]
    raw = y[idx]
    energy = 10 * np.log10(np.mean(raw ** 2, axis=1) + 1e-12)
    loud = np.percentile(energy, 95)
    gate = (energy > loud - 40) & (energy > -60)
    spec = np.fft.rfft(fr, 2 * frame, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :frame]
    ac0 = ac[:, :1] + 1e-12
    lo, hi = sr16 // 500, sr16 // 70
    # normalise for the window's own shrinking overlap
    w = np.hanning(frame)
    wac = np.correlate(w, w, "full")[frame - 1:][:frame]
    nac = (ac / ac0) * (wac[0] / np.maximum(wac, 1e-9))[None, :]
    peak = nac[:, lo:hi].max(axis=1)
    voiced = gate & (peak > 0.45)
    # need at least 3 voiced frames in a row to count (clicks are not voice)
    run = np.convolve(voiced.astype(int), np.ones(3, int), "same") >= 3
    voiced = voiced & (run | np.roll(run, 1) | np.roll(run, -1))
    return float(voiced.sum() * hop / sr16)


def _autocorr_fft(y: np.ndarray, order: int) -> np.ndarray:
    n = len(y)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(y, size)
    return np.fft.irfft(np.abs(f) ** 2, size)[: order + 1]


def speech_seconds(x: np.ndarray, sr: int, ctx: StageContext) -> tuple[float, str]:
    """Seconds of voice in the reference: the ASR engine's VAD (Silero) when it is there and
    working, and our periodicity detector; the larger figure counts (either may miss a voice
    the other finds: Silero is trained on speech, the periodicity test on voiced sound)."""
    ours = voice_seconds(x, sr)
    try:
        from ..engines import asr
        fn = getattr(asr, "speech_seconds", None)
    except Exception:
        fn = None
    if fn is not None:
        try:
            theirs = float(fn(x, sr))
            return max(ours, theirs), f"silero={theirs:.2f}s periodicity={ours:.2f}s"
        except Exception as exc:  # VAD unavailable (no onnxruntime, ...): ours is enough
            log.info("speech_seconds failed (%s); using the periodicity detector", exc)
    return ours, f"periodicity={ours:.2f}s"


# -- the stage ---------------------------------------------------------------------------------

def run(song_path, reference_path, cfg: PipelineConfig, ctx: StageContext) -> Preprocessed:
    lim = cfg.limits
    wsr = int(cfg.work_sample_rate)

    ctx.progress(0.0, "decoding the song")
    song, sr, fmt = _decode(song_path, SONG, cfg, lim.max_song_seconds, ctx.workdir)
    if song.shape[0] > lim.max_channels:
        raise InputError(SONG, f"song has {song.shape[0]} channels; at most {lim.max_channels} are supported "
                               "(mono or stereo)", code="too_many_channels")
    _check_not_silent(song, SONG)
    original = dict(original_sr=sr, original_channels=int(song.shape[0]), original_samples=int(song.shape[1]),
                    original_duration=song.shape[1] / sr)
    ctx.progress(0.3, "resampling the song")
    song = audio.resample(song, sr, wsr)
    ctx.check_cancel()

    ctx.progress(0.5, "decoding the reference voice")
    ref, rsr, _ = _decode(reference_path, REFERENCE, cfg, lim.max_reference_seconds, ctx.workdir)
    ref = audio.to_mono(ref)
    ref_dur = len(ref) / rsr
    if ref_dur < lim.min_reference_seconds:
        raise InputError(REFERENCE, f"reference_voice is {ref_dur:.1f} s long; it must be at least "
                                    f"{lim.min_reference_seconds:g} s of clear speech", code="too_short")
    _check_not_silent(ref, REFERENCE)
    ctx.progress(0.7, "checking the reference for a voice")
    found, how = speech_seconds(ref, rsr, ctx)
    need = min(MIN_VOICE_SECONDS, lim.min_reference_seconds / 2)
    if found < need:
        raise InputError(REFERENCE, f"reference_voice contains no voice we can detect ({found:.1f} s found, "
                                    f"at least {need:g} s needed); upload a clip of the target voice speaking "
                                    "or singing alone", code="no_voice")
    ref = audio.resample(ref, rsr, wsr)
    ctx.check_cancel()

    ctx.progress(0.85, "writing work files")
    song_out = audio.write_wav(ctx.workdir / "song.wav", song, wsr)
    ref_out = audio.write_wav(ctx.workdir / "reference.wav", ref, wsr)
    ctx.info.update({"song_format": fmt, "song_sample_rate": sr, "song_channels": original["original_channels"],
                     "song_seconds": round(original["original_duration"], 4),
                     "reference_seconds": round(ref_dur, 3), "reference_voice": how})
    ctx.progress(1.0)
    return Preprocessed(song=song, sr=wsr, reference=ref, ref_sr=wsr, song_format=fmt,
                        reference_duration=ref_dur, reference_voice_seconds=found,
                        song_path=song_out, reference_path=ref_out, **original)
