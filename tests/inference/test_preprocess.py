"""Stage 1: every bad input is refused with its exact message; good inputs keep rate/channels facts."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy import signal as sps

from inference import Limits, PipelineConfig, StageContext
from inference.errors import InputError
from inference.stages import preprocess
from tests import signals

SR = 44100


def run(tmp_path, song, ref, **cfg):
    ctx = StageContext(stage="preprocess", workdir=tmp_path / "work")
    ctx.workdir.mkdir(exist_ok=True)
    return preprocess.run(song, ref, PipelineConfig(**cfg), ctx), ctx


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    song = signals.song(3.0)[0]
    return {
        "song": signals.write(d / "song.wav", song),
        "ref": signals.write(d / "ref.wav", signals.reference_voice(5.0)),
        "mono22": signals.write(d / "mono22.wav", signals.song(3.0, sr=22050)[0].mean(axis=0), 22050),
        "silence": signals.write(d / "silence.wav", np.zeros((2, SR * 3), np.float32)),
        "ref_silence": signals.write(d / "ref_silence.wav", np.zeros(SR * 5, np.float32)),
        "ref_short": signals.write(d / "ref_short.wav", signals.reference_voice(2.0)),
        "ref_noise": signals.write(d / "ref_noise.wav", signals.noise(5.0, amp=0.2)),
        "three": signals.write(d / "three.wav", np.stack([song[0], song[1], song[0]])),
        "lowrate": signals.write(d / "low.wav", signals.noise(3.0, sr=4000), 4000),
    }


def test_good_inputs(tmp_path, files):
    pre, ctx = run(tmp_path, files["song"], files["ref"])
    assert pre.song.shape == (2, 3 * SR) and pre.sr == SR
    assert (pre.original_sr, pre.original_channels, pre.original_samples) == (SR, 2, 3 * SR)
    assert pre.reference.ndim == 1 and abs(pre.reference_duration - 5.0) < 1e-3
    assert pre.reference_voice_seconds > 2.0
    assert (ctx.workdir / "song.wav").exists() and (ctx.workdir / "reference.wav").exists()
    assert sf.info(str(ctx.workdir / "song.wav")).channels == 2


def test_mono_low_rate_song_stays_mono(tmp_path, files):
    pre, _ = run(tmp_path, files["mono22"], files["ref"])
    assert pre.song.shape == (1, 3 * SR)                  # resampled to the work rate, still mono
    assert (pre.original_sr, pre.original_channels, pre.original_samples) == (22050, 1, 3 * 22050)


@pytest.mark.parametrize("song,ref,cfg,field,code,message", [
    ("silence", "ref", {}, "song", "silent_audio", "song is digital silence (every sample is zero)"),
    ("song", "ref_silence", {}, "reference_voice", "silent_audio",
     "reference_voice is digital silence (every sample is zero)"),
    ("song", "ref_short", {}, "reference_voice", "too_short",
     "reference_voice is 2.0 s long; it must be at least 3 s of clear speech"),
    ("song", "ref_noise", {}, "reference_voice", "no_voice",
     "reference_voice contains no voice we can detect (0.0 s found, at least 1 s needed); "
     "upload a clip of the target voice speaking or singing alone"),
    ("song", "ref", {"limits": Limits(max_song_seconds=2.0)}, "song", "too_long",
     "song is longer than the limit of 2 s"),
    ("song", "ref", {"limits": Limits(max_reference_seconds=4.0)}, "reference_voice", "too_long",
     "reference_voice is longer than the limit of 4 s"),
    ("three", "ref", {}, "song", "too_many_channels",
     "song has 3 channels; at most 2 are supported (mono or stereo)"),
    ("lowrate", "ref", {}, "song", "unsupported_rate",
     "song has a sample rate of 4000 Hz; supported rates are 8000-192000 Hz"),
])
def test_rejections(tmp_path, files, song, ref, cfg, field, code, message):
    with pytest.raises(InputError) as e:
        run(tmp_path, files[song], files[ref], **cfg)
    assert (e.value.field, e.value.code, e.value.stage) == (field, code, "preprocess")
    assert e.value.message == message
    assert str(e.value) == f"preprocess: {message}"


def test_song_far_over_the_limit_is_refused_from_the_header(tmp_path, files, monkeypatch):
    # The header says 3 s; a 1 s limit is refused before decoding anything.
    from inference import audio
    called = []
    monkeypatch.setattr(audio, "decode", lambda *a, **k: called.append(1))
    with pytest.raises(InputError) as e:
        run(tmp_path, files["song"], files["ref"], limits=Limits(max_song_seconds=1.0))
    assert e.value.message == "song is 3 s long; the limit is 1 s" and not called


@pytest.mark.parametrize("kind", ["white", "brown", "pink"])
def test_voice_detector_fallback(kind):
    x = {"white": signals.noise(5.0, amp=0.2),
         "brown": np.cumsum(signals.noise(5.0)) / 100,
         "pink": sps.lfilter([1.0], [1.0, -0.95], signals.noise(5.0)).astype(np.float32)}[kind]
    assert preprocess.voice_seconds(x, SR) < 1.0
    assert preprocess.voice_seconds(signals.reference_voice(5.0), SR) > 3.0
