"""Issue 13, defect 5: audio whose header gives no length (what ``ffmpeg ... -f FMT -`` writes to a
pipe: a FLAC with 0 samples, "unknown"; a WAV with 0xFFFFFFFF sizes; an MP3 without a Xing frame
count; Ogg streams; ADTS AAC; Matroska without a duration) is measured by decoding it, bounded by
the song limit, and accepted like any other file: through the API (201, the real duration in the
job's inputs) and through the preprocess stage (in this process and in a decoding child)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from covers.models import CoverJob
from inference import audio
from inference.config import Limits, PipelineConfig
from inference.context import StageContext
from inference.stages import preprocess
from tests import signals
from tests.service.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)

SR = 22050
SECONDS = 3.0
# (id, ffmpeg output arguments for a pipe, what the header says about the length)
PIPED = [
    ("flac", ["-f", "flac"], "STREAMINFO total samples 0"),
    ("wav", ["-f", "wav"], "RIFF/data sizes 0xFFFFFFFF"),
    ("mp3", ["-f", "mp3"], "no Xing/Info frame count"),
    ("ogg-vorbis", ["-c:a", "libvorbis", "-f", "ogg"], "Ogg stream"),
    ("ogg-opus", ["-c:a", "libopus", "-f", "ogg"], "Ogg/Opus stream"),
    ("adts-aac", ["-c:a", "aac", "-f", "adts"], "ADTS frames (no total)"),
    ("matroska", ["-c:a", "flac", "-f", "matroska"], "Matroska without a duration"),
]


def piped(src: Path, args: list[str]) -> bytes:
    """What ffmpeg writes to stdout (a pipe: it cannot seek back to fill in lengths)."""
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(src), *args, "-"], check=True,
                         stdout=subprocess.PIPE)
    return out.stdout


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("piped")
    mix, *_ = signals.song(seconds=SECONDS, sr=SR)
    return {"song": signals.write(d / "song.wav", mix, sr=SR),
            "ref": signals.write(d / "ref.wav", signals.reference_voice(seconds=4.0, sr=SR), sr=SR), "dir": d}


@pytest.mark.parametrize("name,args,header", PIPED, ids=[p[0] for p in PIPED])
def test_piped_audio_of_unknown_length_is_accepted_by_the_api(client, api_key, sources, outcome, name, args, header):
    data = piped(sources["song"], args)
    resp = client.post("/api/v1/cover/jobs", {"song": upload(f"piped.{name}", data),
                                              "reference_voice": upload("ref.wav", sources["ref"].read_bytes())},
                       HTTP_X_API_KEY=api_key[1])
    body = resp.json()
    duration = (body.get("inputs") or {}).get("song", {}).get("duration")
    outcome(f"song piped from ffmpeg as {name} ({header}) through the API",
            expected=f"201, measured duration {SECONDS:g} s",
            measured=f"{resp.status_code} duration {duration:.3f} s" if resp.status_code == 201 else
            f"{resp.status_code} {body.get('error')}")
    assert resp.status_code == 201, body
    # codec priming/padding (MP3, AAC, Opus) adds a few tens of ms
    assert duration == pytest.approx(SECONDS, abs=0.1)
    assert CoverJob.objects.get(pk=body["job_id"]).input_info["song"]["duration"] == duration


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.parametrize("name,args,header", PIPED, ids=[p[0] for p in PIPED])
def test_piped_audio_of_unknown_length_passes_preprocess(sources, tmp_path, name, args, header, isolated):
    song = tmp_path / f"song.{name}"
    song.write_bytes(piped(sources["song"], args))
    cfg = PipelineConfig(work_sample_rate=SR, limits=Limits(max_song_seconds=10))
    (tmp_path / "work").mkdir()
    ctx = StageContext(stage="preprocess", workdir=tmp_path / "work")
    if isolated:
        audio.isolate_decoding(audio.Isolation(timeout=30, memory_mb=2048))
    try:
        pre = preprocess.run(song, sources["ref"], cfg, ctx)
    finally:
        audio.isolate_decoding(None)
    assert pre.original_duration == pytest.approx(SECONDS, abs=0.1)
    assert pre.song.shape[1] == pytest.approx(SECONDS * SR, abs=0.1 * SR)
    assert np.abs(pre.song).max() > 0.01
    assert not list((tmp_path / "work").glob("*.npy"))  # the child's sample file is gone


def test_a_piped_flac_decoding_to_20_minutes_fails_too_long_fast(client, api_key, sources, outcome):
    """The measuring decode stops just past the limit: a small file that decodes to hours costs
    no more than a song at the limit."""
    src = sources["dir"] / "long-silence.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono",
                    "-t", "1200", str(src)], check=True)
    data = piped(src, ["-f", "flac"])
    t0 = time.monotonic()
    resp = client.post("/api/v1/cover/jobs", {"song": upload("bomb.flac", data),
                                              "reference_voice": upload("ref.wav", sources["ref"].read_bytes())},
                       HTTP_X_API_KEY=api_key[1])
    took = time.monotonic() - t0
    err = resp.json().get("error") or {}
    outcome(f"piped FLAC of unknown length ({len(data) // 1024} KB) decoding to 20 minutes",
            expected="422 too_long, the measuring decode stops past the 600 s limit",
            measured=f"{resp.status_code} {err.get('code')}: {err.get('message')} in {took:.2f} s")
    assert resp.status_code == 422 and err["code"] == "too_long" and err["field"] == "song", err
    assert CoverJob.objects.count() == 0
