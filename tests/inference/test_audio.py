"""inference.audio: decoding by content (not by name), rejections with exact messages, resampling, writing."""
from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
import soundfile as sf

from inference import audio
from inference.errors import InputError
from tests import signals

SR = 44100
SUPPORTED = "WAV, FLAC, MP3, OGG/Opus, M4A/AAC"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    mix = signals.song(2.0)[0]
    return signals.write(d / "song.wav", mix), mix


def ffmpeg(src, dst, *args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


def _lag_corr(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@pytest.mark.parametrize("ext,args,fmt,rate", [
    ("flac", [], "flac", 44100),
    ("ogg", ["-c:a", "libvorbis"], "ogg", 44100),
    ("opus", ["-c:a", "libopus"], "ogg", 48000),
    ("mp3", ["-c:a", "libmp3lame"], "mp3", 44100),
    ("m4a", ["-c:a", "aac"], "mov,mp4,m4a,3gp,3g2,mj2", 44100),
])
def test_decodes_each_format_by_content(tmp_path, source, ext, args, fmt, rate):
    src, mix = source
    path = ffmpeg(src, tmp_path / f"song.{ext}", *args)
    info = audio.probe(path, "song")
    assert info.format == fmt and info.channels == 2 and info.sample_rate == rate
    data, sr = audio.decode(path, "song")
    assert sr == rate and data.shape[0] == 2 and data.dtype == np.float32
    assert abs(data.shape[1] / sr - 2.0) < 0.010          # encoder padding trimmed
    back = audio.resample(data, sr, SR)
    assert _lag_corr(back[0], mix[0]) > 0.9                # the same music, not just "some audio"


def test_wav_is_bit_exact_and_mono_stays_mono(tmp_path):
    x = signals.sine_from_f0(np.full(22050, 440.0), 22050)
    path = signals.write(tmp_path / "mono.wav", x, 22050)
    data, sr = audio.decode(path, "song")
    assert sr == 22050 and data.shape == (1, 22050)
    assert np.max(np.abs(data[0] - np.round(x * 32767) / 32768)) < 1e-4


def test_mp3_named_wav_is_sniffed(tmp_path, source):
    src, _ = source
    fake = tmp_path / "song.wav"
    shutil.copyfile(ffmpeg(src, tmp_path / "real.mp3"), fake)
    assert audio.probe(fake, "song").format == "mp3"
    data, sr = audio.decode(fake, "song")
    assert sr == 44100 and data.shape[0] == 2 and abs(data.shape[1] / sr - 2.0) < 0.03


def _png() -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("content", [
    b"<!DOCTYPE html><html><body>not a song</body></html>\n" * 20,
    _png(),
    b"just some text\n",
    bytes(range(256)) * 40,
])
def test_not_audio_is_rejected(tmp_path, content):
    path = tmp_path / "song.wav"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        audio.decode(path, "song")
    assert e.value.message == f"song is not an audio file we can read (supported: {SUPPORTED})"
    assert e.value.code == "unsupported_media" and e.value.field == "song"


def test_zero_length_file(tmp_path):
    path = tmp_path / "voice.mp3"
    path.write_bytes(b"")
    with pytest.raises(InputError) as e:
        audio.decode(path, "reference_voice")
    assert e.value.message == "reference_voice is an empty file (0 bytes)"
    assert (e.value.code, e.value.field) == ("empty_audio", "reference_voice")


def test_wav_with_no_samples(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 2), np.float32), SR, subtype="PCM_16")
    with pytest.raises(InputError) as e:
        audio.decode(path, "song")
    assert e.value.message == "song contains no audio samples (zero length)"


def test_truncated_wav(tmp_path, source):
    src, _ = source
    path = tmp_path / "cut.wav"
    path.write_bytes(src.read_bytes()[: 44 + 4 * 30000])
    with pytest.raises(InputError) as e:
        audio.decode(path, "song")
    assert e.value.message == "song is truncated: its header declares 2.0 s but only 0.7 s could be decoded"
    assert e.value.code == "corrupt_audio"


def test_max_seconds(tmp_path, source):
    src, _ = source
    with pytest.raises(InputError) as e:
        audio.decode(src, "song", max_seconds=1.5)
    assert e.value.message == "song is longer than the limit of 1.5 s" and e.value.code == "too_long"
    data, _ = audio.decode(src, "song", max_seconds=2.0)
    assert data.shape[1] == 2 * SR


def test_resample_and_write_roundtrip(tmp_path):
    x = np.stack([signals.sine_from_f0(np.full(SR, 1000.0))] * 2)
    y = audio.resample(x, SR, 48000)
    assert y.shape == (2, 48000) and y.dtype == np.float32
    assert abs(np.sqrt(np.mean(y ** 2)) - np.sqrt(np.mean(x ** 2))) < 1e-3
    p = audio.write_wav(tmp_path / "a.wav", y, 48000, subtype="PCM_24")
    assert sf.info(str(p)).subtype == "PCM_24"
    back, sr = audio.read_wav(p)
    assert sr == 48000 and np.max(np.abs(back - y)) < 1e-6
    assert not (tmp_path / "a.wav.part").exists()
    assert audio.to_mono(y).shape == (48000,)
