"""inference.quality: pitch accuracy against the (shifted) input melody, speaker similarity to the
reference with Resemblyzer, graceful None for silence, and its place in the pipeline's report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference import Pipeline, PipelineConfig, quality
from tests import signals

SR = 16000
VOICE_A = (300, 2300, 3000)      # formants of the "reference" speaker
VOICE_B = (800, 1100, 2500)      # someone else


@pytest.fixture(scope="module")
def melody():
    return signals.melody_f0([220.0, 246.9, 261.6, 293.7, 329.6, 293.7, 261.6, 246.9], 0.5, SR,
                             vibrato_cents=30)


@pytest.fixture(scope="module")
def input_vocal(melody):
    return signals.harmonic_voice(melody, SR, formants=VOICE_B, seed=1)


@pytest.fixture(scope="module")
def reference():
    t = np.arange(5 * SR) / SR
    f0 = 220 + 20 * np.sin(2 * np.pi * 0.7 * t)
    f0[(t % 1.5) > 1.3] = 0
    return signals.harmonic_voice(f0, SR, formants=VOICE_A, seed=5)


def sung(melody, semitones: float, formants=VOICE_A, seed: int = 2):
    return signals.harmonic_voice(melody * 2.0 ** (semitones / 12.0), SR, formants=formants, seed=seed)


def test_correctly_shifted_vocal_scores_high(melody, input_vocal, reference):
    rep = quality.assess(sung(melody, 3), input_vocal, SR, reference, SR, 3, device="cpu")
    assert rep.pitch_accuracy >= 0.9 and not rep.quality_warning
    assert rep.median_cents_error < 20 and rep.voiced_seconds > 3.5
    assert 0 < rep.speaker_similarity <= 1 and 0 < rep.original_similarity <= 1
    assert rep.notes == []
    d = rep.as_dict()
    assert json.loads(json.dumps(d)) == d and set(d) >= {"pitch_accuracy", "speaker_similarity",
                                                         "quality_warning", "notes"}


def test_a_long_vocal_is_measured_on_windows_spread_over_it(melody, input_vocal, reference, monkeypatch):
    """Past SAMPLE_SECONDS the report samples the vocal; the figures still say what they say on
    the whole: a correct conversion scores high, one that goes wrong in the second half low."""
    monkeypatch.setattr(quality, "SAMPLE_SECONDS", 4.0)
    monkeypatch.setattr(quality, "SAMPLE_WINDOW_S", 1.0)
    reps = 4   # 16 s of vocal: four 4-s melodies, sampled down to 4 s
    long_in = np.tile(input_vocal, reps)
    good = np.tile(sung(melody, 3), reps)
    half_wrong = good.copy()
    half_wrong[len(good) // 2:] = np.tile(sung(melody, 3 + 5), reps)[len(good) // 2:]
    rep = quality.assess(good, long_in, SR, reference, SR, 3, device="cpu")
    assert rep.sampled_seconds == 4.0 and rep.voiced_seconds <= 4.0 + 0.1
    assert rep.pitch_accuracy >= 0.9
    rep2 = quality.assess(half_wrong, long_in, SR, reference, SR, 3, device="cpu", similarity=False)
    assert rep2.sampled_seconds == 4.0 and 0.3 < rep2.pitch_accuracy < 0.7
    # short vocals are measured whole
    assert quality.assess(sung(melody, 3), input_vocal, SR, reference, SR, 3, device="cpu",
                          similarity=False).sampled_seconds is None


def test_wrong_pitch_is_flagged(melody, input_vocal, reference):
    # 70 cents sharp of the asked-for shift
    rep = quality.assess(sung(melody, 3.7), input_vocal, SR, reference, SR, 3, device="cpu", similarity=False)
    assert rep.pitch_accuracy < 0.85 and rep.quality_warning
    assert any("under 85%" in n for n in rep.notes)
    assert rep.speaker_similarity is None


def test_quiet_accompaniment_leaking_into_the_stem_is_not_the_melody(melody, reference):
    # the separated stem: singing with gaps, and a quiet pitched instrument audible in the gaps
    f0 = melody.copy()
    t = np.arange(len(f0)) / SR
    gaps = (t % 1.0) > 0.7
    f0[gaps] = 0
    leak = np.where(gaps, 0.3 * 10 ** (-30 / 20) * np.sin(2 * np.pi * 370.0 * t), 0).astype(np.float32)
    stem = signals.harmonic_voice(f0, SR, formants=VOICE_B, seed=1) + leak
    converted = sung(f0, 3)    # sings the melody, silent in the gaps
    rep = quality.assess(converted, stem, SR, reference, SR, 3, device="cpu", similarity=False)
    assert rep.pitch_accuracy >= 0.9 and not rep.quality_warning
    assert rep.voiced_seconds < 0.75 * len(f0) / SR


def test_octave_moved_by_auto_pitch(melody, input_vocal, reference):
    up = sung(melody, 12)   # auto_pitch moved the melody one octave up
    told = quality.assess(up, input_vocal, SR, reference, SR, 0, device="cpu", octave_shift=1, similarity=False)
    found = quality.assess(up, input_vocal, SR, reference, SR, 0, device="cpu", auto_pitch=True,
                           similarity=False)
    plain = quality.assess(up, input_vocal, SR, reference, SR, 0, device="cpu", similarity=False)
    assert told.pitch_accuracy >= 0.9 and found.pitch_accuracy >= 0.9 and found.octave_shift == 1
    assert plain.pitch_accuracy < 0.1 and plain.quality_warning   # without auto_pitch an octave is wrong


def test_similarity_to_self_beats_another_voice(melody, input_vocal, reference):
    e_ref = quality.embed(reference, SR, device="cpu")
    same = quality.cosine(quality.embed(sung(melody, 0, VOICE_A), SR, device="cpu"), e_ref)
    other = quality.cosine(quality.embed(sung(melody, 0, VOICE_B), SR, device="cpu"), e_ref)
    assert same > other + 0.05
    # in the report: the converted vocal (reference's timbre) against the input (another's)
    rep = quality.assess(sung(melody, 0, VOICE_A), input_vocal, SR, reference, SR, 0, device="cpu")
    assert rep.speaker_similarity == pytest.approx(same, abs=0.02)
    assert rep.speaker_similarity > rep.original_similarity + 0.05
    assert quality.load_encoder("cpu") is quality.load_encoder("cpu")   # loaded once per process


def test_silence_gives_none(melody, input_vocal, reference):
    silent = np.zeros_like(input_vocal)
    rep = quality.assess(silent, input_vocal, SR, reference, SR, 0, device="cpu")
    assert rep.pitch_accuracy is None and rep.speaker_similarity is None and not rep.quality_warning
    assert any("silent" in n for n in rep.notes) and rep.original_similarity is not None
    both = quality.assess(silent, silent, SR, reference, SR, 0, device="cpu")
    assert both.pitch_accuracy is None and both.speaker_similarity is None and both.original_similarity is None
    assert quality.embed(np.zeros(SR * 3, np.float32), SR) is None


def test_pitch_accuracy_counts_unvoiced_output_as_misses():
    fin = np.array([0, 200, 200, 200, 200, 0], float)
    fout = np.array([0, 0, 200 * 2 ** (2 / 12), 200 * 2 ** (2.2 / 12), 200 * 2 ** (3 / 12), 300], float)
    acc, octs, med, nv = quality.pitch_accuracy(fout, fin, 2)
    assert nv == 4 and octs == 0 and acc == pytest.approx(0.5)   # 0 and +100 cents miss
    assert quality.pitch_accuracy(fout, np.zeros(6), 2)[0] is None


@pytest.mark.slow
def test_pipeline_reports_quality(tmp_path):
    mix, *_ = signals.song(4.0, 22050)
    song = signals.write(tmp_path / "song.wav", mix, 22050)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(4.0, 22050), 22050)
    result = Pipeline(PipelineConfig(pitch_shift=2, work_sample_rate=22050)).run(song, ref, tmp_path / "on")
    q = result.quality
    assert q is not None and result.report["quality"] == q
    assert json.loads(result.artifacts["report"].read_text())["quality"] == q
    assert 0.0 <= q["pitch_accuracy"] <= 1.0 and 0.0 < q["speaker_similarity"] <= 1.0
    assert q["quality_warning"] == (q["pitch_accuracy"] < 0.85)

    off = Pipeline(PipelineConfig(pitch_shift=2, work_sample_rate=22050, quality_report=False)).run(
        song, ref, tmp_path / "off")
    assert off.quality is None and "quality" not in off.report
