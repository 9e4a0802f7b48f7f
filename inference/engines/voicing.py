"""Voicing evidence for a separated vocal stem: is somebody singing in this frame, or is it leak?

A separated vocal stem holds the accompaniment that leaked through the separator. Between the
sung phrases that leak is all there is, and a pitch tracker such as torchcrepe, asked "is this
frame periodic", answers yes to a guitar as readily as to a voice (on the eval kit's separated
stems crepe's voicing calls 0.86 of the frames where nobody sings voiced). swift-f0's
confidence (a 135 KB ONNX net shipped inside the ``swift-f0`` wheel, onnxruntime + numpy only)
calls far fewer of those frames voiced (0.39 at >= 0.5); Silero VAD's speech probability (the
ONNX model inside faster-whisper) catches sung frames swift-f0 misses. Neither tells a loud
leaked guitar from a voice, so the converter also asks the frame's level against the loud frames
around it (inference/engines/world.py, ``WorldConverter._gate``). See BENCHMARKS.md, "Voicing
gate (issue 12 item 2)", for the measurements.

``voice_confidence(audio, sr)`` returns swift-f0's per-frame confidence (0..1; >= 0.5 means
voiced in the model's calibration) on swift-f0's 16 ms grid, ``speech_probability(audio, sr)``
Silero's per 32 ms, and ``gate(...)`` turns either into a boolean mask on another frame grid.
No Django, no downloads.
"""
from __future__ import annotations

import threading

import numpy as np

SWIFT_SR = 16000
_DETECTOR = None
_VAD = None
_LOCK = threading.Lock()


def available() -> bool:
    try:
        import swift_f0  # noqa: F401
    except ImportError:
        return False
    return True


def _detector():
    global _DETECTOR
    with _LOCK:
        if _DETECTOR is None:
            from swift_f0 import SwiftF0
            from ..device import cpu_threads
            # spin=False: the pool sleeps between calls (the worker shares its CPU with others)
            _DETECTOR = SwiftF0(threads=max(1, min(4, cpu_threads())), spin=False)
        return _DETECTOR


def speech_probability(audio: np.ndarray, sr: int, *, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Silero VAD's speech probability (the ONNX model inside faster-whisper) of mono ``audio``:
    ``(times_s, probability)``, one value per 32 ms; zeros when faster-whisper is missing."""
    global _VAD
    from ..audio import resample
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=0)
    x = resample(x, int(sr), SWIFT_SR) if int(sr) != SWIFT_SR else x
    n = -(-len(x) // 512)
    times = (np.arange(n) + 0.5) * 512 / SWIFT_SR
    peak = float(np.max(np.abs(x), initial=0.0))
    if peak < 1e-5 or n == 0:
        return times, np.zeros(n)
    try:
        with _LOCK:
            if _VAD is None:
                from faster_whisper.vad import get_vad_model
                _VAD = get_vad_model()
            vad = _VAD
    except ImportError:
        return times, np.zeros(n)
    xp = np.zeros(n * 512, np.float32)
    xp[:len(x)] = x * np.float32(0.9 / peak)
    p = np.asarray(vad(xp), dtype=np.float64).reshape(-1)[:n]
    if progress is not None:
        progress(1.0)
    return times, p


def voice_confidence(audio: np.ndarray, sr: int, *, fmin: float = 50.0, fmax: float = 1100.0,
                     block_s: float = 60.0, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """swift-f0's voicing confidence of mono ``audio``: ``(times_s, confidence)``.

    The audio is peak-normalised first (swift-f0 zeroes frames whose absolute peak is under
    1e-3, which would silence a quiet stem), and run in ``block_s`` blocks with 1 s of context
    each side (bounded memory; ``progress(fraction)`` after each block, which may raise to cancel).
    """
    from ..audio import resample
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=0)
    x = resample(x, int(sr), SWIFT_SR) if int(sr) != SWIFT_SR else x
    peak = float(np.max(np.abs(x), initial=0.0))
    hop = 256
    n = len(x) // hop + 1
    times = np.arange(n) * hop / SWIFT_SR
    conf = np.zeros(n)
    if peak < 1e-5 or len(x) < hop:
        if progress is not None:
            progress(1.0)
        return times, conf
    det = _detector()
    scale = np.float32(0.9 / peak)
    blk = max(1, int(block_s * SWIFT_SR / hop))     # frames per block
    ctx = int(SWIFT_SR / hop)                        # ~1 s of context each side, frames
    for f0 in range(0, n, blk):
        f1 = min(n, f0 + blk)
        a0, a1 = max(0, f0 - ctx), min(n, f1 + ctx)
        seg = x[a0 * hop: a1 * hop] * scale
        if len(seg) >= hop:
            c = det.detect(seg, SWIFT_SR, fmin=fmin, fmax=fmax).confidence
            take = c[f0 - a0: f0 - a0 + (f1 - f0)]
            conf[f0: f0 + len(take)] = take
        if progress is not None:
            progress(f1 / n)
    return times, conf


def gate(times: np.ndarray, confidence: np.ndarray, frame_times: np.ndarray, *, threshold: float = 0.5,
         smooth_s: float = 0.08) -> np.ndarray:
    """Boolean voicing on ``frame_times``: the confidence, median-smoothed over ``smooth_s``,
    at or above ``threshold`` (nearest frame; ``times`` evenly spaced from ``times[0]``)."""
    from scipy.ndimage import median_filter
    if not len(times):
        return np.zeros(len(frame_times), bool)
    hop = float(times[1] - times[0]) if len(times) > 1 else 0.016
    frame_times = np.asarray(frame_times) - float(times[0])
    size = max(1, int(round(smooth_s / hop)) | 1)
    c = median_filter(np.asarray(confidence, dtype=np.float64), size=size, mode="nearest")
    idx = np.clip(np.round(np.asarray(frame_times) / hop).astype(int), 0, len(c) - 1)
    return c[idx] >= threshold
