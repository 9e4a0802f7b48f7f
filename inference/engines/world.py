"""Converter ``world``: singing voice conversion by WORLD analysis/resynthesis (no downloaded weights).

How it works (all on a ``work_rate`` of at most 24 kHz; above it the input's own high band is
kept, see below):

1. **Pitch**: torchcrepe (:mod:`.pitch`, ``tiny`` on CPU, ``full`` on CUDA) on the vocal at a
   10 ms hop, periodicity-gated, octave blips fixed and median-smoothed, then refined on WORLD's
   5 ms grid with StoneMask. The melody is multiplied by ``2 ** (pitch_shift / 12)``;
   ``auto_pitch`` then moves it by whole octaves toward the reference's range.
   **Voicing gate** (:mod:`.voicing`): crepe hears a pitch in the accompaniment that leaks into
   a separated stem, so a frame stays sung only where swift-f0's voice confidence or Silero
   VAD's speech probability agrees and the frame is within ``gate_level_db`` of the loud frames
   around it; the frames it overrules are synthesised as breath (aperiodic) ``gated_db`` down.
2. **Analysis** per chunk (chunks cut at quiet points, processed on a thread pool: pyworld
   releases the GIL): CheapTrick envelope (5 ms), D4C aperiodicity (10 ms, interpolated).
3. **Timbre**: each envelope is frequency-warped by a vocal-tract-length factor (the one under
   which the singer's voiced frames lie nearest to the reference's frames), its mel-cepstrum
   normalised to the reference's mean/variance, and voiced frames are replaced by the average
   of their ``k`` nearest reference frames (kNN-VC style, on mel-cepstra; ``knn_weight`` < 1
   blends). Unvoiced frames get the warp and the mean shift. The singer's loudness is kept.
4. **Synthesis** per chunk with WORLD, crossfaded; the input's band above ``work_rate / 2``
   (breath and sibilance "air") is added back; samples where the input was silent stay silent.

The reference's analysis is cached in the instance, keyed by a hash of its samples, so a
worker process reuses it between jobs (``ctx.info["reference_cached"]``).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from ..context import StageContext
from ..device import cpu_threads, default_device
from ..errors import Canceled, InputError
from ..registry import register
from .base import ConversionParams
from . import pitch as pitchmod

log = logging.getLogger("inference.world")

VERSION = "1.0"
FRAME_MS = 5.0
N_MEL = 96            # points of the mel-spaced log-envelope grid
N_CEP = 40            # mel-cepstral coefficients kept
N_MATCH = 13          # coefficients 1..N_MATCH-1 used to find neighbours (and the warp)
WARP_RANGE = (0.8, 1.25)   # vocal-tract-length warp factors searched
WARP_SHRINK = 1.0          # exponent on the estimated factor (pull toward no warp)
WARP_PRIOR = 0.0           # penalty on log(warp)^2 (pulls toward no warp)
SMOOTH_FRAMES = 1          # temporal smoothing of the envelope correction (1 = none)
SINGING_ABOVE_SPEECH = 7.0  # semitones: a voice sings roughly a fifth above its speaking pitch
STATS_FRAMES = 3000         # loud voiced frames sampled for the warp and the cepstral statistics


def _pyworld():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation warning on import
        import pyworld
    return pyworld


def _mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def _imel(m):
    return 700.0 * np.expm1(np.asarray(m, dtype=np.float64) / 1127.0)


@dataclass
class _Grid:
    """Linear FFT bins <-> mel grid <-> mel-cepstrum for one (rate, fft size)."""

    rate: int
    n_bins: int

    def __post_init__(self):
        from scipy.fft import dct
        self._dct = dct
        self.freqs = np.linspace(0, self.rate / 2, self.n_bins)
        self.mel_freqs = _imel(np.linspace(_mel(50.0), _mel(self.rate / 2), N_MEL))
        # bins -> mel grid (linear interpolation matrix, n_bins x N_MEL)
        self.to_mel = _interp_matrix(self.freqs, self.mel_freqs)
        # mel grid -> bins
        self.from_mel = _interp_matrix(self.mel_freqs, self.freqs)

    def mcep(self, logsp: np.ndarray) -> np.ndarray:
        return self._dct(logsp @ self.to_mel, type=2, norm="ortho", axis=-1)[..., :N_CEP]

    def cep_to_bins(self, cep: np.ndarray) -> np.ndarray:
        from scipy.fft import idct
        full = np.zeros(cep.shape[:-1] + (N_MEL,))
        full[..., :cep.shape[-1]] = cep
        return idct(full, type=2, norm="ortho", axis=-1) @ self.from_mel

    def warp_index(self, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gather indices/weights for ``out(f) = in(f / alpha)`` on the bin axis."""
        src = np.clip(self.freqs / alpha, 0, self.freqs[-1]) / self.freqs[-1] * (self.n_bins - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, self.n_bins - 1)
        return i0, i1, src - i0

    def warp(self, logsp: np.ndarray, alpha: float) -> np.ndarray:
        if abs(alpha - 1.0) < 1e-6:
            return logsp
        i0, i1, w = self.warp_index(alpha)
        return logsp[..., i0] * (1 - w) + logsp[..., i1] * w


