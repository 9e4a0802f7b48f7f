"""Stages 4-5 and inference.loudness: loudness target, true-peak ceiling, no clipping, exact lengths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference import MixOptions, OutputOptions, PipelineConfig, StageContext, audio, loudness
from inference.stages import finalize, mix
from inference.stages.infer import Converted
from inference.stages.preprocess import Preprocessed
from inference.stages.separate import Separated
from tests import signals

SR = 44100


def test_true_peak_sees_intersample_peaks():
    # A sine at fs/4 sampled 45 degrees off its crests: samples reach 0.707, the wave reaches 1.0.
    n = np.arange(SR)
    x = np.sin(2 * np.pi * n / 4 + np.pi / 4).astype(np.float32)
    assert loudness.sample_peak_db(x) == pytest.approx(-3.01, abs=0.02)
    assert loudness.true_peak_db(x) == pytest.approx(0.0, abs=0.2)


def test_integrated_lufs_reference_tone():
    # BS.1770: a 997 Hz full-scale sine on one channel reads -3.01 LUFS.
    x = np.sin(2 * np.pi * 997 * np.arange(5 * SR) / SR).astype(np.float32)
    assert loudness.integrated_lufs(x, SR) == pytest.approx(-3.01, abs=0.05)
    short = x[: int(0.2 * SR)]                              # shorter than one 400 ms block
    assert loudness.integrated_lufs(short, SR) == pytest.approx(-3.01, abs=0.1)
    assert loudness.integrated_lufs(np.zeros(SR), SR) == loudness.SILENCE_DB
    assert loudness.integrated_lufs(x * 1e-5, SR) == pytest.approx(-103.7, abs=0.1)  # gated away -> RMS - 0.691


@pytest.mark.parametrize("case", ["song", "mono", "gaps", "noise48k", "five_channels"])
def test_integrated_lufs_matches_pyloudnorm_blockwise(case, tmp_path):
    # longer than several of loudness's blocks: the block-wise K-weighting and gating must read
    # what pyloudnorm reads on the whole float64 signal (within 0.1 LU; in practice ~1e-6)
    import pyloudnorm
    rng = np.random.default_rng(1)
    song = signals.song(20.0)[0]
    sr = 48000 if case == "noise48k" else SR
    x = {"song": song, "mono": song.mean(axis=0),
         "gaps": np.concatenate([song[:, : 5 * SR], song[:, : 5 * SR] * 1e-3, song[:, : 4 * SR]], axis=1),
         "noise48k": (0.1 * rng.standard_normal((2, 17 * sr))).astype(np.float32),
         "five_channels": np.concatenate([song, song * 0.5, song[:1] * 0.2], axis=0)}[case]
    want = pyloudnorm.Meter(sr).integrated_loudness(np.asarray(x, np.float64).T)
    assert loudness.integrated_lufs(x, sr) == pytest.approx(want, abs=0.1)
    assert loudness.integrated_lufs(x, sr) == pytest.approx(want, abs=1e-3)
    # measured with a gain and a per-sample curve, without making the product
    curve = np.linspace(0.2, 1.0, x.shape[-1], dtype=np.float32)
    assert loudness.integrated_lufs(x, sr, gain=2.0, curve=curve) == pytest.approx(
        loudness.integrated_lufs(x * np.float32(2.0) * curve, sr), abs=1e-3)
    # and straight from a file, in blocks
    path = audio.write_wav(tmp_path / "x.wav", x if x.shape[0] <= 2 else x[:2], sr)
    assert loudness.file_lufs(path) == pytest.approx(loudness.integrated_lufs(x if x.shape[0] <= 2 else x[:2], sr),
                                                     abs=1e-3)


def test_normalize_in_place_and_blockwise_limiter():
    # a loud 20 s song (several limiter/true-peak blocks): in place, same result as a copy
    x = np.clip(signals.song(20.0)[0] * 3, -1, 1)
    y, rep = loudness.normalize(x, SR, -9.0, -1.0)
    assert rep.limited and y is not x
    z = x.copy()
    w, rep2 = loudness.normalize(z, SR, -9.0, -1.0, inplace=True)
    assert w is z and np.array_equal(w, y) and rep2 == rep
    _check_master(y, x, target=-9.0)


def _check_master(y, x, sr=SR, target=-14.0):
    assert y.shape == x.shape and y.dtype == np.float32
    assert abs(loudness.integrated_lufs(y, sr) - target) <= 1.0
    assert loudness.true_peak_db(y) <= -1.0
    assert np.count_nonzero(np.abs(y) >= 1.0) == 0


@pytest.mark.parametrize("case", ["song", "clipped", "quiet", "short", "mono"])
def test_normalize(case):
    song = signals.song(6.0)[0]
    x = {"song": song, "clipped": np.clip(song * 6, -1, 1), "quiet": song * 0.01,
         "short": song[:, : int(0.3 * SR)], "mono": song.mean(axis=0)}[case]
    y, rep = loudness.normalize(x, SR, -14.0, -1.0)
    _check_master(y, x)
    assert rep.clipped_samples == 0 and rep.true_peak_dbtp <= -1.0


def test_normalize_silence_stays_silent():
    y, rep = loudness.normalize(np.zeros((2, SR), np.float32), SR)
    assert not np.any(y) and rep.output_lufs == loudness.SILENCE_DB


def _pre(tmp_path, song, sr=SR, original_sr=SR, original_channels=None, original_samples=None):
    ch = song.shape[0]
    n = original_samples or song.shape[1]
    return Preprocessed(song=song, sr=sr, reference=signals.reference_voice(4.0), ref_sr=SR,
                        original_sr=original_sr, original_channels=original_channels or ch,
                        original_samples=n, original_duration=n / original_sr, song_format="wav",
                        reference_duration=4.0, reference_voice_seconds=3.0,
                        song_path=tmp_path / "song.wav", reference_path=tmp_path / "reference.wav")


def _ctx(tmp_path, stage):
    return StageContext(stage=stage, workdir=tmp_path)


def _stages(tmp_path, seconds=5.0, conv_gain=0.1, conv_len_delta=0, cfg=None):
    mixture, vocal, inst, _ = signals.song(seconds)
    pre = _pre(tmp_path, mixture)
    sep = Separated(vocals=vocal, instrumental=inst, sr=SR, has_vocals=True,
                    vocals_path=tmp_path / "vocals.wav", instrumental_path=tmp_path / "instrumental.wav")
    conv_vocal = (conv_gain * vocal[0])[: vocal.shape[1] + conv_len_delta]
    conv = Converted(vocal=conv_vocal, sr=SR, converted=True, path=tmp_path / "converted_vocals.wav")
    cfg = cfg or PipelineConfig()
    return pre, sep, conv, cfg


def test_mix_matches_vocal_loudness_and_masters(tmp_path):
    pre, sep, conv, cfg = _stages(tmp_path, conv_len_delta=-1000)   # converter returned a bit short
    ctx = _ctx(tmp_path, "mix")
    out = mix.run(pre, sep, conv, cfg, ctx)
    _check_master(out.master, pre.song)
    lo = ctx.info["loudness"]
    # the converted vocal was 20 dB down: the match brings it back to the stem's loudness
    assert lo["vocal_match_gain_db"] == pytest.approx(20.0, abs=0.2)
    assert lo["converted_lufs"] < lo["vocal_stem_lufs"]
    for key in ("song_lufs", "vocal_stem_lufs", "master_output_lufs", "master_true_peak_dbtp"):
        assert key in lo
    assert (tmp_path / "mix.wav").exists()
    # the converted vocal sits in the centre: alone, both channels are the same
    sep.instrumental = np.zeros_like(sep.instrumental)
    alone = mix.run(pre, sep, conv, cfg, _ctx(tmp_path, "mix")).master
    assert np.any(alone) and np.allclose(alone[0], alone[1])


def test_mix_with_effects_and_gains(tmp_path):
    cfg = PipelineConfig(mix=MixOptions(reverb=0.4, compression=True, vocal_gain_db=3.0, instrumental_gain_db=-3.0))
    pre, sep, conv, _ = _stages(tmp_path, seconds=3.0)
    out = mix.run(pre, sep, conv, cfg, _ctx(tmp_path, "mix"))
    _check_master(out.master, pre.song)


def test_mix_clipped_master_and_silent_vocal(tmp_path):
    pre, sep, conv, cfg = _stages(tmp_path, seconds=3.0)
    pre.song = np.clip(pre.song * 8, -1, 1)
    sep.instrumental = np.clip(sep.instrumental * 8, -1, 1)
    conv.vocal = np.zeros_like(conv.vocal)
    conv.converted = False
    ctx = _ctx(tmp_path, "mix")
    out = mix.run(pre, sep, conv, cfg, ctx)
    _check_master(out.master, pre.song)
    assert ctx.info["loudness"]["vocal_match_gain_db"] == 0.0


@pytest.mark.parametrize("rate,channels,seconds", [(48000, 2, 3.0), (22050, 1, 2.5), (44100, 2, 0.3)])
def test_finalize_keeps_rate_channels_and_length(tmp_path, rate, channels, seconds):
    n = int(round(seconds * rate)) + 7                      # a length that does not divide evenly
    master = signals.song(seconds + 0.1)[0][:channels]
    work_n = int(round(n * SR / rate))
    master = loudness.normalize(master[:, :work_n], SR)[0]
    pre = _pre(tmp_path, master, original_sr=rate, original_channels=channels, original_samples=n)
    mixed = mix.Mixed(master=master, sr=SR, loudness={"master_output_lufs": -14.0}, path=tmp_path / "mix.wav")
    report: dict = {}
    res = finalize.run(pre, mixed, PipelineConfig(), report, _ctx(tmp_path, "finalize"))
    info = sf.info(str(res.cover))
    assert (info.samplerate, info.channels, info.subtype) == (rate, channels, "PCM_16")
    assert abs(info.frames / rate - n / rate) < 0.010
    data, _ = audio.read_wav(res.cover)
    _check_master(data, data, sr=rate)
    saved = json.loads(Path(res.artifacts["report"]).read_text())
    assert saved["output"]["sample_rate"] == rate and saved["output"]["channels"] == channels
    assert abs(saved["duration_error_ms"]) < 10


def test_finalize_24_bit_and_extra_formats(tmp_path):
    master = loudness.normalize(signals.song(2.0)[0], SR)[0]
    pre = _pre(tmp_path, master)
    mixed = mix.Mixed(master=master, sr=SR, loudness={}, path=tmp_path / "mix.wav")
    cfg = PipelineConfig(output=OutputOptions(bit_depth=24, extra_formats=("flac", "mp3")))
    res = finalize.run(pre, mixed, cfg, {}, _ctx(tmp_path, "finalize"))
    assert sf.info(str(res.cover)).subtype == "PCM_24"
    assert sf.info(str(res.artifacts["cover_flac"])).subtype == "PCM_24"
    mp3 = audio.probe(res.artifacts["cover_mp3"], "cover")
    assert mp3.format == "mp3" and mp3.sample_rate == SR and mp3.channels == 2
    data, _ = audio.decode(res.artifacts["cover_mp3"], "cover")
    assert abs(data.shape[1] / SR - 2.0) < 0.03


def test_finalize_output_overrides(tmp_path):
    master = loudness.normalize(signals.song(2.0)[0], SR)[0]
    pre = _pre(tmp_path, master)
    mixed = mix.Mixed(master=master, sr=SR, loudness={}, path=tmp_path / "mix.wav")
    cfg = PipelineConfig(output=OutputOptions(sample_rate=16000, channels=1))
    res = finalize.run(pre, mixed, cfg, {}, _ctx(tmp_path, "finalize"))
    info = sf.info(str(res.cover))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 32000)
    data, _ = audio.read_wav(res.cover)
    _check_master(data, data, sr=16000)
