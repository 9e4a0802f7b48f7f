"""Converter ``gpt-sovits-api``: a resident GPT-SoVITS ``api_v2.py`` server over HTTP.

GPT-SoVITS is text-to-speech: given a reference clip (3..10 s) and its transcript it speaks
``target_text`` in that voice. To make a *cover* the result is then fitted to the input
vocal (:func:`fit_to_vocal`): its active frames are stretched over the input vocal's active
frames (same length, same phrasing and loudness contour) and re-synthesised with WORLD on the
input vocal's melody (F0 x 2^(pitch_shift/12)), so the cover keeps the song's melody and
timing while the timbre comes from GPT-SoVITS.

api_v2 contract used (RVC-Boss/GPT-SoVITS ``api_v2.py``):

- ``GET /set_gpt_weights?weights_path=...`` and ``GET /set_sovits_weights?weights_path=...``:
  200 ``{"message": "success"}``; 400 ``{"message": ..., "Exception": ...}``.
  Called only when the job's model needs other weights than this instance loaded last.
- ``POST /tts`` with JSON ``text, text_lang, ref_audio_path, prompt_text, prompt_lang,
  media_type="wav", streaming_mode=false, text_split_method, batch_size, ...``: 200 with the
  WAV bytes; 400 ``{"message": ..., "Exception": ...}``. ``ref_audio_path`` is a path *on the
  server*: the clip is written to ``share_dir`` (default: the job's scratch folder), which
  must be visible to the server under the same path (same machine or a shared volume).

Options: ``base_url`` (``http://127.0.0.1:9880``), ``timeout`` (seconds for one /tts, 600),
``connect_timeout`` (5), ``models`` (``{model_id: {"gpt_weights": ..., "sovits_weights": ...}}``),
``project_root`` (a GPT-SoVITS folder: models not in ``models`` are found with
:func:`inference.models.resolve_gpt_sovits_model`), ``text_lang`` / ``prompt_lang`` (``en``),
``asr`` (faster-whisper options, to transcribe missing texts), ``tts_options`` (extra /tts
fields, e.g. ``{"top_k": 15, "speed_factor": 1.0}``), ``share_dir``, ``fit`` (``world`` or
``none``: return the TTS audio only length-fitted), ``use_model_reference`` (False: prompt
GPT-SoVITS with the job's reference voice; True: with the model's own clip and text when
its resolution found one, e.g. ``trained/<model_id>/ref.wav`` + ``ref.txt``).
"""
from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import resample, to_mono, write_wav
from ..context import StageContext
from ..errors import PipelineError
from ..registry import register
from .base import ConversionParams

log = logging.getLogger("inference.gpt_sovits_api")

REF_MIN_SECONDS = 3.0    # api_v2 / TTS refuses references outside 3..10 s
REF_MAX_SECONDS = 9.5
FIT_RATE = 24000
FRAME_MS = 5.0
POLL_SECONDS = 0.25


class _HttpError(Exception):
    pass


