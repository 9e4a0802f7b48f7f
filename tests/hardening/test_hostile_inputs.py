"""Hostile and bad input, table-driven: each row is an upload, a parameter or an access attempt
with the exact status, error code and field it must get (issue 6). The service runs in this
process (Django test client / the ASGI application) with the real database and a local Redis."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model

from covers.models import CoverJob
from tests import signals
from tests.service.conftest import make_key, upload

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/v1/cover/jobs"
SR = 22050
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# builders (all in memory)
# --------------------------------------------------------------------------------------------
def encode(audio: np.ndarray, fmt: str = "WAV", subtype: str = "PCM_16", sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.T if audio.ndim == 2 else audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float) -> np.ndarray:
    return signals.sine_from_f0(np.full(int(seconds * SR), 220.0), SR)


def wav_header(rate: int, channels: int, data_bytes: int, body: bytes = b"", bits: int = 16) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits)
    return (b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF) + body)


def flac_declaring(seconds: float) -> bytes:
    """A small real FLAC (3 s of tone) whose STREAMINFO claims ``seconds`` of audio."""
    data = bytearray(encode(tone(3.0), "FLAC"))
    at = data.find(b"fLaC") + 8  # STREAMINFO body (after the 4-byte block header)
    word = int.from_bytes(data[at + 10:at + 18], "big")
    word = (word & ~((1 << 36) - 1)) | int(seconds * SR)  # total samples: the low 36 bits
    data[at + 10:at + 18] = word.to_bytes(8, "big")
    return bytes(data)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("song.wav", encode(tone(2.0)))
    return buf.getvalue()


HLS = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
       b"#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
HTML = b"<!DOCTYPE html><html><head><title>song</title></head><body><audio src=x></audio></body></html>\n" * 10
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


def _truncated_wav() -> bytes:
    w = encode(tone(3.0))
    return w[:len(w) // 2]


def _truncated_mp3() -> bytes:
    m = encode(tone(6.0), "MP3", "MPEG_LAYER_III")
    return m[:len(m) // 2]


# (row, song bytes, status, code, message fragment)
UPLOADS = [
    ("HTML named .wav", lambda: HTML, 415, "unsupported_media", "not an audio file"),
    ("ZIP named .wav", zip_bytes, 415, "unsupported_media", "not an audio file"),
    ("PNG named .wav", lambda: PNG, 415, "unsupported_media", "not an audio file"),
    ("HLS playlist (file:///etc/passwd) named .wav", lambda: HLS, 415, "unsupported_media", "not an audio file"),
    ("truncated WAV (half of 3 s)", _truncated_wav, 422, "corrupt_audio", "truncated"),
    ("truncated MP3 (half of 6 s)", _truncated_mp3, 422, "corrupt_audio", "truncated"),
    ("27 KB FLAC declaring 1 hour", lambda: flac_declaring(3600), 422, "too_long", "3600.0 s"),
    ("1 KB WAV header declaring 1 hour", lambda: wav_header(SR, 1, SR * 2 * 3600, b"\0" * 1000), 422,
     "corrupt_audio", "declares 3600.0 s"),
    ("WAV header: sample rate 1 Hz", lambda: wav_header(1, 1, 2000, b"\0" * 2000), 422, "bad_sample_rate", "1 Hz"),
    ("WAV header: sample rate 2^31-1", lambda: wav_header(2**31 - 1, 1, 2000, b"\0" * 2000), 422,
     "bad_sample_rate", "2147483647 Hz"),
    ("WAV header: 1024 channels", lambda: wav_header(SR, 1024, 20480, b"\0" * 20480), 422, "bad_channels",
     "1024 channels"),
    ("zero-length file", lambda: b"", 422, "empty_audio", "empty"),
    ("WAV with no samples", lambda: encode(np.zeros(0, np.float32)), 422, "empty_audio", "no audio"),
    ("WAV with one sample", lambda: encode(np.zeros(1, np.float32)), 422, "too_short", "at least"),
]


def post(client, raw, song, ref, song_name="song.wav", **fields):
    data = {"song": upload(song_name, song), "reference_voice": upload("ref.wav", ref), **fields}
    return client.post(JOBS, data, HTTP_X_API_KEY=raw)


def error_of(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]


@pytest.fixture(scope="module")
def ref() -> bytes:
    return encode(signals.reference_voice(seconds=4.0, sr=SR))


@pytest.fixture(scope="module")
def song() -> bytes:
    mix, *_ = signals.song(seconds=2.0, sr=SR)
    return encode(mix)


@pytest.fixture
def upload_tmp(settings, tmp_path):
    """Uploads spool to (and are probed from) this folder, which must be empty after each request."""
    d = tmp_path / "upload-tmp"
    d.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(d)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # every upload becomes a temp file
    return d


@pytest.mark.parametrize("row,build,status,code,fragment", UPLOADS, ids=[u[0] for u in UPLOADS])
def test_hostile_upload_is_refused_before_any_work(client, api_key, ref, upload_tmp, _media, outcome,
                                                   row, build, status, code, fragment):
    resp = post(client, api_key[1], build(), ref)
    assert resp.status_code == status, resp.content
    err = error_of(resp)
    outcome(row, expected=f"{status} {code}", measured=f"{resp.status_code} {err['code']}: {err['message']}")
    assert (err["code"], err["field"]) == (code, "song"), err
    assert err["message"].startswith("song") and fragment in err["message"], err
    assert CoverJob.objects.count() == 0
    assert list(upload_tmp.iterdir()) == []
    assert not any(p.is_file() for p in Path(_media).rglob("*")) if Path(_media).exists() else True


def test_the_playlist_makes_the_decoder_open_nothing_but_itself(tmp_path, outcome):
    """strace the probe of an HLS playlist (named .wav) that points at /etc/passwd and at a real
    WAV beside it: FFmpeg (file protocol only, no hls demuxer) opens neither."""
    if not Path("/usr/bin/strace").exists():
        pytest.skip("strace is not installed")
    beside = tmp_path / "real.wav"
    beside.write_bytes(encode(tone(2.0)))
    playlist = tmp_path / "song.wav"
    playlist.write_bytes(HLS.replace(b"#EXT-X-ENDLIST", b"#EXTINF:2.0,\nfile://" + str(beside).encode()
                                     + b"\n#EXT-X-ENDLIST"))
    code = textwrap.dedent(f"""
        from inference.audio import probe
        from inference.errors import InputError
        try:
            probe({str(playlist)!r})
        except InputError as exc:
            print("REFUSED", exc.code)
    """)
    trace = tmp_path / "trace.txt"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat,connect", "-o", str(trace),
                          sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if "Operation not permitted" in out.stderr and "REFUSED" not in out.stdout:
        pytest.skip(f"ptrace is not permitted here: {out.stderr.strip()[:200]}")
    assert "REFUSED unsupported_media" in out.stdout, out.stdout + out.stderr
    opened = trace.read_text()
    assert "/etc/passwd" not in opened
    assert str(beside) not in opened
    assert "connect(" not in opened.split(str(playlist), 1)[-1]  # no socket after opening the file
    outcome("HLS playlist: files the decoder opens", expected="the upload only",
            measured="/etc/passwd and the WAV it names: not opened (strace)")


@pytest.mark.parametrize("name", [b"wav_header_1h", b"flac_1h", b"wav_1024ch"])
def test_header_bombs_are_refused_with_little_memory(tmp_path, name, outcome):
    """The probe reads headers only: peak RSS of a fresh process probing the file stays < 200 MB."""
    data = {b"wav_header_1h": wav_header(SR, 1, SR * 2 * 3600, b"\0" * 1000),
            b"flac_1h": flac_declaring(3600), b"wav_1024ch": wav_header(SR, 1024, 20480, b"\0" * 20480)}[name]
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    code = textwrap.dedent(f"""
        import resource
        from inference.audio import probe
        from inference.errors import InputError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            info = probe({str(path)!r})
            print("INFO", info.duration, info.channels)
        except InputError as exc:
            print("REFUSED", exc.code)
        print("RSS_MB", before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    before, peak = map(float, out.stdout.split("RSS_MB")[1].split())
    outcome(f"peak memory probing {name.decode()}", expected="the probe adds < 200 MB",
            measured=f"+{peak - before:.1f} MB (process peak {peak:.0f} MB, libraries included)")
    assert peak - before < 200, out.stdout


def test_silent_song_gives_a_defined_output_never_nan(tmp_path, outcome):
    """Silence is valid audio: accepted at upload (a defined output), and the pipeline's cover of it
    is finite (the pipeline with the default engines, in process)."""
    from inference import Pipeline, PipelineConfig
    from inference.audio import read_wav
    from inference.errors import InputError

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(int(2.0 * SR), np.float32), SR)
    ref = tmp_path / "ref.wav"
    sf.write(ref, signals.reference_voice(seconds=4.0, sr=SR), SR)
    try:
        result = Pipeline(PipelineConfig(quality_report=False)).run(silent, ref, tmp_path / "work")
    except InputError as exc:  # a defined refusal is fine too (422 at upload would be)
        outcome("silent song (2 s)", expected="a defined output or a clear refusal, never NaN",
                measured=f"refused: {exc.code}: {exc.message}")
        assert exc.field == "song"
        return
    audio, _ = read_wav(result.cover)
    assert np.all(np.isfinite(audio))
    outcome("silent song (2 s)", expected="a defined output or a clear refusal, never NaN",
            measured=f"succeeded; cover peak {float(np.max(np.abs(audio))) if audio.size else 0:.3g}, all finite")


