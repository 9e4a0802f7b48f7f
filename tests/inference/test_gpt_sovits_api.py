"""Converter ``gpt-sovits-api`` against a small real HTTP server speaking api_v2's endpoints,
and GPT-SoVITS model resolution (:mod:`inference.models`)."""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import soundfile as sf

from inference.context import StageContext
from inference.engines.base import ConversionParams
from inference.engines.gpt_sovits_api import GptSovitsApiConverter, fit_to_vocal, reference_clip
from inference.errors import Canceled, PipelineError
from inference.models import GptSovitsModel, resolve_gpt_sovits_model
from inference.registry import get_engine
from tests import signals

TTS_SR = 32000  # GPT-SoVITS v2 outputs 32 kHz


class FakeApiV2:
    """Implements api_v2's /set_gpt_weights, /set_sovits_weights and POST /tts like the real
    server: JSON ``{"message", "Exception"}`` with HTTP 400 on errors, WAV bytes on success."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.fail_tts = False
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                if u.path in ("/set_gpt_weights", "/set_sovits_weights"):
                    server.calls.append((u.path, q))
                    kind = "gpt" if "gpt" in u.path else "sovits"
                    path = q.get("weights_path")
                    if not path:
                        return self._json(400, {"message": f"{kind} weight path is required"})
                    if not os.path.isfile(path):
                        return self._json(400, {"message": f"change {kind} weight failed",
                                                "Exception": f"[Errno 2] No such file or directory: '{path}'"})
                    return self._json(200, {"message": "success"})
                self._json(404, {"detail": "Not Found"})

            def do_POST(self):
                u = urlparse(self.path)
                if u.path != "/tts":
                    return self._json(404, {"detail": "Not Found"})
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.calls.append(("/tts", req))
                for field in ("ref_audio_path", "text", "text_lang", "prompt_lang"):
                    if not req.get(field):
                        return self._json(400, {"message": f"{field} is required"})
                if req.get("media_type", "wav") != "wav" or req.get("streaming_mode"):
                    return self._json(400, {"message": "this fake only does non-streaming wav"})
                try:
                    info = sf.info(req["ref_audio_path"])
                except Exception as exc:
                    return self._json(400, {"message": "tts failed", "Exception": str(exc)})
                if not 3.0 <= info.duration <= 10.0:  # TTS refuses references outside 3..10 s
                    return self._json(400, {"message": "tts failed",
                                            "Exception": "参考音频在3~10秒范围外，请更换！"})
                if server.fail_tts:
                    return self._json(400, {"message": "tts failed", "Exception": "CUDA out of memory"})
                time.sleep(server.delay)
                buf = io.BytesIO()
                sf.write(buf, speech_like(req["text"]), TTS_SR, format="WAV", subtype="PCM_16")
                body = buf.getvalue()
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [c[0] for c in self.calls]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def speech_like(text: str) -> np.ndarray:
    """A 'spoken' rendering: one voiced syllable of ~0.2 s per word, 0.08 s pauses, 150 Hz."""
    words = max(1, len(text.split()))
    seg, gap = int(0.2 * TTS_SR), int(0.08 * TTS_SR)
    f0 = np.concatenate([np.concatenate([np.full(seg, 150.0), np.zeros(gap)]) for _ in range(words)])
    f0 = np.concatenate([np.zeros(int(0.15 * TTS_SR)), f0, np.zeros(int(0.15 * TTS_SR))])
    return signals.harmonic_voice(f0, TTS_SR, formants=(500, 1700, 2900), amp=0.5)


@pytest.fixture()
def api():
    srv = FakeApiV2()
    yield srv
    srv.close()


@pytest.fixture()
def weights(tmp_path) -> dict[str, dict[str, str]]:
    d = tmp_path / "weights"
    d.mkdir()
    for name in ("a.ckpt", "a.pth", "b.ckpt", "b.pth", "c.pth"):
        (d / name).write_bytes(b"w")
    return {"alice": {"gpt_weights": str(d / "a.ckpt"), "sovits_weights": str(d / "a.pth")},
            "bob": {"gpt_weights": str(d / "b.ckpt"), "sovits_weights": str(d / "b.pth")},
            "bob2": {"gpt_weights": str(d / "b.ckpt"), "sovits_weights": str(d / "c.pth")},
            "ghost": {"gpt_weights": str(d / "missing.ckpt"), "sovits_weights": str(d / "a.pth")}}


def melody_vocal(sr: int, seconds: float = 2.0):
    """Two sung notes (220 Hz, 262 Hz) with silence before, between and after."""
    n = int(seconds * sr)
    f0 = np.zeros(n)
    f0[int(0.2 * sr): int(0.9 * sr)] = 220.0
    f0[int(1.1 * sr): int(1.8 * sr)] = 261.6
    return signals.harmonic_voice(f0, sr, amp=0.3), f0


def ctx_for(tmp_path, should_cancel=None) -> StageContext:
    return StageContext(stage="infer", workdir=tmp_path / "work", should_cancel=should_cancel)


def median_f0(x: np.ndarray, sr: int, a: float, b: float) -> float:
    import pyworld
    seg = x[int(a * sr): int(b * sr)].astype(np.float64)
    f0, t = pyworld.dio(seg, sr, f0_floor=60, f0_ceil=1100, frame_period=5.0)
    f0 = pyworld.stonemask(seg, f0, t, sr)
    return float(np.median(f0[f0 > 0])) if np.any(f0 > 0) else 0.0


# --- converter ------------------------------------------------------------------------------

def test_convert_switches_weights_only_on_model_change(api, weights, tmp_path):
    sr = 22050
    vocal, _ = melody_vocal(sr)
    ref = signals.reference_voice(4.0, 44100)
    conv = get_engine("converter", "gpt-sovits-api", base_url=api.url, models=weights, timeout=30)
    assert isinstance(conv, GptSovitsApiConverter)
    p = dict(reference_text="this is my voice", target_text="la la la la")

    out = conv.convert(vocal, sr, ref, 44100, ConversionParams(model_id="alice", **p), ctx_for(tmp_path))
    assert api.paths() == ["/set_gpt_weights", "/set_sovits_weights", "/tts"]
    assert api.calls[0][1] == {"weights_path": weights["alice"]["gpt_weights"]}
    assert api.calls[1][1] == {"weights_path": weights["alice"]["sovits_weights"]}
    body = api.calls[2][1]
    assert body["text"] == "la la la la" and body["prompt_text"] == "this is my voice"
    assert body["text_lang"] == "en" and body["prompt_lang"] == "en" and body["media_type"] == "wav"
    assert Path(body["ref_audio_path"]).is_absolute()
    assert out.shape == vocal.shape and out.dtype == np.float32 and np.all(np.isfinite(out))

    api.calls.clear()
    conv.convert(vocal, sr, ref, 44100, ConversionParams(model_id="alice", **p), ctx_for(tmp_path))
    assert api.paths() == ["/tts"]  # same model: no switch

    api.calls.clear()
    conv.convert(vocal, sr, ref, 44100, ConversionParams(model_id="bob", **p), ctx_for(tmp_path))
    assert api.paths() == ["/set_gpt_weights", "/set_sovits_weights", "/tts"]

    api.calls.clear()
    conv.convert(vocal, sr, ref, 44100, ConversionParams(model_id="bob2", **p), ctx_for(tmp_path))
    assert api.paths() == ["/set_sovits_weights", "/tts"]  # same GPT weights, other SoVITS

    api.calls.clear()
    conv.convert(vocal, sr, ref, 44100, ConversionParams(**p), ctx_for(tmp_path))
    assert api.paths() == ["/tts"]  # no model id and no project_root: the server's weights


def test_output_keeps_the_input_melody_and_timing(api, tmp_path):
    sr = 22050
    vocal, _ = melody_vocal(sr)
    conv = GptSovitsApiConverter(base_url=api.url, timeout=30)
    params = ConversionParams(pitch_shift=2.0, reference_text="hi", target_text="one two three four")
    out = conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr, params, ctx_for(tmp_path))
    up = 2 ** (2 / 12)
    assert median_f0(out, sr, 0.3, 0.8) == pytest.approx(220.0 * up, rel=0.03)
    assert median_f0(out, sr, 1.2, 1.7) == pytest.approx(261.6 * up, rel=0.03)

    def rms(a, b):
        return float(np.sqrt(np.mean(out[int(a * sr): int(b * sr)] ** 2)))
    assert rms(0.3, 0.8) > 0.02 and rms(1.2, 1.7) > 0.02
    assert rms(0.0, 0.15) < rms(0.3, 0.8) * 0.05  # silent where the vocal is silent
    assert rms(1.87, 2.0) < rms(1.2, 1.7) * 0.05


def test_auto_pitch_moves_by_octaves_toward_the_voice(tmp_path):
    sr = 22050
    vocal, _ = melody_vocal(sr)
    tts = speech_like("a b c d e")  # 150 Hz voice; input at ~240 Hz -> one octave down is closer
    out = fit_to_vocal(tts, TTS_SR, vocal, sr, pitch_shift=0.0, auto_pitch=True)
    assert median_f0(out, sr, 0.3, 0.8) == pytest.approx(110.0, rel=0.04)


def test_missing_texts_without_asr_is_a_clear_error(api, tmp_path):
    conv = GptSovitsApiConverter(base_url=api.url)
    sr = 16000
    vocal, _ = melody_vocal(sr)
    with pytest.raises(PipelineError) as ei:
        conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr, ConversionParams(), ctx_for(tmp_path))
    assert ei.value.code == "missing_text" and "target_text" in ei.value.message
    assert api.calls == []


def test_texts_transcribed_with_asr(api, tmp_path, tmp_path_factory):
    from tests.inference.tiny_whisper import session_tiny_whisper
    model = session_tiny_whisper(tmp_path_factory)
    conv = GptSovitsApiConverter(base_url=api.url, asr={"model_path": str(model), "beam_size": 1,
                                                        "max_new_tokens": 8})
    sr = 16000
    vocal, _ = melody_vocal(sr)
    ctx = ctx_for(tmp_path)
    try:
        conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr, ConversionParams(target_text="la la"), ctx)
    except PipelineError as exc:  # random weights may decode to nothing; the request must still be right
        pytest.fail(f"unexpected {exc}")
    body = api.calls[-1][1]
    assert body["text"] == "la la"
    assert body["prompt_text"] == ctx.info["asr"]["reference_text"]


def test_long_reference_is_cut_to_what_api_v2_accepts(api, tmp_path):
    conv = GptSovitsApiConverter(base_url=api.url)
    sr = 16000
    vocal, _ = melody_vocal(sr)
    ctx = ctx_for(tmp_path)
    conv.convert(vocal, sr, signals.reference_voice(25.0, sr), sr,
                 ConversionParams(reference_text="long one", target_text="la"), ctx)
    assert api.paths() == ["/tts"]  # the fake server rejects references outside 3..10 s
    assert any("cut to 9.5 s" in w for w in ctx.warnings)
    clip, cut = reference_clip(np.ones(sr, np.float32), sr)
    assert not cut and len(clip) >= 3 * sr  # short ones are padded to the minimum


def test_http_errors_carry_the_server_message(api, weights, tmp_path):
    sr = 16000
    vocal, _ = melody_vocal(sr)
    ref = signals.reference_voice(4.0, sr)
    conv = GptSovitsApiConverter(base_url=api.url, models=weights)
    p = dict(reference_text="hi", target_text="la")
    with pytest.raises(PipelineError) as ei:
        conv.convert(vocal, sr, ref, sr, ConversionParams(model_id="ghost", **p), ctx_for(tmp_path))
    msg = ei.value.message
    assert ei.value.code == "engine_error" and ei.value.stage == "infer"
    assert "/set_gpt_weights" in msg and "HTTP 400" in msg and "change gpt weight failed" in msg
    assert "missing.ckpt" in msg

    api.fail_tts = True
    with pytest.raises(PipelineError) as ei:
        conv.convert(vocal, sr, ref, sr, ConversionParams(model_id="alice", **p), ctx_for(tmp_path))
    assert "tts failed: CUDA out of memory" in ei.value.message
    api.fail_tts = False
    api.calls.clear()
    conv.convert(vocal, sr, ref, sr, ConversionParams(model_id="alice", **p), ctx_for(tmp_path))
    assert api.paths() == ["/tts"]  # alice's weights did load before the failed /tts


def test_unknown_model_without_project_root(api, tmp_path):
    conv = GptSovitsApiConverter(base_url=api.url)
    with pytest.raises(PipelineError) as ei:
        conv.convert(np.zeros(16000, np.float32), 16000, signals.reference_voice(4.0, 16000), 16000,
                     ConversionParams(model_id="carol", target_text="la"), ctx_for(tmp_path))
    assert ei.value.code == "model_not_found" and "carol" in ei.value.message


def test_unreachable_server(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    conv = GptSovitsApiConverter(base_url=url, connect_timeout=2)
    with pytest.raises(PipelineError) as ei:
        conv.convert(np.zeros(16000, np.float32), 16000, signals.reference_voice(4.0, 16000), 16000,
                     ConversionParams(reference_text="hi", target_text="la"), ctx_for(tmp_path))
    assert ei.value.message.startswith(f"GPT-SoVITS API at {url} is unreachable: ")
    assert ei.value.code == "engine_unreachable" and ei.value.transient


def test_cancel_while_waiting_for_tts(api, tmp_path):
    api.delay = 3.0
    conv = GptSovitsApiConverter(base_url=api.url)
    t0 = time.monotonic()
    ctx = ctx_for(tmp_path, should_cancel=lambda: time.monotonic() - t0 > 0.5)
    with pytest.raises(Canceled):
        conv.convert(np.zeros(16000, np.float32), 16000, signals.reference_voice(4.0, 16000), 16000,
                     ConversionParams(reference_text="hi", target_text="la"), ctx)
    assert time.monotonic() - t0 < 2.5  # the server would take 3 s


def test_models_resolved_from_project_root(api, tmp_path):
    root = tmp_path / "gsv"
    (root / "trained" / "dave").mkdir(parents=True)
    (root / "trained" / "dave" / "dave-e10.ckpt").write_bytes(b"g")
    (root / "trained" / "dave" / "dave_e8_s100.pth").write_bytes(b"s")
    conv = GptSovitsApiConverter(base_url=api.url, project_root=str(root))
    sr = 16000
    vocal, _ = melody_vocal(sr)
    conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr,
                 ConversionParams(model_id="dave", reference_text="hi", target_text="la"), ctx_for(tmp_path))
    assert api.calls[0] == ("/set_gpt_weights", {"weights_path": str((root / "trained/dave/dave-e10.ckpt").resolve())})


# --- model resolution -----------------------------------------------------------------------

def _touch(p: Path, age: float = 0.0) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
    return p


def test_resolve_weight_json_native_shape(tmp_path):
    g = _touch(tmp_path / "GPT_weights_v2" / "x-e15.ckpt")
    s = _touch(tmp_path / "SoVITS_weights_v2" / "x_e8_s200.pth")
    (tmp_path / "weight.json").write_text(json.dumps({
        "GPT": {"v2": "GPT_weights_v2/x-e15.ckpt"}, "SoVITS": {"v2": ["SoVITS_weights_v2/x_e8_s200.pth"]}}))
    for mid in ("v2", None):
        m = resolve_gpt_sovits_model(tmp_path, mid)
        assert m == GptSovitsModel(g.resolve(), s.resolve(), None, None, source="weight.json:v2")


def test_resolve_weight_json_per_model_shape(tmp_path):
    g = _touch(tmp_path / "w" / "eve.ckpt")
    s = _touch(tmp_path / "w" / "eve.pth")
    r = _touch(tmp_path / "w" / "eve.wav")
    (tmp_path / "weight.json").write_text(json.dumps({"eve": {
        "gpt_weights": "w/eve.ckpt", "sovits_weights": str(s), "ref_audio": "w/eve.wav", "ref_text": "hello"}}))
    m = resolve_gpt_sovits_model(tmp_path, "eve")
    assert (m.gpt_weights, m.sovits_weights, m.ref_audio, m.ref_text) == (g.resolve(), s.resolve(), r.resolve(),
                                                                         "hello")


def test_resolve_trained_folder_newest_and_reference(tmp_path):
    d = tmp_path / "trained" / "frank"
    _touch(d / "frank-e5.ckpt", age=100)
    g = _touch(d / "frank-e10.ckpt")
    s = _touch(d / "sub" / "frank_e8_s10.pth")
    _touch(d / "ref.wav")
    (d / "ref.txt").write_text("reference words\n")
    m = resolve_gpt_sovits_model(tmp_path, "frank")
    assert m.gpt_weights == g.resolve() and m.sovits_weights == s.resolve()
    assert m.ref_audio == (d / "ref.wav").resolve() and m.ref_text == "reference words"
    assert m.source == "trained"


def test_resolve_newest_in_weight_folders(tmp_path):
    _touch(tmp_path / "GPT_weights" / "old-e5.ckpt", age=500)
    g = _touch(tmp_path / "GPT_weights_v2" / "new-e15.ckpt", age=10)
    _touch(tmp_path / "SoVITS_weights" / "old_e8_s1.pth", age=500)
    s = _touch(tmp_path / "SoVITS_weights_v2" / "new_e8_s2.pth", age=10)
    m = resolve_gpt_sovits_model(tmp_path)
    assert (m.gpt_weights, m.sovits_weights) == (g.resolve(), s.resolve())
    m = resolve_gpt_sovits_model(tmp_path, "old")  # an experiment name picks its own files
    assert m.gpt_weights.name == "old-e5.ckpt" and m.sovits_weights.name == "old_e8_s1.pth"


@pytest.mark.parametrize("setup, model_id, fragment, code", [
    (lambda r: None, "nobody", "no GPT-SoVITS model 'nobody'", "model_not_found"),
    (lambda r: None, None, "no GPT-SoVITS weights", "model_not_found"),
    (lambda r: None, "../etc", "not a plain name", "invalid_model"),
    (lambda r: _touch(r / "trained" / "gina" / "g.ckpt"), "gina", "no a SoVITS *.pth", "model_not_found"),
    (lambda r: (r / "weight.json").write_text(json.dumps({"hal": {"gpt_weights": "../../outside.ckpt",
                                                                  "sovits_weights": "x.pth"}})),
     "hal", "outside the GPT-SoVITS project folder", "invalid_model"),
    (lambda r: (r / "weight.json").write_text("{not json"), "x", "not valid JSON", "invalid_model"),
    (lambda r: (r / "weight.json").write_text(json.dumps({"ivy": {"gpt_weights": "nope.ckpt",
                                                                  "sovits_weights": "nope.pth"}})),
     "ivy", "does not exist", "model_not_found"),
])
def test_resolve_errors(tmp_path, setup, model_id, fragment, code):
    root = tmp_path / "root"
    root.mkdir()
    setup(root)
    with pytest.raises(PipelineError) as ei:
        resolve_gpt_sovits_model(root, model_id)
    assert fragment in ei.value.message and ei.value.code == code and ei.value.stage == "infer"


def test_resolve_refuses_symlinks_out_of_the_project(tmp_path):
    outside = _touch(tmp_path / "elsewhere" / "evil.ckpt")
    root = tmp_path / "root"
    d = root / "trained" / "jack"
    d.mkdir(parents=True)
    (d / "evil.ckpt").symlink_to(outside)
    _touch(d / "jack.pth")
    with pytest.raises(PipelineError) as ei:
        resolve_gpt_sovits_model(root, "jack")
    assert "outside" in ei.value.message
    with pytest.raises(PipelineError):
        resolve_gpt_sovits_model(tmp_path / "missing-root", "jack")


def test_use_model_reference(api, tmp_path):
    root = tmp_path / "gsv"
    d = root / "trained" / "liz"
    d.mkdir(parents=True)
    (d / "liz-e10.ckpt").write_bytes(b"g")
    (d / "liz_e8_s100.pth").write_bytes(b"s")
    signals.write(d / "ref.wav", signals.reference_voice(5.0, 32000), 32000)
    (d / "ref.txt").write_text("liz speaking")
    conv = GptSovitsApiConverter(base_url=api.url, project_root=str(root), use_model_reference=True)
    sr = 16000
    vocal, _ = melody_vocal(sr)
    conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr,
                 ConversionParams(model_id="liz", reference_text="ignored", target_text="la"), ctx_for(tmp_path))
    body = api.calls[-1][1]
    assert body["ref_audio_path"] == str((d / "ref.wav").resolve()) and body["prompt_text"] == "liz speaking"


def test_share_dir_reference_is_removed(api, tmp_path):
    share = tmp_path / "share"
    conv = GptSovitsApiConverter(base_url=api.url, share_dir=str(share))
    sr = 16000
    vocal, _ = melody_vocal(sr)
    conv.convert(vocal, sr, signals.reference_voice(4.0, sr), sr,
                 ConversionParams(reference_text="hi", target_text="la"), ctx_for(tmp_path))
    assert api.calls[-1][1]["ref_audio_path"].startswith(str(share.resolve()))
    assert list(share.iterdir()) == []


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_fit_real_speech_onto_a_sung_melody(tmp_path):
    """Real speech (espeak-ng) stands in for GPT-SoVITS' output: the fitted result must sing
    the song's melody, voiced where the singer is."""
    import subprocess
    import pyworld
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "I have a dream that one day this nation will rise up"],
                   check=True, capture_output=True, timeout=30)
    speech, ssr = sf.read(str(wav), dtype="float32")
    sr = 22050
    _mix, vocal, _inst, f0 = signals.song(6.0, sr)
    out = fit_to_vocal(speech, ssr, vocal[0], sr, pitch_shift=-3.0)
    assert out.shape == (6 * sr,)
    x = out.astype(np.float64)
    fo, t = pyworld.dio(x, sr, f0_floor=60, f0_ceil=1100, frame_period=10)
    fo = pyworld.stonemask(x, fo, t, sr)
    ref = f0[np.clip((t * sr).astype(int), 0, len(f0) - 1)] * 2 ** (-3 / 12)
    both = (fo > 0) & (ref > 0)
    assert both.sum() / (ref > 0).sum() > 0.7
    assert np.mean(1200 * np.abs(np.log2(fo[both] / ref[both])) < 50) > 0.9