@register("converter", "gpt-sovits-api")
class GptSovitsApiConverter:
    name = "gpt-sovits-api"
    version = "1"

    def __init__(self, base_url: str = "http://127.0.0.1:9880", timeout: float = 600.0,
                 connect_timeout: float = 5.0, models: dict[str, dict[str, str]] | None = None,
                 project_root: str | None = None, text_lang: str = "en", prompt_lang: str = "en",
                 asr: dict | None = None, tts_options: dict[str, Any] | None = None,
                 share_dir: str | None = None, fit: str = "world", use_model_reference: bool = False):
        import requests
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.models = dict(models or {})
        self.project_root = project_root
        self.text_lang = text_lang
        self.prompt_lang = prompt_lang
        self.asr = asr
        self.tts_options = dict(tts_options or {})
        self.share_dir = Path(share_dir) if share_dir else None
        if fit not in ("world", "none"):
            raise ValueError(f"fit must be 'world' or 'none', not {fit!r}")
        self.fit = fit
        self.use_model_reference = bool(use_model_reference)
        self.session = requests.Session()
        self.loaded: dict[str, str | None] = {"gpt": None, "sovits": None}  # what the server has from us
        self._lock = threading.Lock()  # weight switch + /tts must not interleave between jobs
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpt-sovits-api")

    # -- HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, endpoint: str, ctx: StageContext, **kwargs):
        """One HTTP call, waited for in a worker thread so cancel is checked every 0.25 s."""
        import requests
        url = f"{self.base_url}{endpoint}"
        fut = self._pool.submit(self.session.request, method, url,
                                timeout=(self.connect_timeout, self.timeout), **kwargs)
        t0 = time.monotonic()
        while True:
            try:
                resp = fut.result(timeout=POLL_SECONDS)
                break
            except TimeoutError:
                ctx.check_cancel()  # an abandoned request finishes (and is dropped) in the background
                if time.monotonic() - t0 > self.timeout + self.connect_timeout + 5:
                    raise PipelineError(ctx.stage, f"GPT-SoVITS API {endpoint} timed out after "
                                        f"{self.timeout:g} s", code="timeout") from None
            except requests.ConnectionError as exc:
                self.loaded = {"gpt": None, "sovits": None}  # it may come back restarted, with defaults
                raise PipelineError(ctx.stage, f"GPT-SoVITS API at {self.base_url} is unreachable: "
                                    f"{_reason(exc)}", code="engine_unreachable", transient=True) from None
            except requests.Timeout:
                raise PipelineError(ctx.stage, f"GPT-SoVITS API {endpoint} timed out after {self.timeout:g} s",
                                    code="timeout") from None
            except requests.RequestException as exc:
                raise PipelineError(ctx.stage, f"GPT-SoVITS API {endpoint} request failed: {_reason(exc)}",
                                    code="engine_error") from None
        if resp.status_code != 200:
            raise PipelineError(ctx.stage, f"GPT-SoVITS API {endpoint} failed (HTTP {resp.status_code}): "
                                f"{_server_message(resp)}", code="engine_error")
        return resp

    def _switch(self, kind: str, path: str, ctx: StageContext) -> None:
        if self.loaded[kind] == path:
            return
        self.loaded[kind] = None  # unknown until the server says success
        self._request("GET", f"/set_{kind}_weights", ctx, params={"weights_path": path})
        self.loaded[kind] = path
        ctx.info.setdefault("weights_switched", []).append(kind)

    # -- model -------------------------------------------------------------------------------
    def weights_for(self, model_id: str | None) -> dict[str, Any] | None:
        """``{"gpt_weights", "sovits_weights", "ref_audio", "ref_text"}`` for ``model_id``, or
        None to use whatever the server has loaded (no model id and nothing configured)."""
        if model_id and model_id in self.models:
            entry = self.models[model_id]
            gpt = entry.get("gpt_weights") or entry.get("gpt")
            sovits = entry.get("sovits_weights") or entry.get("sovits")
            if not gpt or not sovits:
                raise PipelineError("infer", f"model {model_id!r} needs gpt_weights and sovits_weights",
                                    code="invalid_model")
            return {"gpt_weights": str(gpt), "sovits_weights": str(sovits),
                    "ref_audio": entry.get("ref_audio"), "ref_text": entry.get("ref_text")}
        if self.project_root:
            from ..models import resolve_gpt_sovits_model
            m = resolve_gpt_sovits_model(self.project_root, model_id)
            return {"gpt_weights": str(m.gpt_weights), "sovits_weights": str(m.sovits_weights),
                    "ref_audio": str(m.ref_audio) if m.ref_audio else None, "ref_text": m.ref_text}
        if model_id:
            raise PipelineError("infer", f"GPT-SoVITS model {model_id!r} is not configured (no entry in "
                                "models and no project_root to search)", code="model_not_found")
        return None

    # -- convert -----------------------------------------------------------------------------
    def convert(self, vocal: np.ndarray, sr: int, reference: np.ndarray, ref_sr: int,
                params: ConversionParams, ctx: StageContext) -> np.ndarray:
        vocal = to_mono(np.asarray(vocal, dtype=np.float32))
        weights = self.weights_for(params.model_id)
        ctx.progress(0.02, "preparing the reference")
        ref_text = params.reference_text
        model_ref = weights.get("ref_audio") if (weights and self.use_model_reference) else None
        if model_ref:  # the model's own prompt clip, already on the server's disk
            from ..audio import decode
            clip, clip_sr = decode(model_ref, "reference_voice")
            clip, clipped = to_mono(clip), False
            ref_text = weights.get("ref_text") or None
        else:
            clip_sr = ref_sr
            clip, clipped = reference_clip(to_mono(np.asarray(reference, dtype=np.float32)), ref_sr)
        if clipped and ref_text:
            ctx.warn("the reference voice was cut to 9.5 s for GPT-SoVITS; its text was transcribed again"
                     if self.asr else "the reference voice was cut to 9.5 s for GPT-SoVITS; the given "
                     "reference text may not match the clip")
            if self.asr:
                ref_text = None
        from .asr import fill_texts
        ctx.progress(0.05, "texts")
        ref_text, target_text = fill_texts(ref_text, params.target_text, vocal=vocal, sr=sr, reference=clip,
                                           ref_sr=clip_sr, asr_options=self.asr, ctx=ctx,
                                           language=self.text_lang, prompt_language=self.prompt_lang)
        if not target_text:
            raise PipelineError(ctx.stage, "GPT-SoVITS needs the words to sing: give target_text or "
                                "configure speech recognition (asr model_path)", code="missing_text")
        body = {"text_split_method": "cut5", "batch_size": 1, "speed_factor": 1.0, "seed": -1,
                "parallel_infer": True, "split_bucket": True}
        body.update(self.tts_options)
        body.update({"text": target_text, "text_lang": self.text_lang, "prompt_text": ref_text or "",
                     "prompt_lang": self.prompt_lang, "media_type": "wav", "streaming_mode": False})
        ctx.progress(0.15, "synthesising")
        ref_path = None
        try:
            if model_ref:
                body["ref_audio_path"] = str(model_ref)
            else:
                folder = self.share_dir or ctx.tmpdir
                folder.mkdir(parents=True, exist_ok=True)
                ref_path = (folder / f"gsv-ref-{time.time_ns()}.wav").resolve()
                write_wav(ref_path, clip, clip_sr, subtype="PCM_16")
                body["ref_audio_path"] = str(ref_path)
            with self._lock:
                if weights is not None:
                    self._switch("gpt", weights["gpt_weights"], ctx)
                    self._switch("sovits", weights["sovits_weights"], ctx)
                resp = self._request("POST", "/tts", ctx, json=body)
        finally:
            if ref_path is not None and self.share_dir is not None:
                ref_path.unlink(missing_ok=True)
        tts, tts_sr = _decode_wav(resp.content, ctx)
        ctx.progress(0.7, "fitting to the melody")
        if self.fit == "world":
            out = fit_to_vocal(tts, tts_sr, vocal, sr, pitch_shift=params.pitch_shift,
                               auto_pitch=params.auto_pitch, ctx=ctx)
        else:
            out = resample(tts, tts_sr, sr)
            out = np.pad(out, (0, max(0, len(vocal) - len(out))))[: len(vocal)]
        ctx.info.update({"engine": self.name, "base_url": self.base_url, "model_id": params.model_id,
                         "tts_seconds": round(len(tts) / tts_sr, 3), "target_text": target_text,
                         "gpt_weights": weights and weights["gpt_weights"],
                         "sovits_weights": weights and weights["sovits_weights"]})
        ctx.progress(1.0)
        return out.astype(np.float32, copy=False)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "Connection reset"):
        if marker in text:
            return marker
    return text[:200] or exc.__class__.__name__


