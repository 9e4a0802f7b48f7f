"""Converter ``rvc``: RVC v1/v2 voice models (``.pth`` + optional faiss ``.index``), resident in the worker.

Worker-wide resources are loaded once, in the constructor: the content encoder (HuBERT-base /
ContentVec, fairseq ``.pt`` or transformers folder) and, when given, RMVPE. The voice model comes
per job from ``params.model_files`` (``{"model": ".pth", "index": ".index"}``) and is kept in an
LRU of ``cache_size`` loaded models (synthesizer + faiss index + its reconstructed vectors), so
jobs alternating between a few voices do not reload them. Loads are counted in
``inference.registry.load_counts[("rvc-model", path)]``.

The per-job math follows RVC-Project's inference pipeline (``infer/vc/pipeline.py``):

1. The vocal is resampled to 16 kHz, scaled down to a 0.95 peak if louder, high-passed
   (Butterworth order 5 at 48 Hz, zero-phase ``filtfilt``) and reflect-padded by the context
   (``context_seconds``, upstream's ``x_pad``) at both ends.
2. Pitch (models with pitch guidance): RMVPE when loaded (threshold 0.03), else our bundled
   tracker (torchcrepe with the continuity decoder and cleaning of :mod:`..pitch`; with
   ``filter_radius >= 3`` a 3-frame median filter, as upstream does for harvest), one value per
   10 ms. The melody is multiplied by ``2 ** (pitch_shift / 12)``; ``auto_pitch`` then moves it by
   whole octaves (at most 2) toward the target voice's range. RVC checkpoints carry no pitch
   statistics, so the target's range is taken from the job's reference clip: its median F0 raised
   by a fifth (a reference is spoken; singing sits about a fifth above speech, as the ``world``
   converter assumes); without a reference ``auto_pitch`` does nothing and says so. Coarse pitch
   is the mel-scaled F0 mapped to 1..255 and ``nsff0`` the shifted F0 in Hz, as upstream.
   Unvoiced frames stay 0 (classic RVC, and what ``protect`` keys on);
   ``f0_fill_unvoiced=True`` interpolates across them like the newest upstream release.
3. Content features per window (v1: layer 9 + final projection, 256-dim; v2: layer 12,
   768-dim). With an index and ``index_rate > 0`` each frame is replaced by
   ``index_rate * retrieved + (1 - index_rate) * own``, ``retrieved`` being the mean of its 8
   nearest index vectors weighted by ``1 / distance**2``. Features are repeated x2 to 100 frames
   per second; with ``protect < 0.5`` unvoiced frames get ``protect * processed + (1 - protect) *
   unretrieved`` (breaths and consonants keep their own features).
4. The synthesizer turns features + pitch into audio at the model's rate. Its random draws
   (the prior sample and the NSF noise) come from a generator seeded per job (``seed``), so a job
   is reproducible; ``noise_scale`` scales them (0 = deterministic prior mean, no NSF noise).
5. ``rms_mix_rate``: the output's loudness envelope (1 s frames, 0.5 s hop) is moved toward the
   input's: ``out *= rms_in ** (1 - rate) * rms_out ** (rate - 1)`` (1 = keep the model's own).

Long vocals run in windows of about ``window_seconds`` (memory stays flat in the song's length):
each boundary is moved to the quietest 10 ms frame within ``seam_search_seconds`` of its nominal
place (as upstream cuts at quiet points), each window is converted with ``context_seconds`` of
audio on either side, and neighbouring windows are crossfaded linearly over
``crossfade_seconds`` around the boundary. The NSF excitation's phase is the running integral of
the F0 from the start of the synthesizer's input, so a window starting later would restart it at
another phase; each window's first 20 context frames carry the missing fraction of a cycle (a
few Hz added to ``nsff0`` there, in audio that is thrown away), so the sine source runs on
continuously through every seam, as in a single pass.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...context import StageContext
from ...device import default_device, use_half
from ...errors import PipelineError
from ...registry import load_counts, register
from ..base import ConversionParams

log = logging.getLogger("inference.rvc")

VERSION = "1.0"
SR16 = 16000
HOP = 160                      # 10 ms at 16 kHz: one pitch frame = one synthesizer frame
STEP = 2 * HOP                 # one content-encoder frame (20 ms): windows start on this grid
F0_MIN, F0_MAX = 50.0, 1100.0
_MEL_MIN = 1127.0 * math.log(1.0 + F0_MIN / 700.0)
_MEL_MAX = 1127.0 * math.log(1.0 + F0_MAX / 700.0)
PHASE_FRAMES = 20              # context frames that carry a window's phase offset
SINGING_ABOVE_SPEECH = 7.0     # semitones (the same assumption as the world converter)
RETRIEVAL_K = 8
F0_METHODS = ("rmvpe", "crepe")

# Per-job settings (ConversionParams.engine_params) and their defaults: the RVC WebUI's.
DEFAULTS: dict[str, Any] = {
    "index_rate": 0.75,
    "protect": 0.33,
    "rms_mix_rate": 0.25,
    "filter_radius": 3,
    "speaker_id": 0,
    "seed": 0,
    "noise_scale": 1.0,
    "f0_method": None,          # None: the engine's (rmvpe when loaded, else crepe)
    "f0_fill_unvoiced": False,
}
_RANGES = {"index_rate": (0.0, 1.0), "protect": (0.0, 1.0), "rms_mix_rate": (0.0, 1.0),
           "filter_radius": (0, 7), "noise_scale": (0.0, 2.0)}

_HP: tuple | None = None


def _highpass_coeffs():
    global _HP
    if _HP is None:
        from scipy import signal
        _HP = signal.butter(N=5, Wn=48, btype="high", fs=SR16)
    return _HP


def highpass(x16: np.ndarray) -> np.ndarray:
    """Upstream's input filter: 5th-order Butterworth high-pass at 48 Hz, zero-phase (16 kHz)."""
    from scipy import signal
    b, a = _highpass_coeffs()
    if len(x16) <= 3 * max(len(a), len(b)):
        return x16.astype(np.float32)
    return signal.filtfilt(b, a, x16).astype(np.float32)


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """F0 in Hz (0 = unvoiced) -> RVC's coarse pitch: mel-scaled, 1..255 (1 = unvoiced)."""
    mel = 1127.0 * np.log(1.0 + np.asarray(f0, dtype=np.float64) / 700.0)
    pos = mel > 0
    mel[pos] = (mel[pos] - _MEL_MIN) * 254.0 / (_MEL_MAX - _MEL_MIN) + 1.0
    mel[mel <= 1] = 1
    mel[mel > 255] = 255
    return np.rint(mel).astype(np.int64)