# --------------------------------------------------------------------------------------------
# file names
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "../../x.wav", "a\x00b.wav", "n" * 1000 + ".wav"],
                         ids=["dotdot", "dotdot-ext", "nul", "1000-chars"])
def test_client_file_names_never_become_paths(client, api_key, song, ref, _media, outcome, name):
    resp = post(client, api_key[1], song, ref, song_name=name)
    assert resp.status_code == 201, resp.content
    job = CoverJob.objects.get(pk=resp.json()["job_id"])
    assert job.song.name == f"covers/{job.id}/song.wav"
    assert job.reference_voice.name == f"covers/{job.id}/reference_voice.wav"
    stored = sorted(p.relative_to(_media).as_posix() for p in Path(_media).rglob("*") if p.is_file())
    assert stored == [f"covers/{job.id}/reference_voice.wav", f"covers/{job.id}/song.wav"]
    outcome(f"file name {name[:12]!r}{'...' if len(name) > 12 else ''} ({len(name)} chars)",
            expected="stored under a generated name", measured=f"201, stored as {job.song.name.split('/')[-1]}")


# --------------------------------------------------------------------------------------------
# body size: declared, chunked, understated Content-Length (the ASGI application, as daphne runs it)
# --------------------------------------------------------------------------------------------
def _asgi_post(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict]:
    from coverproject.asgi import application

    async def go():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": JOBS, "raw_path": JOBS.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"127.0.0.1")] + headers,
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
        comm = ApplicationCommunicator(application, scope)
        for i, chunk in enumerate(chunks):
            await comm.send_input({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
        start = await comm.receive_output(timeout=10)
        body = await comm.receive_output(timeout=10)
        await comm.wait(timeout=10)
        import json
        return start["status"], json.loads(body["body"])

    return async_to_sync(go)()


@pytest.mark.parametrize("how", ["declared", "chunked", "understated"])
def test_a_body_over_the_limit_is_413_and_leaves_no_file(settings, api_key, upload_tmp, outcome, how):
    settings.COVER_MAX_UPLOAD_MB = 0.25  # the request limit: 2 x 0.25 MB + 1 MB = 1.5 MB
    chunk = b"x" * (256 * 1024)
    n = 8  # 2 MB sent
    ctype = (b"content-type", b"multipart/form-data; boundary=zzz")
    key = (b"x-api-key", api_key[1].encode())
    if how == "declared":
        headers, chunks = [ctype, key, (b"content-length", str(n * len(chunk)).encode())], [chunk]
    elif how == "chunked":
        headers, chunks = [ctype, key, (b"transfer-encoding", b"chunked")], [chunk] * n
    else:
        headers, chunks = [ctype, key, (b"content-length", b"1000")], [chunk] * n
    fds_before = len(os.listdir("/proc/self/fd"))
    status, body = _asgi_post(headers, chunks)
    outcome(f"body over the limit ({how} Content-Length)", expected="413, no temp file",
            measured=f"{status} {body['error']['code']}; temp files left: {len(list(upload_tmp.iterdir()))}")
    assert status == 413 and body["error"]["code"] == "upload_too_large", body
    assert list(upload_tmp.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 1  # no spooled body file kept open
    assert CoverJob.objects.count() == 0


def test_a_file_over_the_per_file_limit_is_413_and_leaves_no_file(client, api_key, song, ref, settings,
                                                                  upload_tmp, _media, outcome):
    settings.COVER_MAX_UPLOAD_MB = 0.05
    resp = post(client, api_key[1], song, ref)
    err = error_of(resp)
    outcome("a file over the per-file limit", expected="413 upload_too_large", measured=f"{resp.status_code} {err['code']}")
    assert resp.status_code == 413 and err["code"] == "upload_too_large"
    assert list(upload_tmp.iterdir()) == []
    assert CoverJob.objects.count() == 0


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
PARAMS = [
    ("pitch_shift 24.5", {"pitch_shift": "24.5"}, "pitch_shift"),
    ("pitch_shift -1e9", {"pitch_shift": "-1e9"}, "pitch_shift"),
    ("pitch_shift NaN", {"pitch_shift": "nan"}, "pitch_shift"),
    ("unknown model_id", {"model_id": "no-such-model"}, "model_id"),
    ("model_id with a path", {"model_id": "../../etc/passwd"}, "model_id"),
    ("reference_text 5001 chars", {"reference_text": "a" * 5001}, "reference_text"),
    ("target_text 5001 chars", {"target_text": "b" * 5001}, "target_text"),
]


@pytest.mark.parametrize("row,fields,field", PARAMS, ids=[p[0] for p in PARAMS])
def test_bad_parameters_are_400_naming_the_field(client, api_key, song, ref, outcome, row, fields, field):
    resp = post(client, api_key[1], song, ref, **fields)
    err = error_of(resp)
    outcome(row, expected=f"400 naming {field}", measured=f"{resp.status_code} field={err['field']}: {err['message'][:80]}")
    assert resp.status_code == 400 and err["field"] == field and field in err["message"], err
    assert CoverJob.objects.count() == 0


@pytest.mark.parametrize("field", ["reference_text", "target_text"])
def test_non_utf8_text_is_400_naming_the_field(client, api_key, song, ref, outcome, field):
    from django.test.client import BOUNDARY, encode_multipart

    body = encode_multipart(BOUNDARY, {"song": upload("s.wav", song), "reference_voice": upload("r.wav", ref),
                                       field: "PLACEHOLDER"})
    body = body.replace(b"PLACEHOLDER", b"caf\xe9 \xff\xfe")  # Latin-1 bytes, not UTF-8
    resp = client.post(JOBS, body, content_type=f"multipart/form-data; boundary={BOUNDARY}",
                       HTTP_X_API_KEY=api_key[1])
    err = error_of(resp)
    outcome(f"non-UTF-8 {field}", expected=f"400 naming {field}", measured=f"{resp.status_code} field={err['field']}")
    assert resp.status_code == 400 and err["field"] == field, err
    assert CoverJob.objects.count() == 0


# --------------------------------------------------------------------------------------------
# isolation: key A and key B's job
# --------------------------------------------------------------------------------------------
@pytest.fixture
def b_job(other_key, song, ref, client):
    resp = post(client, other_key[1], song, ref)
    assert resp.status_code == 201
    return CoverJob.objects.get(pk=resp.json()["job_id"])


ACCESS = [
    ("reads", "get", ""),
    ("cancels", "post", "/cancel"),
    ("downloads the result of", "get", "/result"),
    ("downloads a stem of", "get", "/artifacts/vocals"),
    ("deletes", "delete", ""),
]


@pytest.mark.parametrize("row,method,suffix", ACCESS, ids=[a[0] for a in ACCESS])
def test_a_key_cannot_reach_another_keys_job(client, api_key, b_job, outcome, row, method, suffix):
    CoverJob.objects.filter(pk=b_job.pk).update(status="succeeded", result=b_job.song.name,
                                                vocals=b_job.song.name, progress=100)
    resp = getattr(client, method)(f"{JOBS}/{b_job.id}{suffix}", HTTP_X_API_KEY=api_key[1])
    err = error_of(resp)
    outcome(f"key A {row} key B's job", expected="404 not_found", measured=f"{resp.status_code} {err['code']}")
    assert resp.status_code == 404 and err["code"] == "not_found", err
    after = CoverJob.objects.get(pk=b_job.pk)
    assert after.status == "succeeded" and Path(after.song.path).exists()


def test_a_key_cannot_subscribe_to_another_keys_job(settings, api_key, b_job, outcome):
    from channels.testing import WebsocketCommunicator

    from coverproject.asgi import application

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    async def go():
        comm = WebsocketCommunicator(application, f"/ws/cover/jobs/{b_job.id}/", headers=[
            (b"origin", b"http://127.0.0.1:8000"), (b"x-api-key", api_key[1].encode())])
        ok, _ = await comm.connect(timeout=5)
        assert ok
        out = await comm.receive_output(timeout=5)
        await comm.disconnect()
        return out

    out = async_to_sync(go)()
    outcome("key A subscribes to key B's job", expected="WebSocket close 4404", measured=f"{out['type']} {out.get('code')}")
    assert out == {"type": "websocket.close", "code": 4404}


@pytest.mark.parametrize("path", ["/admin/", "/admin/covers/coverjob/", "/admin/covers/apikey/", "/django-rq/",
                                  "/django-rq/queues/0/"])
def test_non_staff_users_get_no_dashboard_or_admin(client, path, outcome):
    user = get_user_model().objects.create_user("plain", password="pw-123456789")
    make_key("mine", owner=user)
    client.force_login(user)
    resp = client.get(path)
    outcome(f"non-staff user opens {path}", expected="redirect to the login, no content",
            measured=f"{resp.status_code} -> {resp.get('Location', '')[:40]}")
    assert resp.status_code == 302 and "login" in resp["Location"], resp.status_code


DECODER_FAULTS = [
    ("a decoder that crashes (SIGSEGV) on the upload", "segfault", "the decoder crashed on it (SIGSEGV)"),
    ("a decoder that aborts (SIGABRT) on the upload", "abort", "the decoder crashed on it (SIGABRT)"),
    ("a decoder that hangs in native code (limit 2 s)", "hang", "took longer than 2 s"),
    ("a decoder that allocates 8 GB (limit 1024 MB)", "allocate", "needs more than 1024 MB"),
]


@pytest.mark.parametrize("row,crasher,fragment", DECODER_FAULTS, ids=[d[1] for d in DECODER_FAULTS])
def test_a_decoder_crash_fails_only_the_probe_process(client, api_key, song, ref, upload_tmp, _media, settings,
                                                      monkeypatch, outcome, row, crasher, fragment):
    """Uploads are probed in a child process: whatever the decoder does there (crash, hang, eat
    memory), the request is a 422 naming the field and this process - the web process - goes on."""
    import time

    from covers import uploads
    from tests.hardening import crashers

    settings.COVER_PROBE_TIMEOUT_SECONDS = 2
    settings.COVER_PROBE_MEMORY_MB = 1024
    monkeypatch.setattr(uploads, "PROBE_TARGET", getattr(crashers, crasher))
    t0 = time.monotonic()
    resp = post(client, api_key[1], song, ref)
    took = time.monotonic() - t0
    err = error_of(resp)
    outcome(row, expected="422 corrupt_audio; the web process keeps serving",
            measured=f"{resp.status_code} {err['code']}: {err['message']} after {took:.1f} s")
    assert resp.status_code == 422 and (err["code"], err["field"]) == ("corrupt_audio", "song"), err
    assert err["message"].startswith("song") and fragment in err["message"], err
    assert CoverJob.objects.count() == 0 and list(upload_tmp.iterdir()) == []
    monkeypatch.setattr(uploads, "PROBE_TARGET", None)  # the same process serves the next upload
    assert post(client, api_key[1], song, ref).status_code == 201
