"""The ``world`` converter on generated audio: pitch, auto-pitch, silence, timbre, cancel, progress, cache."""
from __future__ import annotations

import numpy as np
import pytest

from inference import registry
from inference.context import StageContext
from inference.engines import pitch as pitchmod
from inference.engines.base import ConversionParams
from inference.errors import Canceled
from tests.signals import harmonic_voice, melody_f0, noise, reference_voice

SR = 22050
NOTES = [220.0, 246.9, 261.6, 293.7]
NOTE_S = 0.75


@pytest.fixture(scope="module")
def engine():
    return registry.get_engine("converter", "world")


@pytest.fixture(scope="module")
def ref():
    return reference_voice(6.0, SR)


@pytest.fixture(scope="module")
def vocal():
    f0 = melody_f0(NOTES, NOTE_S, SR, vibrato_cents=20)
    return harmonic_voice(f0, SR), f0


_OUT: dict[int, np.ndarray] = {}


def _shifted(engine, ref, vocal, tmp_path, semitones):
    if semitones not in _OUT:
        _OUT[semitones] = engine.convert(vocal[0], SR, ref, SR, ConversionParams(pitch_shift=semitones),
                                         _ctx(tmp_path))
    return _OUT[semitones]


def _ctx(tmp_path, **kw):
    return StageContext("infer", tmp_path, **kw)


def _track(x, sr):
    t, f0, per = pitchmod.track_f0(x, sr, device="cpu", model="tiny")
    return t, f0, per


def _cents_vs_truth(out, f0_truth, factor):
    t, f0, per = _track(out, SR)
    idx = np.clip((t * SR).astype(int), 0, len(f0_truth) - 1)
    truth = f0_truth[idx] * factor
    ok = (truth > 0) & (t > 0.05) & (t < len(f0_truth) / SR - 0.05)
    return 1200 * np.log2(np.maximum(f0[ok], 1e-3) / truth[ok])


@pytest.mark.parametrize("semitones", [0, 3, -5])
def test_pitch_follows_the_shift(engine, ref, vocal, tmp_path, semitones):
    x, f0 = vocal
    out = _shifted(engine, ref, vocal, tmp_path, semitones)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out))
    cents = _cents_vs_truth(out, f0, 2 ** (semitones / 12))
    assert abs(np.median(cents)) < 50
    assert np.mean(np.abs(cents) < 50) >= 0.9


def test_auto_pitch_moves_by_whole_octaves_toward_the_reference(engine, ref, tmp_path):
    for notes, octaves in (([440.0, 493.9], -1), ([110.0, 123.5], 1)):
        f0 = melody_f0(notes, 1.0, SR)
        x = harmonic_voice(f0, SR)
        ctx = _ctx(tmp_path)
        out = engine.convert(x, SR, ref, SR, ConversionParams(auto_pitch=True), ctx)
        assert ctx.info["auto_pitch_octaves"] == octaves
        cents = _cents_vs_truth(out, f0, 2.0 ** octaves)
        assert np.mean(np.abs(cents) < 50) >= 0.9


def test_silence_in_silence_out(engine, ref, tmp_path):
    sr = 44100
    x = np.zeros(3 * sr, np.float32)
    ctx = _ctx(tmp_path)
    out = engine.convert(x, sr, ref, SR, ConversionParams(), ctx)
    assert out.shape == x.shape and not np.any(out)
    assert ctx.warnings
    # silent gaps around a sung note stay silent (no hiss), at a rate above the work rate
    f0 = melody_f0([0.0, 261.6, 0.0], 1.0, sr)
    x = harmonic_voice(f0, sr)
    out = engine.convert(x, sr, ref, SR, ConversionParams(pitch_shift=2), _ctx(tmp_path))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    gap = np.r_[out[: int(0.9 * sr)], out[int(2.1 * sr):]]
    assert np.max(np.abs(gap)) < 1e-4
    assert np.sqrt(np.mean(out[int(1.2 * sr): int(1.8 * sr)] ** 2)) > 0.01


def test_no_voice_gives_near_silence_and_a_warning(engine, ref, tmp_path):
    x = noise(3.0, SR, amp=0.1)
    ctx = _ctx(tmp_path)
    out = engine.convert(x, SR, ref, SR, ConversionParams(), ctx)
    assert out.shape == x.shape
    assert np.sqrt(np.mean(out ** 2)) < 1e-3
    assert any("no singing voice" in w for w in ctx.warnings)


def _centroid(x, sr):
    spec = np.abs(np.fft.rfft(x[: len(x) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048), axis=1)) ** 2
    spec = spec[spec.sum(axis=1) > 1e-3 * spec.sum(axis=1).max()].mean(axis=0)
    f = np.fft.rfftfreq(2048, 1 / sr)
    band = f < 5000
    return float((f[band] * spec[band]).sum() / spec[band].sum())


def test_envelope_moves_toward_the_reference(engine, ref, vocal, tmp_path):
    x, _ = vocal
    out = _shifted(engine, ref, vocal, tmp_path, 0)
    c_in, c_out, c_ref = _centroid(x, SR), _centroid(out, SR), _centroid(ref, SR)
    assert abs(c_out - c_ref) < 0.7 * abs(c_in - c_ref), (c_in, c_out, c_ref)


