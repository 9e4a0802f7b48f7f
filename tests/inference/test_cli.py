"""``python -m inference`` in a subprocess: success writes the cover, failure prints one error line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from tests import signals

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "inference", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cover_success(tmp_path):
    song = signals.write(tmp_path / "song.wav", signals.song(4.0, sr=48000)[0], 48000)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(5.0))
    out = tmp_path / "out" / "cover.wav"
    r = cli("cover", "--song", song, "--reference", ref, "-o", out, "--pitch", "-2",
            "--keep-stems", tmp_path / "stems", "--workdir", tmp_path / "work")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}")
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 4 * 48000)
    for name in ("vocal.wav", "instrumental.wav", "converted_vocal.wav", "report.json"):
        assert (tmp_path / "stems" / name).exists(), name
    rep = json.loads((tmp_path / "stems" / "report.json").read_text())
    assert rep["parameters"]["pitch_shift"] == -2


def test_bad_input_one_error_line(tmp_path):
    song = tmp_path / "song.wav"
    song.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(5.0))
    r = cli("cover", "--song", song, "--reference", ref, "-o", tmp_path / "o.wav")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: preprocess: song is not an audio file we can read (supported: WAV, FLAC, MP3, OGG/Opus, M4A/AAC)"]
    assert not (tmp_path / "o.wav").exists()


def test_unknown_engine_and_engines_list(tmp_path):
    song = signals.write(tmp_path / "song.wav", signals.song(2.0)[0])
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(4.0))
    r = cli("cover", "--song", song, "--reference", ref, "-o", tmp_path / "o.wav", "--separator", "nope")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: separate: unknown separator engine 'nope'; available:")
    r = cli("engines")
    assert r.returncode == 0 and "separator:" in r.stdout and "spectral" in r.stdout
