"""The whole pipeline on a generated 10 s song with the real default engines (spectral + world)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from inference import Canceled, Pipeline, PipelineConfig, STAGES, loudness, registry
from inference.errors import InputError
from tests import signals

SR = 44100


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    return (signals.write(d / "song.wav", signals.song(10.0)[0]),
            signals.write(d / "ref.wav", signals.reference_voice(6.0)))


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    events = []
    wd = tmp_path_factory.mktemp("run1")
    result = Pipeline(PipelineConfig(pitch_shift=2), on_event=events.append).run(*inputs, wd)
    return result, events, dict(registry.load_counts)


def test_artifacts_and_cover(first_run):
    result, _, _ = first_run
    for name in ("song", "reference", "vocals", "instrumental", "converted_vocals", "cover", "report"):
        assert result.artifacts[name].exists(), name
    info = sf.info(str(result.cover))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "PCM_16")
    assert abs(info.frames / SR - 10.0) < 0.010
    cover, _ = sf.read(str(result.cover), dtype="float32", always_2d=True)
    assert abs(loudness.integrated_lufs(cover.T, SR) + 14.0) <= 1.0
    assert loudness.true_peak_db(cover.T) <= -1.0 and np.count_nonzero(np.abs(cover) >= 1.0) == 0
    conv, sr = sf.read(str(result.artifacts["converted_vocals"]), dtype="float32")
    assert sr == SR and conv.ndim == 1 and len(conv) == 10 * SR and np.any(conv)
    assert not (result.workdir / "tmp").exists()


def test_report(first_run):
    result, _, _ = first_run
    rep = json.loads(result.artifacts["report"].read_text())
    assert rep == json.loads(json.dumps(result.report, default=str))
    assert rep["parameters"]["pitch_shift"] == 2 and rep["parameters"]["separator"] == "spectral"
    assert rep["engines"]["separator"]["name"] == "spectral" and rep["engines"]["converter"]["name"] == "world"
    assert all(rep["engines"][k]["version"] for k in ("separator", "converter"))
    assert set(rep["timings"]) == set(STAGES) and all(v >= 0 for v in rep["timings"].values())
    assert rep["input"]["duration"] == pytest.approx(10.0) and rep["output"]["duration"] == pytest.approx(10.0)
    assert abs(rep["duration_error_ms"]) < 10 and rep["real_time_factor"] > 0
    for key in ("song_lufs", "vocal_stem_lufs", "converted_lufs", "master_output_lufs", "master_true_peak_dbtp"):
        assert key in rep["loudness"]
    assert rep["output"]["true_peak_dbtp"] <= -1.0 and rep["warnings"] == []


def test_events_in_order_with_progress_inside_stages(first_run):
    _, events, _ = first_run
    marks = [(e.type, e.stage) for e in events if e.type != "progress"]
    assert marks == [(t, s) for s in STAGES for t in ("stage_started", "stage_finished")]
    current = None
    seen = {s: 0 for s in STAGES}
    last_overall = 0.0
    for e in events:
        if e.type == "stage_started":
            current = e.stage
        assert e.stage == current and 0.0 <= e.progress <= 1.0 and 0.0 <= e.overall <= 1.0
        if e.type == "progress":
            seen[e.stage] += 1
        if e.type != "progress":
            assert e.overall >= last_overall
            last_overall = e.overall
    assert all(seen[s] >= 1 for s in STAGES), seen
    assert events[-1].overall == pytest.approx(1.0)
    assert all(e.seconds is not None and e.seconds >= 0 for e in events if e.type == "stage_finished")


def test_second_run_reuses_the_engines(first_run, inputs, tmp_path):
    _, _, counts = first_run
    assert counts[("separator", "spectral")] == 1 and counts[("converter", "world")] == 1
    short = signals.write(tmp_path / "short.wav", signals.song(3.0)[0])
    Pipeline(PipelineConfig(pitch_shift=-1)).run(short, inputs[1], tmp_path / "run2")
    assert registry.load_counts[("separator", "spectral")] == 1
    assert registry.load_counts[("converter", "world")] == 1


def test_cancel(inputs, tmp_path):
    events = []
    with pytest.raises(Canceled) as e:
        Pipeline(on_event=events.append,
                 should_cancel=lambda: any(ev.stage == "separate" for ev in events)).run(*inputs, tmp_path)
    assert e.value.stage == "separate"
    assert not (tmp_path / "cover.wav").exists() and not (tmp_path / "tmp").exists()


@registry.register("separator", "test-silent-vocals")
class _NoVocals:
    name, version = "test-silent-vocals", "0"

    def separate(self, song, sr, ctx):
        ctx.progress(0.5)
        return np.zeros_like(song), song.copy()


def test_no_vocals_succeeds_with_a_warning(inputs, tmp_path):
    inst = signals.write(tmp_path / "inst.wav", signals.song(3.0)[2])
    result = Pipeline(PipelineConfig(separator="test-silent-vocals")).run(inst, inputs[1], tmp_path / "w")
    assert any(w.startswith("no vocals detected") for w in result.warnings)
    assert len(result.warnings) == 1
    assert result.report["engines"]["converter"]["skipped"] is True
    cover, sr = sf.read(str(result.cover), dtype="float32", always_2d=True)
    assert abs(loudness.integrated_lufs(cover.T, sr) + 14.0) <= 1.0


def test_input_error_names_stage_and_field(inputs, tmp_path):
    bad = tmp_path / "page.wav"
    bad.write_text("<html><body>404</body></html>")
    with pytest.raises(InputError) as e:
        Pipeline().run(inputs[0], bad, tmp_path / "w")
    assert (e.value.stage, e.value.field, e.value.code) == ("preprocess", "reference_voice", "unsupported_media")


def test_engine_failure_is_a_pipeline_error(inputs, tmp_path):
    from inference.errors import PipelineError

    @registry.register("converter", "test-broken")
    class _Broken:
        name, version = "test-broken", "0"

        def convert(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(PipelineError) as e:
        Pipeline(PipelineConfig(converter="test-broken")).run(inputs[0], inputs[1], tmp_path)
    assert str(e.value) == "infer: the converter 'test-broken' failed (RuntimeError: boom)"
    assert e.value.code == "engine_error"
    with pytest.raises(PipelineError) as e:
        Pipeline(PipelineConfig(converter="nope")).run(inputs[0], inputs[1], tmp_path)
    assert e.value.stage == "infer" and e.value.code == "unknown_engine"
    assert e.value.message.startswith("unknown converter engine 'nope'; available:")