def test_progress_and_cancel(engine, ref, vocal, tmp_path):
    x, _ = vocal
    events = []
    ctx = _ctx(tmp_path, on_event=events.append)
    engine.convert(x, SR, ref, SR, ConversionParams(), ctx)
    fr = [e.progress for e in events]
    assert len(fr) >= 4 and fr[-1] == 1.0
    assert all(b >= a - 1e-9 for a, b in zip(fr, fr[1:]))
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Canceled):
        engine.convert(x, SR, ref, SR, ConversionParams(), _ctx(tmp_path, should_cancel=cancel))


def test_reference_analysis_is_cached_between_jobs(ref, vocal, tmp_path):
    x, _ = vocal
    eng = registry.get_engine("converter", "world")
    assert registry.get_engine("converter", "world") is eng
    if not eng.reference_analyses:  # run alone: analyse ``ref`` once first
        eng.convert(x, SR, ref, SR, ConversionParams(), _ctx(tmp_path))
    n = eng.reference_analyses
    ctx = _ctx(tmp_path)
    eng.convert(x, SR, ref, SR, ConversionParams(), ctx)
    assert ctx.info["reference_cached"] is True
    assert eng.reference_analyses == n
    other = ref * 0.5
    ctx = _ctx(tmp_path)
    eng.convert(x, SR, other, SR, ConversionParams(), ctx)
    assert ctx.info["reference_cached"] is False and eng.reference_analyses == n + 1


def test_warp_ignores_a_tilt_over_the_whole_vocal(engine, ref, vocal, tmp_path):
    """Leaked accompaniment tilts a separated vocal's average envelope; the vocal-tract-length
    warp is searched on mean-normalised mel-cepstra, so a tilt over the whole vocal (a one-pole
    low-pass here, about +10 dB at low frequencies against high) leaves it where it was."""
    from scipy.signal import lfilter

    x, _ = vocal
    tilted = lfilter([1.0], [1.0, -0.7], x).astype(np.float32)
    tilted *= np.sqrt(np.mean(x ** 2) / np.mean(tilted ** 2))
    warps = []
    for sig in (x, tilted):
        ctx = _ctx(tmp_path)
        engine.convert(sig, SR, ref, SR, ConversionParams(pitch_shift=0), ctx)
        warps.append(ctx.info["warp_factor"])
    assert warps[0] == warps[1], warps


def _pluck_leak(seconds, sr, f0=196.0, every=0.4):
    """A guitar-like leak: plucked harmonic notes (1/k harmonics, decaying), one every ``every`` s."""
    n = int(every * sr)
    t = np.arange(n) / sr
    note = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12)) * np.exp(-3.0 * t)
    reps = int(np.ceil(seconds / every))
    return np.tile(note, reps)[: int(seconds * sr)].astype(np.float32)


def test_gaps_holding_only_leak_become_near_silent_breath(engine, ref, tmp_path):
    # two sung phrases; a separated stem's leak (a plucked guitar 22 dB down) all along, alone
    # in the gaps between, before and after them; the tracker hears a pitch in all of it, and
    # before the voicing gate the converter sang it as a tone (tracker periodicity 0.88 there)
    seg = [(0.0, 0.8, None), (0.8, 2.0, [220.0, 246.9]), (2.0, 3.4, None), (3.4, 4.6, [261.6, 293.7]),
           (4.6, 5.4, None)]
    n = int(seg[-1][1] * SR)
    f0 = np.zeros(n)
    for a, b, notes in seg:
        if notes:
            m = melody_f0(notes, (b - a) / 2, SR, vibrato_cents=20)
            f0[int(a * SR): int(a * SR) + len(m)] = m
    voice = harmonic_voice(f0, SR)
    rms_voice = np.sqrt(np.mean(voice[f0 > 0] ** 2))
    leak = _pluck_leak(n / SR, SR)
    leak *= rms_voice * 10 ** (-22 / 20) / np.sqrt(np.mean(leak ** 2))
    x = (voice + leak).astype(np.float32)
    ctx = _ctx(tmp_path)
    out = engine.convert(x, SR, ref, SR, ConversionParams(), ctx)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    assert ctx.info["gated_seconds"] > 1.0   # the tracker's voicing in the leak was overruled

    def rms_db(a, b):
        y = out[int(a * SR): int(b * SR)]
        return 10 * np.log10(np.mean(y.astype(np.float64) ** 2) + 1e-20)

    phrases = (rms_db(0.9, 1.9) + rms_db(3.5, 4.5)) / 2
    # the middle of each gap (a margin for the crossfade at the phrase edges)
    for a, b in ((0.05, 0.6), (2.25, 3.15), (4.85, 5.35)):
        assert rms_db(a, b) < phrases - 30, (a, b, rms_db(a, b), phrases)
    # and what is left there is breath, not a tone: the tracker finds no confident pitch in it
    t, _, per = _track(out, SR)
    gap = ((t > 2.25) & (t < 3.15)) | ((t > 0.1) & (t < 0.6))
    assert np.median(per[gap]) < 0.4
    # the phrases keep their melody
    cents = _cents_vs_truth(out, f0, 1.0)
    assert np.mean(np.abs(cents) < 50) >= 0.9