def fill_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Linear interpolation across unvoiced frames (the newest upstream release does this)."""
    f0 = np.asarray(f0, dtype=np.float64).copy()
    uv = f0 == 0
    if uv.any() and (~uv).any():
        f0[uv] = np.interp(np.flatnonzero(uv), np.flatnonzero(~uv), f0[~uv])
    return f0


def retrieve(feats: np.ndarray, index, vectors: np.ndarray, k: int = RETRIEVAL_K,
             block: int = 1024) -> np.ndarray:
    """Each row of ``feats`` (frames, dim) -> the mean of its ``k`` nearest index vectors,
    weighted by ``1 / distance**2`` (normalised). Rows with no neighbour keep their own value."""
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    out = np.empty_like(feats)
    for s in range(0, len(feats), block):
        q = feats[s:s + block]
        score, ix = index.search(q, k)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            w = np.square(1.0 / np.maximum(score, 1e-12))
            tot = w.sum(axis=1, keepdims=True)
            w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 0.0).astype(np.float32)
        got = np.einsum("fk,fkd->fd", w, vectors[np.maximum(ix, 0)])
        none = ~(tot[:, 0] > 0) | ~np.isfinite(got).all(axis=1)
        got[none] = q[none]
        out[s:s + block] = got
    return out


def _rms_frames(x: np.ndarray, sr: int) -> np.ndarray:
    """librosa.feature.rms(y, frame_length=sr//2*2, hop_length=sr//2) (centred, zero-padded),
    computed block by block (no frame matrix)."""
    hop = sr // 2
    flen = hop * 2
    n = len(x)
    nb = n // hop + 1                      # blocks [b*hop, (b+1)*hop)
    e = np.zeros(nb + 1)
    for b in range(nb):
        blk = x[b * hop:(b + 1) * hop]
        if len(blk):
            e[b + 1] = float(np.dot(blk.astype(np.float64), blk.astype(np.float64)))
    # frame t covers [t*hop - hop, t*hop + hop) = blocks t-1 and t
    n_frames = 1 + n // hop
    power = (e[0:n_frames] + e[1:n_frames + 1]) / flen
    return np.sqrt(power)


def _interp_linear(vals: np.ndarray, size: int, start: int, stop: int) -> np.ndarray:
    """``torch.nn.functional.interpolate(vals, size, mode="linear")`` (align_corners=False),
    output samples ``start:stop`` only."""
    m = len(vals)
    i = np.arange(start, stop, dtype=np.float64)
    src = np.maximum((i + 0.5) * (m / size) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), m - 1)
    i1 = np.minimum(i0 + 1, m - 1)
    w = src - i0
    return vals[i0] * (1.0 - w) + vals[i1] * w


def mix_rms(src: np.ndarray, src_sr: int, out: np.ndarray, out_sr: int, rate: float,
            block: int = 1 << 18) -> np.ndarray:
    """Upstream's ``change_rms``, in place on ``out``: its loudness envelope moved toward ``src``'s."""
    if rate >= 1.0 or not len(out):
        return out
    r1 = _rms_frames(src, src_sr)
    r2 = _rms_frames(out, out_sr)
    n = len(out)
    for s in range(0, n, block):
        e = min(n, s + block)
        g1 = _interp_linear(r1, n, s, e)
        g2 = np.maximum(_interp_linear(r2, n, s, e), 1e-6)
        out[s:e] *= (np.power(g1, 1.0 - rate) * np.power(g2, rate - 1.0)).astype(np.float32)
    return out


def plan_seams(x16: np.ndarray, window: int, search: int) -> list[int]:
    """Window boundaries (16 kHz samples): ``[0, s1, ..., len]``, the inner ones multiples of
    :data:`STEP` (so every window's content frames fall on the single pass' grid) at the quietest
    20 ms frame within ``search`` samples of evenly spaced places."""
    n = len(x16)
    if n <= window + search:
        return [0, n]
    k = int(math.ceil(n / window))
    spacing = n / k
    n_frames = n // STEP
    sf = max(0, min(search, int(spacing / 4)) // STEP)
    level = np.add.reduceat(np.abs(x16[:n_frames * STEP]), np.arange(0, n_frames * STEP, STEP)) \
        if n_frames else np.zeros(0)
    seams = [0]
    for i in range(1, k):
        t = int(round(i * spacing / STEP))
        lo, hi = max(1, t - sf), min(n_frames - 1, t + sf)
        if hi < lo:
            continue
        j = lo + int(np.argmin(level[lo:hi + 1]))
        if j * STEP > seams[-1]:
            seams.append(j * STEP)
    seams.append(n)
    return seams


@dataclass
class _Voice:
    """One loaded voice model (an LRU entry)."""

    path: Path
    ckpt: Any                # checkpoint.RvcCheckpoint
    net: Any                 # the synthesizer (torch module)
    index_path: Path | None
    index: Any               # faiss index or None
    vectors: np.ndarray | None


def _missing(what: str, path, where: str) -> PipelineError:
    return PipelineError("infer", f"the {what} file {str(path)!r} was not found: {where}", code="model_missing")


@register("converter", "rvc")
class RvcConverter:
    """RVC v1/v2 voice conversion (see the module doc)."""

    name = "rvc"
    version = VERSION

    def __init__(self, content_encoder, rmvpe=None, device: str | None = None, half: bool | None = None,
                 cache_size: int = 2, f0_method: str | None = None, window_seconds: float = 20.0,
                 context_seconds: float = 1.0, crossfade_seconds: float = 0.1,
                 seam_search_seconds: float = 3.0, crepe_model: str | None = None,
                 voicing_threshold: float = 0.3):
        import torch  # noqa: F401  (fail here, not in a job, when torch is broken)

        self.device = str(device or default_device())
        want_half = use_half(self.device) if half is None else bool(half)
        self.half = bool(want_half and self.device.startswith("cuda"))
        if want_half and not self.half:
            log.info("half precision is only used on CUDA; %s runs in float32", self.device)
        self.cache_size = max(1, int(cache_size))
        self.window = max(HOP, int(round(float(window_seconds) * SR16 / HOP)) * HOP)
        self.context = max(0, int(round(float(context_seconds) * SR16 / STEP)) * STEP)
        self.half_fade = max(0, int(round(float(crossfade_seconds) * SR16 / 2 / STEP)) * STEP)
        self.search = max(0, int(round(float(seam_search_seconds) * SR16 / HOP)) * HOP)
        self.crepe_model = crepe_model
        self.voicing_threshold = float(voicing_threshold)

        path = Path(str(content_encoder))
        if not str(content_encoder) or not path.exists():
            raise _missing("content encoder", path, "put the HuBERT-base / ContentVec file (fairseq-format "
                           "hubert_base.pt or a transformers folder) there, or point the rvc converter's "
                           "content_encoder option at it")
        from .content import ContentEncoderError, load_content_encoder
        try:
            self.content = load_content_encoder(path, device=self.device, half=self.half)
        except ContentEncoderError as exc:
            raise PipelineError("infer", f"the content encoder {str(path)!r} cannot be used: {exc}",
                                code="model_invalid") from None
        self.content_path = path
        self.rmvpe = None
        self.rmvpe_path = None
        if rmvpe:
            rpath = Path(str(rmvpe))
            if not rpath.is_file():
                raise _missing("RMVPE", rpath, "put rmvpe.pt there, or leave the rvc converter's rmvpe option "
                               "empty to use the bundled pitch tracker")
            from .rmvpe import RmvpeError, load_rmvpe
            try:
                self.rmvpe = load_rmvpe(rpath, device=self.device, half=self.half)
            except RmvpeError as exc:
                raise PipelineError("infer", f"the RMVPE file {str(rpath)!r} cannot be used: {exc}",
                                    code="model_invalid") from None
            self.rmvpe_path = rpath
        if f0_method is not None and f0_method not in F0_METHODS:
            raise PipelineError("infer", f"unknown f0_method {f0_method!r}; use one of {', '.join(F0_METHODS)}",
                                code="invalid_params")
        if f0_method == "rmvpe" and self.rmvpe is None:
            raise PipelineError("infer", "f0_method 'rmvpe' needs the rvc converter's rmvpe option "
                                "(the path of rmvpe.pt)", code="model_missing")
        self.f0_method = f0_method or ("rmvpe" if self.rmvpe is not None else "crepe")
        self._voices: OrderedDict[tuple, _Voice] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._refs: OrderedDict[str, float] = OrderedDict()
        # Tests: called once per window with the arrays fed to the synthesizer.
        self.on_window: Callable[[dict], None] | None = None

    # -- voice models ------------------------------------------------------------------------
    def voice(self, model_files) -> tuple[_Voice, bool]:
        """The loaded voice model of ``model_files`` and whether it came from the LRU."""
        files = dict(model_files or {})
        model = files.get("model")
        if not model:
            raise PipelineError("infer", "the rvc converter needs a voice model: register an RVC .pth model "
                                "and pick it for the job (model_files['model'])", code="model_missing")
        mpath = Path(str(model))
        if not mpath.is_file():
            raise _missing("voice model", mpath, "register the RVC .pth again or put the file back")
        ipath = Path(str(files["index"])) if files.get("index") else None
        if ipath is not None and not ipath.is_file():
            raise _missing("feature index", ipath, "put the .index file back or register the model without it")
        key = (str(mpath), _stamp(mpath), str(ipath) if ipath else "", _stamp(ipath) if ipath else None)
        with self._lock:
            hit = self._voices.get(key)
            if hit is not None:
                self._voices.move_to_end(key)
                return hit, True
        with self._load_lock:
            with self._lock:       # another thread may have loaded it meanwhile
                hit = self._voices.get(key)
                if hit is not None:
                    self._voices.move_to_end(key)
                    return hit, True
            v = self._load_voice(mpath, ipath)
            with self._lock:
                self._voices[key] = v
                while len(self._voices) > self.cache_size:
                    old_key, old = self._voices.popitem(last=False)
                    log.info("rvc: dropped %s from the model cache", old.path.name)
                    del old
                if self.device.startswith("cuda"):
                    import torch
                    torch.cuda.empty_cache()
            return v, False

    def _load_voice(self, mpath: Path, ipath: Path | None) -> _Voice:
        from .checkpoint import RvcFormatError, build_synthesizer, read_rvc_checkpoint
        t0 = time.perf_counter()
        try:
            ckpt, state = read_rvc_checkpoint(mpath)
        except RvcFormatError as exc:
            raise PipelineError("infer", f"the voice model {str(mpath)!r} is not a usable RVC model: {exc}",
                                code="model_invalid") from None
        net = build_synthesizer(ckpt, state, device=self.device, half=self.half)
        del state
        load_counts[("rvc-model", str(mpath))] += 1
        index = vectors = None
        if ipath is not None:
            index, vectors = self._load_index(ipath, ckpt)
        log.info("rvc: loaded %s (%s, %s Hz, f0=%s%s) in %.2f s", mpath.name, ckpt.version, ckpt.sr, ckpt.f0,
                 f", index {ipath.name} ({len(vectors)} vectors)" if ipath else "", time.perf_counter() - t0)
        return _Voice(mpath, ckpt, net, ipath, index, vectors)

    @staticmethod
    def _load_index(ipath: Path, ckpt) -> tuple[Any, np.ndarray]:
        import faiss
        try:
            index = faiss.read_index(str(ipath))
            vectors = index.reconstruct_n(0, index.ntotal)
        except Exception as exc:
            raise PipelineError("infer", f"the feature index {str(ipath)!r} is not a readable faiss index "
                                         f"({str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__})",
                                code="model_invalid") from None
        if index.ntotal < 1:
            raise PipelineError("infer", f"the feature index {str(ipath)!r} holds no vectors", code="model_invalid")
        if int(index.d) != int(ckpt.feature_dim):
            raise PipelineError("infer", f"the feature index {str(ipath)!r} holds {index.d}-dim vectors but the "
                                         f"voice model {ckpt.path.name!r} ({ckpt.version}) uses {ckpt.feature_dim}-dim "
                                         "features: pick the index trained with this model", code="model_invalid")
        return index, np.ascontiguousarray(vectors, dtype=np.float32)

    def cached_models(self) -> list[str]:
        with self._lock:
            return [k[0] for k in self._voices]

    # -- options -----------------------------------------------------------------------------
    def options(self, params: ConversionParams) -> dict:
        """The job's settings: :data:`DEFAULTS` overridden by ``params.engine_params`` (checked)."""
        opts = dict(DEFAULTS)
        for k, v in dict(params.engine_params or {}).items():
            if k in opts and v is not None:
                opts[k] = v
        try:
            for k in ("index_rate", "protect", "rms_mix_rate", "noise_scale"):
                opts[k] = float(opts[k])
            for k in ("filter_radius", "speaker_id", "seed"):
                opts[k] = int(opts[k])
        except (TypeError, ValueError) as exc:
            raise PipelineError("infer", f"bad rvc setting: {exc}", code="invalid_params") from None
        for k, (lo, hi) in _RANGES.items():
            if not (lo <= opts[k] <= hi) or not math.isfinite(opts[k]):
                raise PipelineError("infer", f"{k} must be between {lo} and {hi} (got {opts[k]})",
                                    code="invalid_params", field=k)
        if opts["speaker_id"] < 0:
            raise PipelineError("infer", "speaker_id must be >= 0", code="invalid_params", field="speaker_id")
        if opts["f0_method"] is not None and opts["f0_method"] not in F0_METHODS:
            raise PipelineError("infer", f"unknown f0_method {opts['f0_method']!r}; use one of "
                                         f"{', '.join(F0_METHODS)}", code="invalid_params", field="f0_method")
        opts["f0_fill_unvoiced"] = bool(opts["f0_fill_unvoiced"])
        return opts

    # -- pitch -------------------------------------------------------------------------------
    def _crepe_f0(self, x16: np.ndarray, progress) -> np.ndarray:
        from .. import pitch as pitchmod
        model = self.crepe_model or pitchmod.default_model(self.device)
        _, f0, per, ch, cp = pitchmod.track_f0(x16, SR16, device=self.device, model=model, hop_s=HOP / SR16,
                                               progress=progress, candidates=3)
        f0, _ = pitchmod.decode_candidates(ch, cp)
        return pitchmod.clean_f0(f0, per, threshold=self.voicing_threshold, hop_s=HOP / SR16)

    def _rmvpe_f0(self, xp: np.ndarray, n_frames: int) -> np.ndarray:
        """RMVPE (threshold 0.03, as upstream); it runs long inputs in windows itself."""
        f = np.asarray(self.rmvpe.f0(np.ascontiguousarray(xp, dtype=np.float32), threshold=0.03), dtype=np.float64)
        return np.pad(f[:n_frames], (0, max(0, n_frames - len(f))))

    def _reference_median(self, ref: np.ndarray, ref_sr: int) -> float | None:
        from ...audio import resample
        ref = np.asarray(ref, dtype=np.float32)
        if ref.ndim > 1:
            ref = ref.mean(axis=0)
        h = hashlib.sha256(f"{ref_sr}:{len(ref)}:{self.f0_method}".encode())
        h.update(np.ascontiguousarray(ref).tobytes())
        key = h.hexdigest()
        with self._lock:
            if key in self._refs:
                self._refs.move_to_end(key)
                return self._refs[key]
        x = resample(ref, int(ref_sr), SR16)
        if self.f0_method == "rmvpe" and self.rmvpe is not None:
            f0 = self._rmvpe_f0(x, len(x) // HOP)
        else:
            f0 = self._crepe_f0(x, None)
        med = float(np.median(f0[f0 > 0])) if (f0 > 0).sum() >= 10 else None
        with self._lock:
            self._refs[key] = med
            while len(self._refs) > 8:
                self._refs.popitem(last=False)
        return med

    # -- conversion --------------------------------------------------------------------------
    def convert(self, vocal: np.ndarray, sr: int, reference: np.ndarray | None, ref_sr: int,
                params: ConversionParams, ctx: StageContext) -> np.ndarray:
        import torch
        from ...audio import resample

        opts = self.options(params)
        voice, cached = self.voice(params.model_files)
        ck = voice.ckpt
        method = opts["f0_method"] or self.f0_method
        if method == "rmvpe" and self.rmvpe is None:
            ctx.warn("f0_method 'rmvpe' was asked for but this worker has no rmvpe.pt; the bundled tracker was used")
            method = "crepe"
        if opts["speaker_id"] >= max(1, int(ck.n_speakers)):
            raise PipelineError("infer", f"speaker_id {opts['speaker_id']} is out of range: the voice model "
                                         f"{voice.path.name!r} has {ck.n_speakers} speaker(s)",
                                code="invalid_params", field="speaker_id")
        timings = {"pitch": 0.0, "content": 0.0, "retrieval": 0.0, "synthesis": 0.0, "post": 0.0}
        use_index = voice.index is not None and opts["index_rate"] > 0
        info = ctx.info
        info.update({"converter": self.name, "converter_version": self.version, "model": voice.path.name,
                     "model_version": ck.version, "model_sr": int(ck.sr), "model_f0": bool(ck.f0),
                     "model_cached": cached, "index": voice.index_path.name if voice.index_path else None,
                     "index_used": bool(use_index), "index_rate": opts["index_rate"], "protect": opts["protect"],
                     "rms_mix_rate": opts["rms_mix_rate"], "filter_radius": opts["filter_radius"],
                     "device": self.device, "half": self.half,
                     "f0_method": (method if ck.f0 else None), "content_encoder": self.content_path.name})

        x = np.nan_to_num(np.asarray(vocal, dtype=np.float32))
        if x.ndim > 1:
            x = x.mean(axis=0)
        n = len(x)
        sr = int(sr)
        if n < int(0.05 * sr) or float(np.max(np.abs(x), initial=0.0)) < 1e-5:
            ctx.warn("the vocal is silent; the converted vocal is silent")
            info["windows"] = 0
            ctx.progress(1.0)
            return np.zeros(n, dtype=np.float32)

        t0 = time.perf_counter()
        x16 = resample(x, sr, SR16) if sr != SR16 else x.copy()
        peak = float(np.max(np.abs(x16))) / 0.95
        if peak > 1:
            x16 /= peak
        x16 = highpass(x16)
        tpad = self.context
        xp = np.pad(x16, (tpad, tpad), mode="reflect") if tpad else x16
        n_frames = len(xp) // HOP
        timings["post"] += time.perf_counter() - t0

        # ---- pitch ---------------------------------------------------------------------------
        coarse = nsf = phase = None
        if ck.f0:
            t0 = time.perf_counter()
            if method == "rmvpe":
                f0 = self._rmvpe_f0(xp, n_frames)
            else:
                f0 = self._crepe_f0(xp, ctx.sub(0.0, 0.15))
                if opts["filter_radius"] >= 3:
                    from scipy.signal import medfilt
                    f0 = medfilt(f0, 3)
            f0 = np.pad(np.asarray(f0, dtype=np.float64)[:n_frames], (0, max(0, n_frames - len(f0))))
            if opts["f0_fill_unvoiced"]:
                f0 = fill_unvoiced(f0)
            ratio = 2.0 ** (float(params.pitch_shift) / 12.0)
            octaves = 0
            voiced = f0 > 0
            src_median = float(np.median(f0[voiced])) * ratio if voiced.any() else None
            if params.auto_pitch:
                ref_median = None
                if reference is not None and len(reference):
                    ref_median = self._reference_median(reference, ref_sr)
                if ref_median is None or src_median is None:
                    ctx.warn("auto_pitch had no reference pitch to aim at (RVC models carry no pitch range; "
                             "the reference clip's is used); the melody was not moved")
                else:
                    target = ref_median * 2.0 ** (SINGING_ABOVE_SPEECH / 12.0)
                    octaves = int(np.clip(np.round(np.log2(target / src_median)), -2, 2))
                    info["reference_median_f0"] = round(ref_median, 1)
            nsf = f0 * ratio * 2.0 ** octaves
            coarse = coarse_pitch(nsf)
            # phase the NSF sine has reached before each frame, in cycles (frame = sr/100 samples)
            phase = np.concatenate([[0.0], np.cumsum(nsf / 100.0)])
            info.update({"pitch_shift": float(params.pitch_shift), "auto_pitch_octaves": octaves,
                         "source_median_f0": round(src_median / ratio, 1) if src_median else None,
                         "voiced_seconds": round(float(voiced.sum()) * HOP / SR16, 2)})
            timings["pitch"] += time.perf_counter() - t0
        else:
            if params.pitch_shift or params.auto_pitch:
                ctx.warn(f"the voice model {voice.path.name!r} has no pitch guidance: pitch_shift and auto_pitch "
                         "have no effect")
            info.update({"pitch_shift": float(params.pitch_shift), "auto_pitch_octaves": 0})
        ctx.progress(0.15)

        # ---- windows -------------------------------------------------------------------------
        seams = plan_seams(x16, self.window, self.search)
        n_win = len(seams) - 1
        info["windows"] = n_win
        tgt = int(ck.sr)
        upp = tgt // 100
        n_tgt = int(len(x16) * tgt // SR16)
        out = np.zeros(n_tgt, dtype=np.float32)
        sid = torch.tensor([opts["speaker_id"]], device=self.device, dtype=torch.long)
        dtype = torch.float16 if self.half else torch.float32
        dev = torch.device(self.device)
        with torch.inference_mode():
            for i in range(n_win):
                h0 = self.half_fade if i > 0 else 0
                h1 = self.half_fade if i < n_win - 1 else 0
                k0, k1 = seams[i] - h0, seams[i + 1] + h1          # kept, unpadded 16 kHz samples
                seg = xp[k0:k1 + 2 * tpad]                          # padded coordinates: + tpad - tpad
                f_start = k0 // HOP
                # content features (50 frames/s)
                t0 = time.perf_counter()
                feats = self.content.extract(torch.from_numpy(np.ascontiguousarray(seg, dtype=np.float32))[None]
                                             .to(dev), ck.version)
                feats = feats.to(dev, dtype)
                _sync(dev)
                if feats.shape[-1] != int(ck.feature_dim):
                    raise PipelineError("infer", f"the content encoder gives {feats.shape[-1]}-dim features but the "
                                                 f"voice model {voice.path.name!r} needs {ck.feature_dim}",
                                        code="model_invalid")
                timings["content"] += time.perf_counter() - t0
                protect = opts["protect"] < 0.5 and ck.f0
                feats0 = feats.clone() if protect else None
                if use_index:
                    t0 = time.perf_counter()
                    got = retrieve(feats[0].float().cpu().numpy(), voice.index, voice.vectors)
                    r = opts["index_rate"]
                    feats = torch.from_numpy(got)[None].to(dev, dtype) * r + (1.0 - r) * feats
                    timings["retrieval"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                feats = feats.repeat_interleave(2, dim=1)           # = interpolate(scale_factor=2), nearest
                p_len = min(len(seg) // HOP, int(feats.shape[1]))
                feats = feats[:, :p_len]
                pitch_t = nsf_t = None
                dbg: dict[str, Any] = {"window": i, "start_frame": f_start, "p_len": p_len}
                if ck.f0:
                    cw = coarse[f_start:f_start + p_len]
                    fw = nsf[f_start:f_start + p_len].astype(np.float64)
                    p_len = min(p_len, len(cw))
                    cw, fw, feats = cw[:p_len], fw[:p_len], feats[:, :p_len]
                    if protect:
                        m = torch.from_numpy(np.where(fw > 0, 1.0, opts["protect"]).astype(np.float32))
                        m = m.to(dev, dtype)[None, :, None]
                        feats = (feats * m + feats0.repeat_interleave(2, dim=1)[:, :p_len] * (1 - m)).to(dtype)
                    fin = fw.copy()
                    k = min(PHASE_FRAMES, tpad // HOP, p_len)
                    delta = float(phase[f_start] % 1.0)
                    if k and f_start > 0 and delta > 1e-9:
                        fin[:k] += delta * 100.0 / k
                    dbg.update({"coarse": cw, "nsff0": fw, "nsff0_fed": fin})
                    pitch_t = torch.from_numpy(cw.astype(np.int64))[None].to(dev)
                    nsf_t = torch.from_numpy(fin.astype(np.float32))[None].to(dev)
                if self.on_window is not None:
                    dbg["feats"] = feats[0].float().cpu().numpy()
                    self.on_window(dbg)
                y = self._synthesize(voice.net, feats, p_len, pitch_t, nsf_t, sid, opts, i)
                timings["synthesis"] += time.perf_counter() - t0
                # place the kept part, crossfading over the seams
                a_t = k0 // HOP * upp
                want = (min(k1, len(x16)) - k0) * tgt // SR16
                piece = y[tpad // HOP * upp: tpad // HOP * upp + want]
                piece = piece[:max(0, min(len(piece), n_tgt - a_t))].copy()
                w = np.ones(len(piece), dtype=np.float32)
                f_in, f_out = 2 * h0 // HOP * upp, 2 * h1 // HOP * upp
                if f_in:
                    w[:f_in] = ((np.arange(f_in) + 0.5) / f_in)[:len(w)]
                if f_out and len(piece) >= f_out:
                    w[-f_out:] = 1.0 - (np.arange(f_out) + 0.5) / f_out
                out[a_t:a_t + len(piece)] += piece * w
                del feats, feats0, y
                ctx.progress(0.15 + 0.8 * (i + 1) / n_win, f"window {i + 1}/{n_win}")

        t0 = time.perf_counter()
        if opts["rms_mix_rate"] < 1.0:
            mix_rms(x16, SR16, out, tgt, opts["rms_mix_rate"])
        top = float(np.max(np.abs(out), initial=0.0))
        if top > 0.99:
            out *= 0.99 / top
        y = resample(out, tgt, sr) if tgt != sr else out
        del out
        y = np.pad(y, (0, max(0, n - len(y))))[:n].astype(np.float32, copy=False)
        timings["post"] += time.perf_counter() - t0
        info["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        ctx.progress(1.0)
        return y

    def _synthesize(self, net, feats, p_len: int, pitch_t, nsf_t, sid, opts: dict, window: int) -> np.ndarray:
        import torch
        dev = torch.device(self.device)
        lengths = torch.tensor([p_len], device=dev, dtype=torch.long)
        with _seeded(opts["seed"], dev), torch.inference_mode(), _noise(opts["noise_scale"]):
            o = net.infer(feats, lengths, pitch_t, nsf_t, sid)
            if isinstance(o, (tuple, list)):
                o = o[0]
            y = o[0, 0].float().cpu().numpy()
        return y


def _stamp(path: Path | None):
    if path is None:
        return None
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch
        torch.cuda.synchronize(dev)


@contextlib.contextmanager
def _seeded(seed: int, dev):
    """The synthesizer's random draws from torch's generator seeded per job and window (its state
    is forked and restored around the call). Reproducible as long as one conversion runs at a time
    in the process (an RQ worker runs one job at a time); two threads converting at once would
    share the generator and their noise would no longer be reproducible (still correct audio)."""
    import torch
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _noise(scale: float):
    """``noise_scale`` != 1: the synthesizer's Gaussian draws (``randn_like``: the prior sample and
    the NSF noise) multiplied by ``scale``, through a torch function mode (thread-local: other
    threads' draws are untouched)."""
    if scale == 1.0:
        return contextlib.nullcontext()
    import torch
    from torch.overrides import TorchFunctionMode

    class _ScaledNoise(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.randn_like or func is torch.randn:
                out = out * scale
            return out

    return _ScaledNoise()
