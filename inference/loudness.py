"""Loudness (ITU-R BS.1770 with pyloudnorm's filters), true peak (4x oversampling) and a true-peak limiter.

Arrays are float ``(channels, samples)`` or ``(samples,)``. Everything here is pure numpy/scipy
and works block by block in float32 (float64 only per block), so a 10-minute song costs no
full-length float64 or oversampled copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal as sps
from scipy.ndimage import minimum_filter1d, uniform_filter1d

SILENCE_DB = -120.0          # what we report for a silent signal instead of -inf
_BLOCK_S = 0.4               # BS.1770 gating block
_OVERSAMPLE = 4
_CHUNK = 1 << 18             # samples per block (loudness, limiter, levels)
_TP_CHUNK = 1 << 16          # samples per block for the oversampled peak envelope


def _2d(x: np.ndarray) -> np.ndarray:
    return x[None, :] if x.ndim == 1 else x


def _blocks(n: int, chunk: int = _CHUNK):
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def rms_db(x: np.ndarray) -> float:
    """Mean-square level in dBFS over all channels (sum of channel powers, like BS.1770).
    Summed in float64 over float32 blocks (no full-length float64 copy)."""
    x = _2d(np.asarray(x, dtype=np.float32))
    if x.size == 0:
        return SILENCE_DB
    n = x.shape[1]
    acc = np.zeros(x.shape[0])
    for s, e in _blocks(n):
        blk = x[:, s:e]
        acc += np.einsum("ij,ij->i", blk, blk, dtype=np.float64)
    power = float((acc / n).sum())
    return 10 * math.log10(power) if power > 1e-12 else SILENCE_DB


def _k_weighting_sos(sr: int) -> np.ndarray:
    """pyloudnorm's K-weighting (high shelf + high pass) as second-order sections."""
    import pyloudnorm
    rows = []
    for f in pyloudnorm.Meter(sr)._filters.values():
        b = np.asarray(f.b, dtype=np.float64) * f.passband_gain
        a = np.asarray(f.a, dtype=np.float64)
        rows.append(np.concatenate([b / a[0], a / a[0]]))
    return np.asarray(rows)


class LoudnessMeter:
    """Streaming BS.1770-4 integrated loudness with pyloudnorm's filters and gating.

    Feed ``(channels, m)`` float blocks in order (``add``) until ``n`` samples per channel have
    been given, then ``value()``. The K-weighting runs block by block (``scipy.signal.sosfilt``
    with carried state, float64 per block only) and the 400 ms / 75 % overlap gating-block
    energies come from a running sum sampled at each block edge, so a 10-minute song never
    exists as a float64 copy. Same figures as :func:`pyloudnorm.Meter.integrated_loudness`.
    """

    def __init__(self, sr: int, channels: int, n: int):
        self.sr, self.n = int(sr), int(n)
        self.channels = min(int(channels), 5)
        self.sos = _k_weighting_sos(self.sr)
        self.zi = np.zeros((self.sos.shape[0], self.channels, 2))
        t_g, step = _BLOCK_S, 0.25
        nb = int(np.round(((self.n / self.sr - t_g) / (t_g * step)))) + 1
        j = np.arange(max(nb, 0))
        self.lo = (t_g * (j * step) * self.sr).astype(np.int64)
        self.hi = np.minimum((t_g * (j * step + 1) * self.sr).astype(np.int64), self.n)
        self.pts = np.unique(np.concatenate([[0], self.lo, self.hi]))       # sorted edges
        self.cs = np.zeros((self.channels, len(self.pts)))                  # running sums at edges
        self.offset = np.zeros(self.channels)
        self.pos = 0
        self.power = np.zeros(self.channels)                                # raw sum of squares
        self.nonzero = False

    def add(self, blk: np.ndarray) -> None:
        blk = _2d(blk)[: self.channels]
        m = blk.shape[1]
        if m == 0:
            return
        s, e = self.pos, self.pos + m
        i0, i1 = np.searchsorted(self.pts, [s + 1, e + 1])
        want = self.pts[i0:i1] - s - 1                                      # index inside the block
        y = blk.astype(np.float64)                                          # (ch, m), one block
        if not self.nonzero and np.any(y):
            self.nonzero = True
        self.power += np.einsum("ij,ij->i", y, y)
        y, self.zi = sps.sosfilt(self.sos, y, axis=-1, zi=self.zi)
        np.square(y, out=y)
        np.cumsum(y, axis=1, out=y)
        self.cs[:, i0:i1] = y[:, want] + self.offset[:, None]
        self.offset += y[:, -1]
        self.pos = e

    def value(self) -> float:
        if self.pos == 0 or not self.nonzero:
            return SILENCE_DB
        t_g = _BLOCK_S
        gains = np.asarray((1.0, 1.0, 1.0, 1.41, 1.41)[: self.channels])
        ilo, ihi = np.searchsorted(self.pts, self.lo), np.searchsorted(self.pts, self.hi)
        z = (self.cs[:, ihi] - self.cs[:, ilo]) / (t_g * self.sr)
        weighted = np.tensordot(gains, z, axes=1)
        with np.errstate(divide="ignore"):
            block_lufs = -0.691 + 10.0 * np.log10(weighted)
        gate_a = block_lufs >= -70.0
        value = -math.inf
        if gate_a.any():
            rel = -0.691 + 10.0 * math.log10(float(weighted[gate_a].mean())) - 10.0
            gate = (block_lufs > rel) & (block_lufs > -70.0)
            if gate.any():
                value = -0.691 + 10.0 * math.log10(float(weighted[gate].mean()))
        if not math.isfinite(value):
            power = float((self.power / max(self.pos, 1)).sum())
            rms = 10 * math.log10(power) if power > 1e-12 else SILENCE_DB
            value = max(SILENCE_DB, rms - 0.691)
        return value