def _server_message(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        return (resp.text or "").strip()[:500] or "(empty response)"
    if isinstance(data, dict):
        parts = [str(data.get(k)) for k in ("message", "Exception", "detail") if data.get(k)]
        if parts:
            return ": ".join(parts)[:500]
    return str(data)[:500]


def _decode_wav(content: bytes, ctx: StageContext) -> tuple[np.ndarray, int]:
    import soundfile as sf
    try:
        data, rate = sf.read(io.BytesIO(content), dtype="float32", always_2d=True)
    except Exception as exc:
        raise PipelineError(ctx.stage, f"GPT-SoVITS API returned audio that is not a WAV file ({exc})",
                            code="bad_output") from None
    x = data.mean(axis=1).astype(np.float32)
    if x.size == 0 or not np.any(np.abs(x) > 1e-5):
        raise PipelineError(ctx.stage, "GPT-SoVITS API returned silence", code="bad_output")
    return np.nan_to_num(x), int(rate)


def reference_clip(reference: np.ndarray, sr: int) -> tuple[np.ndarray, bool]:
    """The loudest ``REF_MAX_SECONDS`` window of ``reference`` (api_v2 refuses > 10 s), padded
    with silence to ``REF_MIN_SECONDS`` when shorter. Returns ``(clip, was_cut)``."""
    n_max = int(REF_MAX_SECONDS * sr)
    x = reference
    cut = False
    if len(x) > n_max:
        hop = max(1, sr // 100)
        e = np.add.reduceat(x.astype(np.float64) ** 2, np.arange(0, len(x), hop))
        w = n_max // hop
        sums = np.convolve(e, np.ones(w), mode="valid")
        start = int(np.argmax(sums)) * hop
        x = x[start: start + n_max]
        cut = True
    n_min = int((REF_MIN_SECONDS + 0.2) * sr)
    if len(x) < n_min:
        x = np.pad(x, (0, n_min - len(x)))
    return x.astype(np.float32, copy=False), cut


def _frame_rms(x: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    pad = np.pad(x, (hop, hop + n_frames * hop))
    idx = (np.arange(n_frames) * hop)[:, None] + np.arange(2 * hop)[None, :]
    return np.sqrt(np.mean(pad[idx] ** 2, axis=1) + 1e-12)


def _active(rms: np.ndarray, f0: np.ndarray, fill_frames: int) -> np.ndarray:
    db = 20 * np.log10(rms + 1e-12)
    act = ((db > db.max() - 40) & (db > -60)) | (f0 > 0)
    if act.any() and fill_frames > 0:  # close short gaps (stops inside words)
        idx = np.flatnonzero(act)
        for a, b in zip(idx[:-1], idx[1:]):
            if 1 < b - a <= fill_frames:
                act[a:b] = True
    return act


def fit_to_vocal(tts: np.ndarray, tts_sr: int, vocal: np.ndarray, sr: int, *, pitch_shift: float = 0.0,
                 auto_pitch: bool = False, ctx: StageContext | None = None) -> np.ndarray:
    """Fit TTS audio to ``vocal``: same length and rate, its timing, loudness and melody.

    WORLD analysis of both at 24 kHz (dio + stonemask F0, cheaptrick envelope, d4c
    aperiodicity). The TTS's active frames are spread in order over the vocal's active frames
    (a monotonic time map), then resynthesised with the vocal's F0 x 2^(pitch_shift/12)
    (``auto_pitch``: plus whole octaves toward the TTS voice's own range); frames where the
    vocal is silent stay silent; finally the loudness follows the vocal's frame RMS.
    """
    import pyworld

    fs = FIT_RATE
    v = resample(to_mono(vocal), sr, fs).astype(np.float64)
    t = resample(to_mono(tts), tts_sr, fs).astype(np.float64)
    if ctx:
        ctx.check_cancel()
    f0_v, tv = pyworld.dio(v, fs, f0_floor=60.0, f0_ceil=1100.0, frame_period=FRAME_MS)
    f0_v = pyworld.stonemask(v, f0_v, tv, fs)
    f0_t, tt = pyworld.dio(t, fs, f0_floor=60.0, f0_ceil=1100.0, frame_period=FRAME_MS)
    f0_t = pyworld.stonemask(t, f0_t, tt, fs)
    if ctx:
        ctx.check_cancel()
    sp_t = pyworld.cheaptrick(t, f0_t, tt, fs)
    ap_t = pyworld.d4c(t, f0_t, tt, fs)
    if ctx:
        ctx.check_cancel()
    hop = int(fs * FRAME_MS / 1000)
    rms_v = _frame_rms(v, hop, len(f0_v))
    rms_t = _frame_rms(t, hop, len(f0_t))
    act_v = _active(rms_v, f0_v, fill_frames=int(60 / FRAME_MS))
    act_t = _active(rms_t, f0_t, fill_frames=int(60 / FRAME_MS))
    n_out = len(vocal)
    if not act_v.any() or not act_t.any():
        return np.zeros(n_out, dtype=np.float32)
    shift = float(pitch_shift)
    voiced_v, voiced_t = f0_v > 0, f0_t > 0
    if auto_pitch and voiced_v.any() and voiced_t.any():
        octaves = round(float(np.log2(np.median(f0_t[voiced_t]) / (np.median(f0_v[voiced_v]) * 2 ** (shift / 12)))))
        shift += 12 * octaves
    idx_v = np.flatnonzero(act_v)
    idx_t = np.flatnonzero(act_t)
    src = idx_t[np.minimum((np.arange(len(idx_v)) * len(idx_t)) // len(idx_v), len(idx_t) - 1)]
    n = len(f0_v)
    floor = float(np.min(sp_t)) * 1e-3 + 1e-16
    sp = np.full((n, sp_t.shape[1]), floor)
    ap = np.ones((n, ap_t.shape[1]))
    f0 = np.zeros(n)
    # Sung (voiced) frames take the speech's voiced frames (its vowels) in order, so vowels are
    # held where the singer holds notes; the rest follow the overall map.
    sung = act_v & voiced_v
    if sung.any() and voiced_t.any():
        i_s, i_t = np.flatnonzero(sung), np.flatnonzero(voiced_t & act_t)
        if len(i_t):
            pos = np.searchsorted(idx_v, i_s)
            src[pos] = i_t[np.minimum((np.arange(len(i_s)) * len(i_t)) // len(i_s), len(i_t) - 1)]
    sp[idx_v] = sp_t[src]
    ap[idx_v] = ap_t[src]
    f0[idx_v] = np.where(voiced_v[idx_v], f0_v[idx_v] * 2 ** (shift / 12), 0.0)
    # A sung frame is voiced even where the speech had a consonant: cap the aperiodicity of
    # voiced output frames at the TTS voice's typical voiced aperiodicity.
    if voiced_t.any():
        cap = np.median(ap_t[voiced_t], axis=0)
        on = f0 > 0
        ap[on] = np.minimum(ap[on], cap[None, :])
    y = pyworld.synthesize(np.ascontiguousarray(f0), np.ascontiguousarray(sp), np.ascontiguousarray(ap),
                           fs, FRAME_MS)
    if ctx:
        ctx.check_cancel()
    # Loudness follows the vocal: per-frame gain, smoothed over ~30 ms, at most +-30 dB.
    m = min(len(y) // hop, n)
    rms_y = _frame_rms(y, hop, m)
    k = np.ones(6) / 6
    gain = np.convolve(rms_v[:m], k, "same") / (np.convolve(rms_y, k, "same") + 1e-9)
    gain = np.clip(gain, 0.0, 10 ** (30 / 20)) * act_v[:m]
    g = np.interp(np.arange(len(y)), np.arange(m) * hop + hop / 2, gain)
    y = y * g
    out = resample(y.astype(np.float32), fs, sr)
    out = np.pad(out, (0, max(0, n_out - len(out))))[:n_out]
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return np.nan_to_num(out).astype(np.float32)
