"""Speech recognition (faster-whisper, user-brought CTranslate2 model) and voice activity.

``asr`` engine ``faster-whisper``: loads a local CTranslate2 Whisper folder once per process
(through :func:`inference.registry.get_engine`) and transcribes mono audio at any rate.
Nothing is ever downloaded: ``model_path`` must be a folder holding ``model.bin``.

:func:`speech_seconds` measures how much of a clip is voice, cheaply, with the Silero VAD
model that ships inside faster-whisper, combined with a periodicity detector (Silero often
misses sung or synthetic harmonic voices; noise and silence count as zero in both).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import resample, to_mono
from ..context import StageContext
from ..errors import Canceled, PipelineError
from ..registry import get_engine, register

log = logging.getLogger("inference.asr")

ASR_RATE = 16000


@register("asr", "faster-whisper")
class FasterWhisperASR:
    """faster-whisper over a local model folder.

    Options: ``model_path`` (CTranslate2 Whisper folder), ``device`` (``cpu``, ``cuda``,
    ``cuda:1``; default: the pipeline's default device), ``compute_type`` (default ``int8``
    on CPU, ``float16`` on CUDA), ``beam_size`` (5), ``vad_filter`` (False),
    ``cpu_threads`` (0 = library default), ``max_new_tokens`` (None = no limit).
    """

    name = "faster-whisper"
    version = "1"

    def __init__(self, model_path: str | Path | None = None, device: str | None = None,
                 compute_type: str | None = None, beam_size: int = 5, vad_filter: bool = False,
                 cpu_threads: int = 0, max_new_tokens: int | None = None):
        if not model_path:
            raise PipelineError(None, "speech recognition needs a local faster-whisper model: set the "
                                "asr option model_path to a CTranslate2 Whisper folder", code="model_missing")
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise PipelineError(None, f"faster-whisper model folder {path} does not exist", code="model_missing")
        missing = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
        if missing:
            raise PipelineError(None, f"{path} is not a CTranslate2 Whisper model (missing {', '.join(missing)})",
                                code="model_invalid")
        if not ((path / "tokenizer.json").is_file() or (path / "vocabulary.json").is_file()
                or (path / "vocabulary.txt").is_file()):
            raise PipelineError(None, f"{path} has no tokenizer.json or vocabulary file", code="model_invalid")
        if device is None:
            from ..device import default_device
            device = default_device()
        kind, _, index = device.partition(":")
        kind = "cuda" if kind == "cuda" else "cpu"
        if compute_type is None:
            compute_type = "float16" if kind == "cuda" else "int8"
        try:
            from faster_whisper import WhisperModel
            self.model = WhisperModel(str(path), device=kind, device_index=int(index or 0),
                                      compute_type=compute_type, cpu_threads=int(cpu_threads),
                                      local_files_only=True)
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError for bad folders
            raise PipelineError(None, f"could not load the faster-whisper model in {path}: "
                                f"{str(exc).strip()[:300]}", code="model_invalid") from None
        self.model_path = path
        self.device = kind
        self.compute_type = compute_type
        self.beam_size = int(beam_size)
        self.vad_filter = bool(vad_filter)
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one decode at a time per loaded model

    def transcribe(self, audio: np.ndarray, sr: int, *, language: str | None = None,
                   ctx: StageContext | None = None) -> str:
        """Mono or ``(channels, n)`` audio at ``sr`` -> the recognised text (may be empty)."""
        x = resample(to_mono(np.asarray(audio, dtype=np.float32)), int(sr), ASR_RATE)
        if x.size == 0:
            return ""
        language = whisper_language(language)
        if not self.model.model.is_multilingual:
            language = None  # faster-whisper uses "en"
        opts: dict[str, Any] = dict(language=language or None, beam_size=self.beam_size, temperature=0.0,
                                    vad_filter=self.vad_filter, condition_on_previous_text=False)
        if self.max_new_tokens:
            opts["max_new_tokens"] = int(self.max_new_tokens)
        texts: list[str] = []
        with self._lock:
            try:
                segments, _info = self.model.transcribe(x, **opts)
                for seg in segments:  # lazy generator: decoding happens here
                    texts.append(seg.text.strip())
                    if ctx is not None:
                        ctx.check_cancel()
            except (PipelineError, Canceled):
                raise
            except Exception as exc:
                raise PipelineError(ctx.stage if ctx else None, f"speech recognition failed: "
                                    f"{str(exc).strip()[:300]}", code="engine_error") from None
        return " ".join(t for t in texts if t).strip()


def whisper_language(code: str | None) -> str | None:
    """Whisper's code for a language hint; GPT-SoVITS' codes (``all_zh``, ``auto``, ``auto_yue``,
    ``en``, ``ja``, ...) are accepted. None means detect."""
    if not code:
        return None
    code = code.strip().lower()
    if code.startswith("all_"):
        code = code[4:]
    if code.startswith("auto"):
        return None
    return code.split("-")[0].split("_")[0] or None


def get_asr(options: dict | None, ctx: StageContext | None = None) -> FasterWhisperASR:
    """The process-wide ASR engine for ``options`` (errors carry ``ctx``'s stage)."""
    options = dict(options or {})
    name = options.pop("engine", "faster-whisper")
    try:
        return get_engine("asr", name, **options)
    except PipelineError as exc:
        if exc.stage is None and ctx is not None:
            exc.stage = ctx.stage
        raise


def fill_texts(reference_text: str | None, target_text: str | None, *, vocal: np.ndarray, sr: int,
               reference: np.ndarray, ref_sr: int, asr_options: dict | None, ctx: StageContext,
               language: str | None = None, prompt_language: str | None = None,
               required: bool = False) -> tuple[str, str]:
    """Return ``(reference_text, target_text)``, transcribing whichever is missing.

    Without ``asr_options`` missing texts stay empty, unless ``required`` (then a clear error).
    """
    ref = (reference_text or "").strip()
    tgt = (target_text or "").strip()
    if ref and tgt:
        return ref, tgt
    if not asr_options:
        if required:
            missing = [n for n, v in (("reference_text", ref), ("target_text", tgt)) if not v]
            raise PipelineError(ctx.stage, f"{' and '.join(missing)} missing and no speech recognition "
                                "model configured (asr option model_path)", code="missing_text")
        return ref, tgt
    asr = get_asr(asr_options, ctx)
    if not ref:
        ref = asr.transcribe(reference, ref_sr, language=prompt_language, ctx=ctx)
        ctx.info.setdefault("asr", {})["reference_text"] = ref
    if not tgt:
        tgt = asr.transcribe(vocal, sr, language=language, ctx=ctx)
        ctx.info.setdefault("asr", {})["target_text"] = tgt
    if required and not (ref and tgt):
        raise PipelineError(ctx.stage, "speech recognition found no words in the "
                            + ("reference voice" if not ref else "vocal"), code="missing_text")
    return ref, tgt


# --- voice activity -------------------------------------------------------------------------

VAD_RATE = 16000
_FRAME = 0.032  # seconds per periodicity frame (512 samples at 16 kHz, Silero's window)


def _silero_segments(x16: np.ndarray) -> list[tuple[int, int]]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    opts = VadOptions(threshold=0.5, min_speech_duration_ms=120, min_silence_duration_ms=150,
                      speech_pad_ms=0)
    return [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(x16, opts, sampling_rate=VAD_RATE)]


def voiced_frames(x16: np.ndarray, frame: int = 512) -> np.ndarray:
    """Boolean per ``frame`` samples of 16 kHz audio: loud enough, periodic with a pitch in
    60..800 Hz (normalised autocorrelation >= 0.5), and not a single pure tone."""
    n = len(x16) // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = x16[: n * frame].reshape(n, frame).astype(np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    peak = float(rms.max()) if n else 0.0
    loud = (rms > 10 ** (-50 / 20)) & (rms > peak * 10 ** (-35 / 20))
    win = np.hanning(frame)
    spec = np.fft.rfft(frames * win, n=2 * frame, axis=1)
    power = np.abs(spec) ** 2
    ac = np.fft.irfft(power, axis=1)[:, :frame]
    ac0 = ac[:, :1] + 1e-12
    lo, hi = VAD_RATE // 800, VAD_RATE // 60  # lags for 800 Hz .. 60 Hz
    hi = min(hi, frame - 1)
    # Normalise by the window's own autocorrelation so long lags are not penalised.
    wac = np.correlate(win, win, "full")[frame - 1:][: frame]
    norm_ac = (ac / ac0) / (wac / wac[0] + 1e-3)
    periodic = norm_ac[:, lo:hi].max(axis=1) >= 0.5
    # Pure tones: almost all the power in one spectral peak (+-3 bins).
    k = np.argmax(power, axis=1)
    idx = np.clip(k[:, None] + np.arange(-3, 4)[None, :], 0, power.shape[1] - 1)
    top = np.take_along_axis(power, idx, axis=1).sum(axis=1)
    tonal = top / (power.sum(axis=1) + 1e-20) > 0.97
    return loud & periodic & ~tonal


def speech_seconds(audio: np.ndarray, sr: int, *, method: str = "auto") -> float:
    """Seconds of voice in ``audio`` (mono ``(n,)`` or ``(channels, n)``) at ``sr``.

    ``method``: ``silero`` (the Silero VAD inside faster-whisper), ``periodicity`` (energy +
    pitch-periodicity detector, see :func:`voiced_frames`), or ``auto`` (default): the larger
    of the two, because Silero is trained on speech and often scores singing or synthetic
    harmonic voices low. Noise and silence give ~0 with either; a periodic instrument
    (not a pure tone) can count as voice under ``periodicity``/``auto``.
    If Silero cannot run (onnxruntime missing), ``auto`` uses periodicity alone.
    Cost: ~0.4 s per minute of audio (Silero) + ~0.1 s (periodicity) on one CPU core.
    """
    x = np.asarray(audio, dtype=np.float32)
    x = to_mono(x) if x.ndim == 2 else x.reshape(-1)
    if x.size == 0 or not np.any(np.isfinite(x)):
        return 0.0
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    x16 = resample(x, int(sr), VAD_RATE, quality="MQ") if int(sr) != VAD_RATE else x
    if len(x16) < 512 or float(np.max(np.abs(x16))) < 1e-4:
        return 0.0
    # Silero is level-sensitive: bring quiet clips up to a normal speaking level.
    peak = float(np.max(np.abs(x16)))
    if peak < 0.3:
        x16 = x16 * (0.3 / peak)
    silero = periodic = 0.0
    if method in ("auto", "silero"):
        try:
            silero = sum(e - s for s, e in _silero_segments(x16)) / VAD_RATE
        except Exception as exc:  # onnxruntime missing or broken: degrade, do not fail
            if method == "silero":
                raise PipelineError(None, f"Silero VAD is unavailable: {exc}", code="engine_error") from None
            log.warning("Silero VAD unavailable (%s); using the periodicity detector", exc)
    if method in ("auto", "periodicity"):
        v = voiced_frames(x16)
        # Bridge gaps up to 3 frames (~0.1 s) between voiced frames, as syllables have.
        if v.any():
            idx = np.flatnonzero(v)
            gaps = np.diff(idx)
            bridged = int(v.sum() + np.sum(np.where(gaps <= 4, gaps - 1, 0)))
            periodic = bridged * 512 / VAD_RATE
    elif method != "silero":
        raise ValueError(f"unknown speech_seconds method {method!r}")
    return float(min(max(silero, periodic), len(x16) / VAD_RATE))
