"""Test audio built in memory: melodies, voice-like sources, drums/noise, stereo panning.

All functions return float32 numpy arrays; mono ``(n,)`` or stereo ``(2, n)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal as sps

SR = 44100


def melody_f0(notes_hz: list[float], note_seconds: float, sr: int = SR, vibrato_cents: float = 0.0) -> np.ndarray:
    """Per-sample F0 contour of consecutive notes (optionally with 5.5 Hz vibrato)."""
    n = int(note_seconds * sr)
    f0 = np.concatenate([np.full(n, f, dtype=np.float64) for f in notes_hz])
    if vibrato_cents:
        t = np.arange(len(f0)) / sr
        f0 = f0 * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * 5.5 * t))
    return f0


def sine_from_f0(f0: np.ndarray, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(f0) / sr
    return (amp * np.sin(phase)).astype(np.float32)


def harmonic_voice(f0: np.ndarray, sr: int = SR, formants=(700, 1200, 2600), amp: float = 0.3,
                   seed: int = 0) -> np.ndarray:
    """A voice-like signal: a band-limited glottal pulse train through formant resonators,
    plus a little breath noise. ``f0`` <= 0 means unvoiced (silence)."""
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * np.cumsum(np.maximum(f0, 0)) / sr
    src = np.zeros_like(phase)
    nyq = sr / 2
    for k in range(1, 40):
        h = np.where(k * f0 < nyq * 0.9, np.sin(k * phase) / k, 0.0)
        src += h
    src *= (f0 > 0)
    src += 0.02 * rng.standard_normal(len(src)) * (f0 > 0)
    out = np.zeros_like(src)
    for i, fc in enumerate(formants):
        bw = 80 + 40 * i
        r = np.exp(-np.pi * bw / sr)
        theta = 2 * np.pi * fc / sr
        b, a = [1 - r], [1, -2 * r * np.cos(theta), r * r]
        out += sps.lfilter(b, a, src) / (i + 1)
    out /= np.max(np.abs(out)) + 1e-9
    return (amp * out).astype(np.float32)


def noise(seconds: float, sr: int = SR, amp: float = 0.1, seed: int = 1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def drums(seconds: float, sr: int = SR, bpm: float = 120, amp: float = 0.4, seed: int = 2) -> np.ndarray:
    """Repeating kick + hi-hat pattern (repetitive background, as in real music)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float64)
    beat = int(60 / bpm * sr)
    kick_len = int(0.15 * sr)
    t = np.arange(kick_len) / sr
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 30)) * t) * np.exp(-t * 20)
    hat_len = int(0.05 * sr)
    hat = rng.standard_normal(hat_len) * np.exp(-np.arange(hat_len) / sr * 80) * 0.3
    for start in range(0, n, beat):
        e = min(n, start + kick_len)
        out[start:e] += kick[: e - start]
        h = start + beat // 2
        if h < n:
            e = min(n, h + hat_len)
            out[h:e] += hat[: e - h]
    return (amp * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def chords(seconds: float, sr: int = SR, roots=(110.0, 146.8, 130.8, 98.0), amp: float = 0.2) -> np.ndarray:
    """Sustained triads changing every 2 s (harmonic accompaniment)."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    seg = int(2 * sr)
    for i, start in enumerate(range(0, n, seg)):
        r = roots[i % len(roots)]
        tt = t[start:start + seg]
        for ratio in (1.0, 1.26, 1.5):
            for k in (1, 2, 3):
                out[start:start + seg] += np.sin(2 * np.pi * r * ratio * k * tt) / k
    return (amp * out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan: -1 = left, 0 = centre, +1 = right -> (2, n)."""
    angle = (position + 1) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)]).astype(np.float32)


def song(seconds: float = 10.0, sr: int = SR, seed: int = 0):
    """A stereo test song: centre voice melody over panned chords and drums.

    Returns ``(mix, vocal_stereo, instrumental_stereo, f0)``; mix = vocal + instrumental.
    """
    notes = [220.0, 246.9, 261.6, 293.7, 329.6, 293.7, 261.6, 246.9]
    per = seconds / len(notes)
    f0 = melody_f0(notes, per, sr, vibrato_cents=20)
    f0 = np.pad(f0, (0, max(0, int(seconds * sr) - len(f0))), mode="edge")[: int(seconds * sr)]
    # short gaps between notes (unvoiced)
    gap = int(0.08 * sr)
    for i in range(1, len(notes)):
        s = int(i * per * sr)
        f0[s - gap // 2: s + gap // 2] = 0
    voice = harmonic_voice(f0, sr, seed=seed)
    inst = pan(chords(seconds, sr), -0.5) + pan(drums(seconds, sr), 0.4)
    vocal = pan(voice, 0.0)
    return (vocal + inst).astype(np.float32), vocal, inst.astype(np.float32), f0


def reference_voice(seconds: float = 6.0, sr: int = SR, seed: int = 3) -> np.ndarray:
    """A speech-like reference: gliding F0 around 180 Hz with pauses, different formants."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 180 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    f0[(t % 1.5) > 1.2] = 0  # pauses
    return harmonic_voice(f0, sr, formants=(500, 1700, 2900), seed=seed)


def write(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T if audio.ndim == 2 else audio, sr, subtype=subtype)
    return path