def _interp_matrix(x_from: np.ndarray, x_to: np.ndarray) -> np.ndarray:
    """Matrix M with ``values_on_x_from @ M == np.interp(x_to, x_from, values)``."""
    m = np.zeros((len(x_from), len(x_to)))
    for j, x in enumerate(x_to):
        i = int(np.clip(np.searchsorted(x_from, x) - 1, 0, len(x_from) - 2))
        w = float(np.clip((x - x_from[i]) / (x_from[i + 1] - x_from[i]), 0.0, 1.0))
        m[i, j] += 1 - w
        m[i + 1, j] += w
    return m


@dataclass
class _Reference:
    key: str
    median_f0: float
    voiced_seconds: float
    mean_logsp: np.ndarray   # mean voiced log envelope (bins)
    mcep: np.ndarray         # (frames, N_CEP) voiced frames
    mu: np.ndarray
    sd: np.ndarray
    seconds: float           # analysis wall time


def _frame_level_db(x: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    """RMS level (dBFS) of 2*hop windows centred on each frame."""
    # energy of each hop-long block (block j covers samples [(j-1)*hop, j*hop)), no padded copy
    nblk = n_frames + 2
    e = np.zeros(nblk)
    m = min(len(x) // hop, nblk - 1)
    fr = x[: m * hop].reshape(m, hop)
    for s in range(0, m, 8192):
        blk = fr[s:s + 8192]
        e[1 + s: 1 + s + len(blk)] = np.einsum("ij,ij->i", blk, blk, dtype=np.float64) / hop
    tail = x[m * hop:(m + 1) * hop]
    if len(tail) and m + 1 < nblk:
        e[m + 1] = float(np.dot(tail.astype(np.float64), tail.astype(np.float64))) / hop
    e2 = 0.5 * (e[:-1] + e[1:])  # window [i*hop - hop, i*hop + hop)
    return 10 * np.log10(e2[:n_frames] + 1e-20)


def _to_grid(f0_hop: np.ndarray, n_frames: int, hop_s: float) -> np.ndarray:
    """Clean tracker F0 (0 = unvoiced, one value per ``hop_s``) -> WORLD's 5 ms grid."""
    t_src = np.arange(len(f0_hop)) * hop_s
    t = np.arange(n_frames) * FRAME_MS / 1000
    voiced = f0_hop > 0
    if not voiced.any():
        return np.zeros(n_frames)
    idx = np.clip(np.round(t / hop_s).astype(int), 0, len(f0_hop) - 1)
    vmask = voiced[idx]
    logf = np.interp(t, t_src[voiced], np.log(f0_hop[voiced]))
    return np.where(vmask, np.exp(logf), 0.0)


@register("converter", "world")
class WorldConverter:
    """Source-filter singing voice conversion toward a reference speaker (see module doc)."""

    name = "world"
    version = VERSION

    def __init__(self, work_rate: int = 24000, k: int = 4, knn_weight: float = 1.0,
                 chunk_seconds: float = 8.0, workers: int | None = None, f0_model: str | None = None,
                 voicing_threshold: float = 0.3, refine_f0: bool = True, cache_size: int = 8,
                 f0_hop_s: float | None = None, isolated_unvoiced_db: float = -12.0,
                 breath_window_s: float = 0.5, f0_decode: str = "continuity",
                 decode_options: dict | None = None, stats_db: float = 45.0,
                 voicing_gate: str = "swift", gate_threshold: float = 0.5, gate_vad: float | None = 0.5,
                 gate_level_db: float | None = 18.0, gate_level_spread: float = 0.6, gate_level_min_db: float = 10.0,
                 gate_smooth_s: float = 0.08, gated_db: float = -12.0, gate_bridge_s: float = 0.03):
        self.work_rate = int(work_rate)
        self.k = int(k)
        self.knn_weight = float(knn_weight)
        self.chunk_seconds = float(chunk_seconds)
        self.workers = int(workers) if workers else max(1, min(4, cpu_threads()))
        self.f0_model = f0_model
        self.voicing_threshold = float(voicing_threshold)
        self.refine_f0 = bool(refine_f0)
        self.cache_size = int(cache_size)
        # the tracker runs at 20 ms on a CPU (half the cost; StoneMask refines on the 5 ms grid)
        self.f0_hop_s = float(f0_hop_s) if f0_hop_s else None
        self.isolated_unvoiced_db = float(isolated_unvoiced_db)
        self.breath_window_s = float(breath_window_s)
        self.f0_decode = str(f0_decode)   # "continuity" (pitchmod.decode_candidates) or "argmax"
        self.decode_options = dict(decode_options or {})
        self.stats_db = float(stats_db)   # frames for the warp/statistics: within this of the loudest
        # voicing gate (see .voicing): a frame of the vocal is sung only when the tracker finds a
        # pitch AND (swift-f0's voice confidence, median over gate_smooth_s, is >= gate_threshold
        # OR Silero VAD's speech probability is >= gate_vad) AND the frame is within
        # gate_level_db of the stem's loud frames nearby (see _gate); None switches a part off;
        # "none" = the tracker's voicing alone (the leak between phrases is then sung)
        self.voicing_gate = str(voicing_gate)
        self.gate_threshold = float(gate_threshold)
        self.gate_vad = None if gate_vad is None else float(gate_vad)
        self.gate_level_db = None if gate_level_db is None else float(gate_level_db)
        # ... tightened to gate_level_spread x the stem's level spread (90th - 10th percentile of
        # the frames against their loud neighbours), at least gate_level_min_db: a stem whose
        # gaps sit close to its phrases holds a loud leak
        self.gate_level_spread = float(gate_level_spread)
        self.gate_level_min_db = float(gate_level_min_db)
        self.gate_smooth_s = float(gate_smooth_s)
        self.gated_db = float(gated_db)   # level of the frames the gate turned to breath
        self.gate_bridge_s = float(gate_bridge_s)   # holes up to this long inside a sung run stay sung
        self._refs: OrderedDict[str, _Reference] = OrderedDict()
        self._lock = threading.Lock()
        self._grids: dict[tuple[int, int], _Grid] = {}
        self.reference_analyses = 0  # how many references were analysed (tests)

    # -- helpers -------------------------------------------------------------------------------
    def _grid(self, rate: int, n_bins: int) -> _Grid:
        g = self._grids.get((rate, n_bins))
        if g is None:
            g = self._grids[(rate, n_bins)] = _Grid(rate, n_bins)
        return g

    def _rate(self, sr: int) -> int:
        return int(min(int(sr), self.work_rate))

    def _f0(self, x: np.ndarray, sr: int, device: str, progress) -> tuple[np.ndarray, float]:
        """Clean melody (0 = unvoiced) and its hop in seconds."""
        model = self.f0_model or pitchmod.default_model(device)
        hop = self.f0_hop_s or (0.01 if str(device).startswith("cuda") else 0.02)
        if self.f0_decode == "continuity":
            _, f0, per, ch, cp = pitchmod.track_f0(x, sr, device=device, model=model, hop_s=hop,
                                                   progress=progress, candidates=3)
            f0, _ = pitchmod.decode_candidates(ch, cp, **self.decode_options)   # voicing: the strongest peak
        else:
            _, f0, per = pitchmod.track_f0(x, sr, device=device, model=model, hop_s=hop, progress=progress)
        return pitchmod.clean_f0(f0, per, threshold=self.voicing_threshold, hop_s=hop), hop

    # -- reference -----------------------------------------------------------------------------
    def _reference(self, ref: np.ndarray, ref_sr: int, device: str, progress) -> tuple[_Reference, bool]:
        from ..audio import resample
        ref = np.asarray(ref, dtype=np.float32)
        if ref.ndim > 1:
            ref = ref.mean(axis=0)
        rate = self._rate(ref_sr)
        h = hashlib.sha256()
        h.update(f"{ref_sr}:{rate}:{len(ref)}:{self.f0_model}:{self.voicing_threshold}".encode())
        h.update(np.ascontiguousarray(ref).tobytes())
        key = h.hexdigest()
        with self._lock:
            hit = self._refs.get(key)
            if hit is not None:
                self._refs.move_to_end(key)
                return hit, True
        t0 = time.perf_counter()
        pw = _pyworld()
        x = resample(ref, int(ref_sr), rate).astype(np.float64)
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if peak < 1e-4:
            raise InputError("reference_voice", "the reference voice is silent", code="no_voice", stage="infer")
        f0c, f0hop = self._f0(x, rate, device, lambda f: progress(0.7 * f))
        n_frames = int(len(x) / rate * 1000 / FRAME_MS) + 1
        f0 = _to_grid(f0c, n_frames, f0hop)
        t = np.arange(n_frames) * FRAME_MS / 1000
        if self.refine_f0:
            f0 = _stonemask(pw, x, f0, t, rate)
        sp = pw.cheaptrick(x, f0, t, rate)
        progress(0.95)
        voiced = f0 > 0
        level = _frame_level_db(x, int(rate * FRAME_MS / 1000), n_frames)
        voiced &= level > level.max() - 45
        if voiced.sum() * FRAME_MS / 1000 < 0.5:
            raise InputError("reference_voice", "no voice found in the reference recording "
                             "(it needs a few seconds of clear speech or singing)", code="no_voice", stage="infer")
        logsp = np.log(np.maximum(sp[voiced], 1e-16))
        grid = self._grid(rate, sp.shape[1])
        mc = grid.mcep(logsp)
        r = _Reference(key=key, median_f0=float(np.median(f0[voiced])),
                       voiced_seconds=float(voiced.sum() * FRAME_MS / 1000), mean_logsp=logsp.mean(axis=0),
                       mcep=mc.astype(np.float32), mu=mc.mean(axis=0), sd=mc.std(axis=0) + 1e-6,
                       seconds=time.perf_counter() - t0)
        with self._lock:
            self._refs[key] = r
            self.reference_analyses += 1
            while len(self._refs) > self.cache_size:
                self._refs.popitem(last=False)
        progress(1.0)
        return r, False

    # -- main ----------------------------------------------------------------------------------
    def convert(self, vocal: np.ndarray, sr: int, reference: np.ndarray, ref_sr: int,
                params: ConversionParams, ctx: StageContext) -> np.ndarray:
        from ..audio import resample
        t_start = time.perf_counter()
        cpu_start = time.process_time()
        pw = _pyworld()
        vocal = np.asarray(vocal, dtype=np.float32)
        if vocal.ndim > 1:
            vocal = vocal.mean(axis=0)
        vocal = np.nan_to_num(vocal)
        n = len(vocal)
        sr = int(sr)
        device = getattr(ctx, "device", None) or default_device()
        rate = self._rate(sr)
        info = ctx.info
        info.update({"converter": self.name, "converter_version": self.version, "work_rate": rate,
                     "f0_model": f"torchcrepe {self.f0_model or pitchmod.default_model(device)}",
                     "device": device})

        # progress plan: reference 0-0.15, pitch 0.15-0.45, voicing gate 0.45-0.5, analysis 0.5-0.8,
        # map 0.8-0.85, synth -1.0
        ref, cached = self._reference(reference, ref_sr, device, ctx.sub(0.0, 0.15))
        info.update({"reference_cached": cached, "reference_median_f0": round(ref.median_f0, 1),
                     "reference_voiced_seconds": round(ref.voiced_seconds, 2)})
        ctx.progress(0.15)

        silent = np.zeros(n, dtype=np.float32)
        if n < int(0.1 * sr) or float(np.max(np.abs(vocal), initial=0.0)) < 1e-4:
            ctx.warn("the vocal stem is silent; the converted vocal is silent")
            info["voiced_seconds"] = 0.0
            ctx.progress(1.0)
            return silent

        # float32 at the work rate; each chunk goes to float64 only while pyworld works on it
        x = resample(vocal, sr, rate) if rate != sr else vocal.astype(np.float32)
        cpu_ref = time.process_time()
        f0c, f0hop = self._f0(x, rate, device, ctx.sub(0.15, 0.45))
        hop = int(round(rate * FRAME_MS / 1000))
        n_frames = len(x) // hop + 1
        f0 = _to_grid(f0c, n_frames, f0hop)
        del f0c
        level = _frame_level_db(x, hop, n_frames)
        gated = self._gate(x, rate, f0, level, info, ctx.sub(0.45, 0.5))
        if gated is not None:
            f0[gated] = 0.0
        info["cpu_seconds_f0"] = round(time.process_time() - cpu_ref, 3)
        voiced_all = f0 > 0
        voiced_s = float(voiced_all.sum() * FRAME_MS / 1000)
        info["voiced_seconds"] = round(voiced_s, 2)
        if voiced_s < 0.3:
            ctx.warn("no singing voice found in the vocal stem; the converted vocal is silent")
            ctx.progress(1.0)
            return silent

        # chunks cut at quiet frames; everything below streams chunk by chunk (memory is bounded
        # by a few chunks, whatever the song's length)
        bounds = _chunk_bounds(level, self.chunk_seconds * 1000 / FRAME_MS)
        margin = int(0.3 * 1000 / FRAME_MS)  # analysis context each side, frames
        xfade = int(0.02 * 1000 / FRAME_MS)  # frames of overlap each side of a boundary

        def segment(i: int, pad: int) -> tuple[int, int, np.ndarray]:
            a, b = bounds[i], bounds[i + 1]
            s0, s1 = max(0, a - pad), min(n_frames, b + pad)
            seg = x[s0 * hop: min(len(x), (s1 - 1) * hop + 1)].astype(np.float64)
            seg = np.pad(seg, (0, max(0, (s1 - s0 - 1) * hop + 1 - len(seg))))
            return s0, s1, seg

        # ---- pitch -------------------------------------------------------------------------
        ratio = 2.0 ** (float(params.pitch_shift) / 12.0)
        octaves = 0
        src_median = float(np.median(f0[voiced_all])) * ratio
        if params.auto_pitch:
            target = ref.median_f0 * 2.0 ** (SINGING_ABOVE_SPEECH / 12.0)
            octaves = int(np.clip(np.round(np.log2(target / src_median)), -2, 2))
        shift = ratio * 2.0 ** octaves
        info.update({"pitch_shift": float(params.pitch_shift), "auto_pitch_octaves": octaves,
                     "source_median_f0": round(src_median / ratio, 1)})

        ex = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="world")
        try:
            # ---- timbre statistics from a sample of the loud voiced frames ---------------------
            use = voiced_all & (level > level.max() - self.stats_db)
            if use.sum() < 10:
                use = voiced_all
            ui = np.flatnonzero(use)
            sample = np.unique(ui[np.linspace(0, len(ui) - 1, min(len(ui), STATS_FRAMES)).astype(int)])
            chunk_of = np.searchsorted(np.asarray(bounds), sample, side="right") - 1

            def analyse_sample(i):
                fr = sample[chunk_of == i]
                if not len(fr):
                    return None
                s0, s1, seg = segment(i, margin)
                t = (fr - s0) * FRAME_MS / 1000
                f = f0[fr].astype(np.float64)
                if self.refine_f0:
                    f = _stonemask(pw, seg, f, t, rate)
                return np.log(np.maximum(pw.cheaptrick(seg, f, t, rate), 1e-16))

            parts = [p for p in _run_all(ex, analyse_sample, len(bounds) - 1, ctx.sub(0.5, 0.55)) if p is not None]
            logsp_s = np.concatenate(parts)
            del parts
            nb = logsp_s.shape[1]
            grid = self._grid(rate, nb)
            mapper = self._envelope_mapper(logsp_s, grid, ref, info)
            del logsp_s

            # ---- analysis, mapping and synthesis, chunk by chunk --------------------------------
            def convert_chunk(i):
                a, b = bounds[i], bounds[i + 1]
                s0, s1, seg = segment(i, margin)
                t = np.arange(s1 - s0) * FRAME_MS / 1000
                f = f0[s0:s1].copy()
                if self.refine_f0:
                    f = _stonemask(pw, seg, f, t, rate)
                sp = pw.cheaptrick(seg, f, t, rate)
                # aperiodicity on a 10 ms grid (half the cost), interpolated back to 5 ms
                f10 = np.ascontiguousarray(f[::2])
                t10 = np.ascontiguousarray(t[::2])
                a10 = pw.d4c(seg, f10, t10, rate, threshold=0.0)
                del seg
                # the frames this chunk synthesises: its own plus the crossfade on each side
                k0, k1 = max(0, a - xfade) - s0, min(n_frames, b + xfade) - s0
                idx = np.arange(k0, k1) / 2.0
                j0 = np.minimum(np.floor(idx).astype(int), len(f10) - 1)
                j1 = np.minimum(j0 + 1, len(f10) - 1)
                w = (idx - j0)[:, None]
                ap = a10[j0] * (1 - w) + a10[j1] * w
                del a10
                fs = f[k0:k1]
                sp = mapper(sp[k0:k1], fs > 0)
                y = pw.synthesize(np.ascontiguousarray(fs * shift), np.ascontiguousarray(sp),
                                  np.ascontiguousarray(ap), rate, FRAME_MS)
                return s0 + k0, y.astype(np.float32), (a + 0, f[a - s0: b - s0] > 0)

            y = np.zeros(len(x) + hop, np.float32)
            wsum = np.zeros(len(x) + hop, np.float32)
            voiced = np.zeros(n_frames, bool)   # the refined melody's voicing (same as the tracker's)

            def add(i, res):
                start_f, piece, (a, v) = res
                voiced[a:a + len(v)] = v
                _overlap_add_one(y, wsum, piece, start_f * hop, bounds[i] * hop, bounds[i + 1] * hop,
                                 xfade * hop, i > 0, i < len(bounds) - 2)

            _run_streaming(ex, convert_chunk, len(bounds) - 1, add, ctx.sub(0.55, 0.98), self.workers + 1)
        finally:
            ex.shutdown(wait=False, cancel_futures=True)
        ctx.progress(0.98)
        info["cpu_seconds_world"] = round(time.process_time() - cpu_ref - info["cpu_seconds_f0"], 3)
        np.divide(y, np.maximum(wsum, 1e-6), out=y)
        y[wsum <= 1e-6] = 0.0
        del wsum
        y = y[: len(x)]

        # silence stays silent: gate on the input's level (smooth, per frame)
        gate_db = max(-80.0, float(level.max()) - 75.0)
        g = np.clip((level - gate_db) / 10.0, 0.0, 1.0)
        _apply_frames(y, g, hop)
        # loudness: the input's RMS over the frames that carry sound
        loud_frames = level > gate_db + 10
        if loud_frames.any():
            rin, rout = _masked_rms(x, loud_frames, hop), _masked_rms(y, loud_frames, hop) + 1e-12
            y *= np.float32(np.clip(rin / rout, 0.25, 4.0))
        # unvoiced sound far from any sung note is mostly leaked accompaniment in a separated
        # stem: turn it down (breaths and consonants next to notes are kept as they are)
        if self.isolated_unvoiced_db < 0:
            from scipy.ndimage import maximum_filter1d, uniform_filter1d
            w = int(self.breath_window_s * 1000 / FRAME_MS)
            near = maximum_filter1d(voiced.astype(np.float64), size=2 * w + 1, mode="constant") > 0
            att = np.where(near, 1.0, 10 ** (self.isolated_unvoiced_db / 20))
            if gated is not None and self.gated_db < 0:
                # frames the gate took from the tracker (leak it heard a pitch in): breath, low
                att = np.minimum(att, np.where(gated, 10 ** (self.gated_db / 20), 1.0))
            att = uniform_filter1d(att, size=21, mode="nearest")
            _apply_frames(y, att, hop)
            g = g * att
        out = resample(y, rate, sr) if rate != sr else y
        del y
        out = np.pad(out, (0, max(0, n - len(out))))[:n]
        if sr > rate:
            # keep the input's own band above the work rate's Nyquist frequency ("air")
            low = resample(x, rate, sr)
            low = np.pad(low, (0, max(0, n - len(low))))[:n]
            np.subtract(vocal, low, out=low)
            _apply_frames(low, g, hop * sr / rate)
            out += low
            del low
        del x
        peak = float(np.max(np.abs(out), initial=0.0))
        if peak > 0.99:
            out *= np.float32(0.99 / peak)
        out = np.nan_to_num(out, copy=False).astype(np.float32, copy=False)
        info["seconds"] = round(time.perf_counter() - t_start, 3)
        info["real_time_factor"] = round(info["seconds"] / max(1e-9, n / sr), 4)
        # CPU time of the whole process (all threads) over the same span: the cost on an idle machine
        info["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
        ctx.progress(1.0)
        return out

    def _gate(self, x: np.ndarray, rate: int, f0: np.ndarray, level: np.ndarray, info: dict,
              progress) -> np.ndarray | None:
        """Frames (5 ms grid) the tracker calls voiced that the voicing gate rejects, or None
        when the gate is off or swift-f0 is not installed."""
        from . import voicing
        if self.voicing_gate == "none":
            progress(1.0)
            return None
        if self.voicing_gate != "swift" or not voicing.available():
            if self.voicing_gate == "swift":
                log.warning("swift-f0 is not installed: the voicing gate is off")
            info["voicing_gate"] = "none (swift-f0 missing)"
            progress(1.0)
            return None
        from ..audio import resample
        x16 = resample(x, rate, voicing.SWIFT_SR) if rate != voicing.SWIFT_SR else x   # once for both nets
        ts, conf = voicing.voice_confidence(x16, voicing.SWIFT_SR, progress=progress)
        t = np.arange(len(f0)) * FRAME_MS / 1000
        keep = voicing.gate(ts, conf, t, threshold=self.gate_threshold, smooth_s=self.gate_smooth_s)
        if self.gate_vad is not None:
            tv, pv = voicing.speech_probability(x16, voicing.SWIFT_SR)
            keep |= voicing.gate(tv, pv, t, threshold=self.gate_vad, smooth_s=0.0)
        if self.gate_level_db is not None:
            # level against the loud frames around it (+-6 s; a quiet verse is judged against
            # itself, not against the chorus): the leak between phrases is far below the phrases
            from scipy.ndimage import maximum_filter1d, uniform_filter1d
            loud = maximum_filter1d(uniform_filter1d(level, 11, mode="nearest"), size=2401, mode="nearest") - 3.0
            rel = level - loud
            act = rel[level > np.percentile(level, 95) - 60]
            spread = float(np.percentile(act, 90) - np.percentile(act, 10)) if len(act) else 0.0
            lim = float(np.clip(self.gate_level_spread * spread, min(self.gate_level_min_db, self.gate_level_db),
                                self.gate_level_db))
            info["gate_level_db"] = round(lim, 1)
            keep &= rel > -lim
        voiced = f0 > 0
        v = voiced & keep
        # no sung islands shorter than 40 ms, no holes up to gate_bridge_s inside a sung run
        bridge = int(round(self.gate_bridge_s * 1000 / FRAME_MS))
        for s_, e_ in pitchmod._runs(voiced & ~v):
            if e_ - s_ <= bridge and 0 < s_ and e_ < len(v) and v[s_ - 1] and v[e_]:
                v[s_:e_] = True
        for s_, e_ in pitchmod._runs(v):
            if e_ - s_ < 8:
                v[s_:e_] = False
        gated = voiced & ~v
        info.update({"voicing_gate": f"swift-f0 >= {self.gate_threshold}"
                     + (f" or silero >= {self.gate_vad}" if self.gate_vad is not None else "")
                     + (f", within {self.gate_level_db} dB" if self.gate_level_db is not None else ""),
                     "gated_seconds": round(float(gated.sum() * FRAME_MS / 1000), 2)})
        return gated

    def _envelope_mapper(self, logsp_s: np.ndarray, grid: _Grid, ref: _Reference, info: dict):
        """From the log envelopes of a sample of the loud voiced frames: the warp factor and the
        singer's cepstral statistics; returns ``map(sp, voiced) -> mapped sp`` for one chunk."""
        # vocal-tract-length warp: the factor under which the singer's voiced frames lie nearest
        # to the reference's frames (mel-cepstra 1..N_MATCH-1, mean-normalised; maximum-likelihood VTLN style)
        sub = logsp_s[np.linspace(0, len(logsp_s) - 1, min(len(logsp_s), 600)).astype(int)]
        keys = ref.mcep[:, 1:N_MATCH]
        key_mean = keys.mean(axis=0)
        best, alpha = np.inf, 1.0
        for a in np.exp(np.linspace(np.log(WARP_RANGE[0]), np.log(WARP_RANGE[1]), 13)):
            q = grid.mcep(grid.warp(sub, a))[:, 1:N_MATCH]
            # cepstral mean normalisation before matching: the warp is judged on how the
            # singer's frames spread (formant movements), not on their average shape, which
            # leaked accompaniment in a separated stem tilts (the mean search chose 0.86-0.93
            # on the kit's separated stems where the true stems gave 1.0-1.25)
            q = (q - q.mean(axis=0) + key_mean).astype(np.float32)
            d = _knn_dist(q, keys, self.k) + WARP_PRIOR * np.log(a) ** 2
            if d < best:
                best, alpha = d, float(a)
        alpha = float(alpha ** WARP_SHRINK)
        mc_s = grid.mcep(grid.warp(logsp_s, alpha))
        mu, sd = mc_s.mean(axis=0), mc_s.std(axis=0) + 1e-6
        info.update({"warp_factor": round(alpha, 3), "knn_k": self.k, "knn_weight": self.knn_weight})
        use_knn = self.knn_weight > 0 and len(ref.mcep) >= self.k
        keys_m = ref.mcep[:, 1:N_MATCH]

        def mapper(sp: np.ndarray, voiced: np.ndarray) -> np.ndarray:
            logw = grid.warp(np.log(np.maximum(sp, 1e-16)), alpha)
            mc = grid.mcep(logw)
            target = mc.copy()
            target[:, 1:] = (mc[:, 1:] - mu[1:]) / sd[1:] * ref.sd[1:] + ref.mu[1:]
            if use_knn and voiced.any():
                vi = np.flatnonzero(voiced)
                knn = _knn_mean(target[vi, 1:N_MATCH].astype(np.float32), keys_m, ref.mcep, self.k)
                target[vi, 1:] = self.knn_weight * knn[:, 1:] + (1 - self.knn_weight) * target[vi, 1:]
            # unvoiced frames: warp plus the mean shift only
            uv = ~voiced
            target[uv, 1:] = mc[uv, 1:] + (ref.mu[1:] - mu[1:])
            delta = target - mc
            delta[:, 0] = 0.0  # keep the singer's loudness contour
            logw += grid.cep_to_bins(delta)
            return np.exp(logw, out=logw)

        return mapper


def _knn_dist(q: np.ndarray, keys: np.ndarray, k: int) -> float:
    """Mean distance of the queries to their k nearest keys."""
    kk = (keys.astype(np.float32) ** 2).sum(axis=1)
    d = kk[None, :] - 2.0 * (q @ keys.T.astype(np.float32)) + (q ** 2).sum(axis=1)[:, None]
    part = np.partition(d, k - 1, axis=1)[:, :k]
    return float(np.sqrt(np.maximum(part, 0)).mean())


def _knn_mean(q: np.ndarray, keys: np.ndarray, values: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    out = np.empty((len(q), values.shape[1]), dtype=np.float64)
    kk = (keys.astype(np.float32) ** 2).sum(axis=1)
    for s in range(0, len(q), block):
        qb = q[s:s + block]
        d = kk[None, :] - 2.0 * (qb @ keys.T.astype(np.float32))
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        out[s:s + block] = values[idx].mean(axis=1)
    return out


def _stonemask(pw, x: np.ndarray, f0: np.ndarray, t: np.ndarray, rate: int) -> np.ndarray:
    """StoneMask refinement, kept only where it stays within a semitone of the tracker."""
    if not (f0 > 0).any():
        return f0
    r = pw.stonemask(x, np.ascontiguousarray(f0), t, rate)
    ok = (f0 > 0) & (r > 0) & (np.abs(np.log2(np.maximum(r, 1e-3) / np.maximum(f0, 1e-3))) < 1 / 12)
    return np.where(ok, r, f0)


def _chunk_bounds(level: np.ndarray, target_frames: float) -> list[int]:
    """Frame indices cutting the signal into ~``target_frames`` chunks at quiet frames."""
    n = len(level)
    target = max(200, int(target_frames))
    if n <= target * 1.5:
        return [0, n]
    from scipy.ndimage import uniform_filter1d
    sm = uniform_filter1d(level, size=9, mode="nearest")
    bounds = [0]
    search = target // 4
    while n - bounds[-1] > target * 1.5:
        c = bounds[-1] + target
        lo, hi = c - search, min(n - target // 2, c + search)
        bounds.append(int(lo + np.argmin(sm[lo:hi])))
    bounds.append(n)
    return bounds


def _run_all(ex: ThreadPoolExecutor, fn, count: int, progress) -> list:
    """Run ``fn(i)`` for i < count on the pool; report progress every 0.25 s; cancel cleanly."""
    futures: dict[Future, int] = {ex.submit(fn, i): i for i in range(count)}
    results: list = [None] * count
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for f in done:
                results[futures[f]] = f.result()
            progress((count - len(pending)) / count)
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    return results


def _run_streaming(ex: ThreadPoolExecutor, fn, count: int, consume, progress, ahead: int) -> None:
    """Run ``fn(i)`` for i < count on the pool, at most ``ahead`` at a time, and hand each result
    to ``consume(i, result)`` as soon as it is done (results are not kept); progress every 0.25 s."""
    futures: dict[Future, int] = {}
    nxt = done_n = 0
    try:
        while done_n < count:
            while nxt < count and len(futures) < ahead:
                futures[ex.submit(fn, nxt)] = nxt
                nxt += 1
            done, _ = wait(set(futures), timeout=0.25, return_when=FIRST_COMPLETED)
            for f in done:
                i = futures.pop(f)
                consume(i, f.result())
                done_n += 1
            progress(done_n / count)
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _overlap_add_one(y: np.ndarray, wsum: np.ndarray, piece: np.ndarray, start: int, a: int, b: int,
                     x: int, fade_in: bool, fade_out: bool) -> None:
    """Add ``piece`` (starting at sample ``start``) into ``y``/``wsum`` with linear ramps over
    ``[a - x, a + x)`` and ``[b - x, b + x)``."""
    seg = piece[: max(0, min(len(piece), len(y) - start))]
    w = np.ones(len(seg), np.float32)
    pos = start + np.arange(len(seg))
    L = max(1, 2 * x)
    if fade_in:
        w *= np.clip((pos - (a - x)) / L, 0.0, 1.0).astype(np.float32)
    if fade_out:
        w *= np.clip(((b + x) - pos) / L, 0.0, 1.0).astype(np.float32)
    y[start:start + len(seg)] += seg * w
    wsum[start:start + len(seg)] += w


def _apply_frames(y: np.ndarray, env: np.ndarray, hop: float, block: int = 1 << 18) -> None:
    """``y *= env`` with ``env`` given per frame (frame ``i`` at sample ``i * hop``), linearly
    interpolated, in blocks (no full-length float64 temporary)."""
    xp = np.arange(len(env)) * hop
    for s in range(0, len(y), block):
        e = min(len(y), s + block)
        y[s:e] *= np.interp(np.arange(s, e), xp, env).astype(np.float32)


def _masked_rms(x: np.ndarray, frames: np.ndarray, hop: int) -> float:
    """RMS of the samples of ``x`` whose frame (``sample // hop``) is set in ``frames``."""
    tot, cnt = 0.0, 0
    nf = min(len(frames), -(-len(x) // hop))
    for s in range(0, nf, 4096):
        e = min(nf, s + 4096)
        m = np.repeat(frames[s:e], hop)
        seg = x[s * hop: e * hop]
        m = m[: len(seg)]
        v = seg[m].astype(np.float64)
        tot += float(np.dot(v, v))
        cnt += len(v)
    return float(np.sqrt(tot / max(1, cnt)))
