"""Bring your own stems: Pipeline.run(..., vocals_path=, instrumental_path=) skips separation."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from inference import Pipeline, PipelineConfig, registry
from tests import signals

SR = 22050


@registry.register("converter", "test-halve")
class _Halve:
    name, version = "test-halve", "0"

    def convert(self, vocal, sr, ref, ref_sr, params, ctx):
        return vocal * np.float32(0.5)


@pytest.fixture(scope="module")
def stems(tmp_path_factory):
    d = tmp_path_factory.mktemp("stems")
    _, vocal, inst, _ = signals.song(3.0, sr=SR)
    return (signals.write(d / "vocals.wav", vocal, SR), signals.write(d / "inst.flac", inst, SR),
            signals.write(d / "ref.wav", signals.reference_voice(4.0, sr=SR), SR), vocal, inst)


def _cfg(**kw):
    return PipelineConfig(converter="test-halve", quality_report=False, work_sample_rate=SR, **kw)


def test_own_vocals_and_instrumental_skip_separation(stems, tmp_path):
    vocals, inst, ref, vocal, instrumental = stems
    events = []
    res = Pipeline(_cfg(), on_event=events.append).run(None, ref, tmp_path, vocals_path=vocals,
                                                       instrumental_path=inst)
    sep = res.report["stages"]["separate"]
    assert sep["name"] == "provided" and sep["skipped"] and sep["cached"] and sep["instrumental"] == "provided"
    assert res.report["engines"]["separator"]["name"] == "provided"
    assert res.report["timings"]["separate"] < 1.0
    assert any(e.type == "stage_finished" and e.stage == "separate" and e.cached for e in events)
    got, sr = sf.read(str(res.artifacts["instrumental"]), dtype="float32", always_2d=True)
    assert sr == SR and np.allclose(got.T, instrumental, atol=1e-3)
    got, _ = sf.read(str(res.artifacts["vocals"]), dtype="float32", always_2d=True)
    assert np.allclose(got.T, vocal, atol=1e-3)
    info = sf.info(str(res.cover))
    assert info.samplerate == SR and abs(info.frames / SR - 3.0) < 0.01


def test_own_vocals_alone_get_a_silent_instrumental(stems, tmp_path):
    vocals, _, ref, _, _ = stems
    res = Pipeline(_cfg()).run(None, ref, tmp_path, vocals_path=vocals)
    assert res.report["stages"]["separate"]["instrumental"] == "silence"
    inst, _ = sf.read(str(res.artifacts["instrumental"]), dtype="float32")
    assert not np.any(inst) and len(inst) == 3 * SR
    assert res.report["input"]["duration"] == pytest.approx(3.0, abs=0.01)
    cover, _ = sf.read(str(res.cover), dtype="float32")
    assert np.any(cover)


def test_song_or_vocals_required(stems, tmp_path):
    with pytest.raises(ValueError):
        Pipeline(_cfg()).run(None, stems[2], tmp_path)
