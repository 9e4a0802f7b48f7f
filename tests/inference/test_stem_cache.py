"""The stem cache: a second cover of the same song skips the separator (stage reported cached,
~0 s, report.json says so); other separator settings, another song, an expired or broken entry
are misses. inference only: no Django."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from inference import Pipeline, PipelineConfig, registry
from inference.stem_cache import FileStemCache, StemCache, stem_cache_key
from tests import signals

CALLS: list[dict] = []
SEP_SECONDS = 0.6


@registry.register("separator", "cache-test")
class _SlowSeparator:
    name, version = "cache-test", "1"

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def separate(self, song, sr, ctx):
        CALLS.append({"gain": self.gain})
        time.sleep(SEP_SECONDS)  # a real separator takes seconds to minutes
        mid = song.mean(axis=0, keepdims=True)
        return np.repeat(mid, song.shape[0], axis=0) * self.gain, song - mid


@registry.register("converter", "cache-test")
class _Converter:
    name, version = "cache-test", "1"

    def convert(self, vocal, sr, ref, ref_sr, params, ctx):
        return vocal * np.float32(0.5)


def _cfg(**engine_options) -> PipelineConfig:
    return PipelineConfig(separator="cache-test", converter="cache-test", quality_report=False,
                          engine_options=engine_options)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stem-cache-audio")
    mix, *_ = signals.song(seconds=3.0)
    other, *_ = signals.song(seconds=3.0, seed=7)
    return {"song": signals.write(d / "song.wav", mix), "other": signals.write(d / "other.wav", other * 0.8),
            "ref1": signals.write(d / "ref1.wav", signals.reference_voice(seconds=4.0)),
            "ref2": signals.write(d / "ref2.wav", signals.reference_voice(seconds=4.0, seed=9))}


def _run(cache, song, ref, workdir, cfg=None):
    events = []
    result = Pipeline(cfg or _cfg(), on_event=events.append, stem_cache=cache).run(song, ref, workdir)
    sep_done = [e for e in events if e.stage == "separate" and e.type == "stage_finished"]
    report = json.loads(result.artifacts["report"].read_text())
    return result, sep_done[0], report


def test_second_cover_of_the_same_song_is_cached_and_faster(files, tmp_path):
    assert isinstance(FileStemCache(tmp_path), StemCache)
    cache = FileStemCache(tmp_path / "cache")
    CALLS.clear()
    r1, ev1, rep1 = _run(cache, files["song"], files["ref1"], tmp_path / "w1")
    assert len(CALLS) == 1 and not ev1.cached and not rep1["stages"]["separate"].get("cached")
    assert len(list((tmp_path / "cache").iterdir())) == 1

    r2, ev2, rep2 = _run(cache, files["song"], files["ref2"], tmp_path / "w2")  # another voice
    assert len(CALLS) == 1, "the separator ran again"
    assert ev2.cached is True and ev2.seconds < SEP_SECONDS / 2 < ev1.seconds
    assert rep2["stages"]["separate"]["cached"] is True
    assert rep2["engines"]["separator"] == {"name": "cache-test", "version": "1", "cached": True}
    assert rep2["timings"]["separate"] < rep1["timings"]["separate"] / 2
    assert rep2["stages"]["separate"]["has_vocals"] == rep1["stages"]["separate"]["has_vocals"]
    # the same stems went into the mix
    v1, v2 = (np.asarray(__import__("soundfile").read(str(r.workdir / "vocals.wav"))[0]) for r in (r1, r2))
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    assert r2.cover.is_file()


def test_other_separator_settings_or_another_song_miss(files, tmp_path):
    cache = FileStemCache(tmp_path / "cache")
    CALLS.clear()
    _run(cache, files["song"], files["ref1"], tmp_path / "w1")
    _, ev, _ = _run(cache, files["song"], files["ref1"], tmp_path / "w2", cfg=_cfg(**{"cache-test": {"gain": 0.5}}))
    assert not ev.cached and CALLS == [{"gain": 1.0}, {"gain": 0.5}]
    _, ev, _ = _run(cache, files["other"], files["ref1"], tmp_path / "w3")
    assert not ev.cached and len(CALLS) == 3
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_key_depends_on_pcm_separator_and_options():
    song = np.zeros((2, 1000), np.float32)
    k = stem_cache_key(song, 44100, "demucs", {"name": "htdemucs"})
    assert k == stem_cache_key(song.copy(), 44100, "demucs", {"name": "htdemucs"})
    louder = song.copy()
    louder[0, 10] = 1e-4
    assert len({k, stem_cache_key(louder, 44100, "demucs", {"name": "htdemucs"}),
                stem_cache_key(song, 44100, "demucs", {"name": "htdemucs_ft"}),
                stem_cache_key(song, 44100, "spectral", {"name": "htdemucs"}),
                stem_cache_key(song, 48000, "demucs", {"name": "htdemucs"})}) == 5


def test_expired_or_broken_entries_are_misses(files, tmp_path):
    CALLS.clear()
    _run(FileStemCache(tmp_path / "cache"), files["song"], files["ref1"], tmp_path / "w1")
    (entry,) = (tmp_path / "cache").iterdir()
    _, ev, _ = _run(FileStemCache(tmp_path / "cache", max_age_seconds=0), files["song"], files["ref1"],
                    tmp_path / "w2")
    assert not ev.cached and len(CALLS) == 2
    assert FileStemCache(tmp_path / "cache", max_age_seconds=0).purge() == 1 and not entry.exists()
    _run(FileStemCache(tmp_path / "cache"), files["song"], files["ref1"], tmp_path / "w3")
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "vocals.wav").unlink()
    result, ev, _ = _run(FileStemCache(tmp_path / "cache"), files["song"], files["ref1"], tmp_path / "w4")
    assert not ev.cached and len(CALLS) == 4 and result.cover.is_file()