def integrated_lufs(x: np.ndarray, sr: int, *, gain: float = 1.0, curve: np.ndarray | None = None) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated), as pyloudnorm measures it.

    pyloudnorm's K-weighting filters and gating, computed block-wise in float32 blocks
    (:class:`LoudnessMeter`). Signals shorter than one 400 ms block are measured by repeating
    them until they fill two blocks (a loop of the same sound has the same loudness). A silent
    signal, or one whose every block is gated away, falls back to ``rms_db - 0.691`` (never
    ``-inf``). ``gain`` and a per-sample ``curve`` measure ``x * gain * curve`` without making it.
    """
    x = _2d(np.asarray(x, dtype=np.float32))
    n = x.shape[1]
    if n == 0:
        return SILENCE_DB
    need = int(math.ceil(2 * _BLOCK_S * sr)) + 1
    if n < need:
        if curve is not None or gain != 1.0:
            x = x * np.float32(gain) * (1 if curve is None else curve[None, :].astype(np.float32))
            gain, curve = 1.0, None
        x = np.tile(x, (1, need // n + 1))
        n = x.shape[1]
    meter = LoudnessMeter(sr, x.shape[0], n)
    g = np.float32(gain)
    for s, e in _blocks(n):
        blk = x[:, s:e]
        if curve is not None:
            blk = blk * (g * curve[s:e])[None, :]
        elif gain != 1.0:
            blk = blk * g
        meter.add(blk)
    return meter.value()


def file_lufs(path) -> float:
    """Integrated loudness of an audio file read in blocks (same figure as ``integrated_lufs``)."""
    import soundfile as sf
    with sf.SoundFile(str(path)) as f:
        n, sr, ch = f.frames, f.samplerate, f.channels
        need = int(math.ceil(2 * _BLOCK_S * sr)) + 1
        if n < need:
            return integrated_lufs(f.read(dtype="float32", always_2d=True).T, sr)
        meter = LoudnessMeter(sr, ch, n)
        for blk in f.blocks(blocksize=_CHUNK, dtype="float32", always_2d=True):
            meter.add(blk.T)
    return meter.value()


def _upsampled_peak(seg: np.ndarray, oversample: int) -> np.ndarray:
    """(m,) per-sample max over channels of |4x oversampled seg|."""
    up = sps.resample_poly(seg, oversample, 1, axis=1)
    np.abs(up, out=up)
    up = up.max(axis=0)
    return up[: seg.shape[1] * oversample].reshape(-1, oversample).max(axis=1)


def peak_envelope(x: np.ndarray, oversample: int = _OVERSAMPLE, *, start: int = 0,
                  stop: int | None = None) -> np.ndarray:
    """Per-sample true-peak envelope ``(samples,)``: the largest absolute value over all
    channels of the ``oversample``-times oversampled signal within each original sample.
    Computed in overlapping chunks so memory stays bounded (``start``/``stop``: only that
    range, with the same figures as the whole signal's envelope there)."""
    x = _2d(np.asarray(x, dtype=np.float32))
    n = x.shape[1]
    stop = n if stop is None else min(stop, n)
    env = np.empty(max(0, stop - start), dtype=np.float32)
    pad = 64
    for s, e in _blocks(stop - start, _TP_CHUNK):
        a, b = start + s, start + e
        np.max(np.abs(x[:, a:b]), axis=0, out=env[s:e])
        if n < 4 or oversample <= 1:
            continue
        s0, e0 = max(0, a - pad), min(n, b + pad)
        m = _upsampled_peak(x[:, s0:e0], oversample)
        np.maximum(env[s:e], m[a - s0: b - s0], out=env[s:e])
    return env


def true_peak_db(x: np.ndarray) -> float:
    """True peak in dBTP (4x oversampling, as BS.1770-4 Annex 2), block by block."""
    x = _2d(np.asarray(x))
    if x.size == 0:
        return SILENCE_DB
    p = 0.0
    for s, e in _blocks(x.shape[1], _TP_CHUNK):
        p = max(p, float(peak_envelope(x, start=s, stop=e).max()))
    return 20 * math.log10(p) if p > 1e-12 else SILENCE_DB


def sample_peak_db(x: np.ndarray) -> float:
    x = _2d(np.asarray(x))
    p = 0.0
    for s, e in _blocks(x.shape[1]):
        blk = x[:, s:e]
        if blk.size:
            p = max(p, float(np.max(np.abs(blk))))
    return 20 * math.log10(p) if p > 1e-12 else SILENCE_DB


def count_clipped(x: np.ndarray, limit: float = 1.0) -> int:
    """Samples with ``|x| >= limit``, counted block by block."""
    x = _2d(np.asarray(x))
    return sum(int(np.count_nonzero(np.abs(x[:, s:e]) >= limit)) for s, e in _blocks(x.shape[1]))


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _limiter_block(need: np.ndarray, la: int, rel: int) -> np.ndarray:
    # attack: min over +-la, average over la (average window inside the min window -> <= need)
    g = minimum_filter1d(need, size=2 * la + 1, mode="nearest")
    g = uniform_filter1d(g, size=la, mode="nearest")
    # release / hold: same construction at a longer time scale, keeps gain changes slow
    g2 = minimum_filter1d(g, size=2 * rel + 1, mode="nearest")
    g2 = uniform_filter1d(g2, size=rel, mode="nearest")
    # blend: mostly the slow curve, never above what the fast curve allows
    g2 *= 0.5
    g2 += 0.5 * g
    return np.minimum(g, g2, out=g)


def limiter_gain(x: np.ndarray | None, sr: int, ceiling_db: float, *, lookahead_ms: float = 5.0,
                 release_ms: float = 80.0, envelope: np.ndarray | None = None,
                 scale: float = 1.0) -> np.ndarray:
    """Smooth per-sample gain (<= 1) that keeps the true peak of ``x * scale * gain`` under the ceiling.

    Look-ahead limiter: the gain each sample needs is spread backwards and forwards over the
    look-ahead window (a running minimum), then smoothed with a moving average no longer than
    that window, so the gain is already down when the peak arrives and never exceeds what
    any sample needs. A second, longer running minimum + average gives a gentle release.
    Computed in overlapping blocks (float32), wide enough that each block's core is exact.
    """
    ceiling = db_to_gain(ceiling_db)
    env = peak_envelope(x) if envelope is None else envelope
    n = len(env)
    out = np.ones(n, dtype=np.float32)
    sc = np.float32(scale)
    la = max(1, int(sr * lookahead_ms / 1000))
    rel = max(la, int(sr * release_ms / 1000))
    pad = 2 * (la + rel) + 16
    ceil32 = np.float32(ceiling)
    for s, e in _blocks(n):
        s0, e0 = max(0, s - pad), min(n, e + pad)
        seg = env[s0:e0] * sc
        if float(seg.max()) <= ceil32:                 # nothing to limit near this block
            continue
        np.maximum(seg, np.float32(1e-12), out=seg)
        need = np.minimum(np.float32(1.0), ceil32 / seg)
        out[s:e] = _limiter_block(need, la, rel)[s - s0: e - s0]
    return out


@dataclass
class NormalizeReport:
    input_lufs: float
    output_lufs: float
    true_peak_dbtp: float
    sample_peak_dbfs: float
    gain_db: float
    limited: bool
    trim_db: float
    clipped_samples: int

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def normalize(x: np.ndarray, sr: int, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0,
              *, max_gain_db: float = 60.0, iterations: int = 3,
              inplace: bool = False) -> tuple[np.ndarray, NormalizeReport]:
    """Bring ``x`` to ``target_lufs`` through a true-peak limiter with ceiling ``ceiling_dbtp``.

    Loudness first (a static gain), then the limiter where peaks would pass the ceiling; the
    limiter lowers the loudness a little, so the gain is corrected and the limiter re-run a few
    times. Finally the true peak is verified and, if still above the ceiling (the gain curve
    itself can create inter-sample peaks), the whole signal is trimmed down. Returns float32.

    Memory: the candidate outputs are measured without being made (``integrated_lufs`` with a
    gain and a curve); only the envelope and one gain curve (float32, one value per sample) sit
    beside the signal. With ``inplace`` (and float32 input) ``x`` itself becomes the output.
    """
    x = np.asarray(x, dtype=np.float32)
    if not inplace:
        x = x.copy()
    src_lufs = integrated_lufs(x, sr)
    if src_lufs <= SILENCE_DB + 1:
        x[...] = 0
        return x, NormalizeReport(src_lufs, SILENCE_DB, SILENCE_DB, SILENCE_DB, 0.0, False, 0.0, 0)
    margin = 0.3                                   # limiter aims a little under the ceiling
    gain_db = float(np.clip(target_lufs - src_lufs, -max_gain_db, max_gain_db))
    limited = False
    env = peak_envelope(x)          # scales with the gain: measured once
    g = None
    for _ in range(iterations):
        gain = db_to_gain(gain_db)
        g = limiter_gain(None, sr, ceiling_dbtp - margin, envelope=env, scale=gain)
        if float(g.min()) < 0.9999:
            limited = True
        else:
            g = None
        got = integrated_lufs(x, sr, gain=gain, curve=g)
        err = target_lufs - got
        if abs(err) < 0.1 or not limited:
            break
        gain_db = float(np.clip(gain_db + err, -max_gain_db, max_gain_db))
    del env
    x2 = _2d(x)
    g32 = np.float32(gain)
    for s, e in _blocks(x2.shape[1]):
        if g is not None:
            x2[:, s:e] *= (g32 * g[s:e])[None, :]
        else:
            x2[:, s:e] *= g32
    del g
    # verify and trim
    tp = true_peak_db(x)
    trim = 0.0
    if tp > ceiling_dbtp - 0.05:
        trim = ceiling_dbtp - 0.1 - tp
        x *= np.float32(db_to_gain(trim))
        tp = true_peak_db(x)
        got = integrated_lufs(x, sr)
    # (without a trim, ``got`` was measured on exactly these samples: the same float32 products)
    clipped = count_clipped(x)
    return x, NormalizeReport(src_lufs, got, tp, sample_peak_db(x), gain_db, limited, trim, clipped)
