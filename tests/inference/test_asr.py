"""faster-whisper ASR engine (tiny random-weight model built by the test) and speech_seconds."""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference import registry
from inference.context import StageContext
from inference.engines.asr import FasterWhisperASR, fill_texts, get_asr, speech_seconds, whisper_language
from inference.engines.base import ConversionParams
from inference.errors import PipelineError
from tests import signals
from tests.inference.tiny_whisper import session_tiny_whisper

ESPEAK = shutil.which("espeak-ng")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return session_tiny_whisper(tmp_path_factory)


@pytest.fixture()
def fresh_registry():
    registry.clear_cache()
    yield
    registry.clear_cache()


def opts(path: Path) -> dict:
    # Random weights decode erratically: greedy, and a token cap keeps the test short.
    return {"model_path": str(path), "device": "cpu", "beam_size": 1, "max_new_tokens": 20}


def test_transcribe_with_real_engine_loads_once(tiny_model, fresh_registry, tmp_path):
    clip = signals.reference_voice(2.0, 44100)
    ctx = StageContext(stage="infer", workdir=tmp_path)
    asr = registry.get_engine("asr", "faster-whisper", **opts(tiny_model))
    assert isinstance(asr, FasterWhisperASR) and asr.compute_type == "int8"
    text = asr.transcribe(clip, 44100, ctx=ctx)
    assert isinstance(text, str)
    again = get_asr(opts(tiny_model), ctx)
    assert again is asr
    assert isinstance(again.transcribe(np.stack([clip, clip]), 44100, language="en"), str)
    assert registry.load_counts[("asr", "faster-whisper")] == 1


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "missing model.bin"),
    (lambda p: None, "model_path"),
])
def test_missing_or_invalid_model_folder(tmp_path, fresh_registry, make, fragment):
    path = make(tmp_path)
    ctx = StageContext(stage="infer", workdir=tmp_path)
    with pytest.raises(PipelineError) as ei:
        get_asr({"model_path": str(path) if path else None}, ctx)
    assert fragment in ei.value.message and ei.value.stage == "infer"
    assert ei.value.code in ("model_missing", "model_invalid")


def test_corrupt_model_bin_is_a_clear_error(tmp_path, tiny_model):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "model.bin").write_bytes(b"garbage")
    with pytest.raises(PipelineError) as ei:
        FasterWhisperASR(model_path=bad)
    assert ei.value.code == "model_invalid" and "could not load" in ei.value.message


def test_fill_texts_transcribes_only_what_is_missing(tiny_model, fresh_registry, tmp_path):
    ctx = StageContext(stage="infer", workdir=tmp_path)
    voice = signals.reference_voice(1.0, 16000)
    ref, tgt = fill_texts("given words", None, vocal=voice, sr=16000, reference=voice, ref_sr=16000,
                          asr_options=opts(tiny_model), ctx=ctx)
    assert ref == "given words" and isinstance(tgt, str)
    assert "reference_text" not in ctx.info["asr"]
    with pytest.raises(PipelineError) as ei:
        fill_texts(None, None, vocal=voice, sr=16000, reference=voice, ref_sr=16000, asr_options=None,
                   ctx=ctx, required=True)
    assert ei.value.code == "missing_text" and "reference_text and target_text" in ei.value.message


def test_command_converter_fills_texts_with_asr(tiny_model, fresh_registry, tmp_path):
    script = tmp_path / "infer.py"
    script.write_text(textwrap.dedent("""
        import json, os, shutil, sys
        shutil.copy(sys.argv[2], sys.argv[3])
        json.dump([os.environ["COVER_REFERENCE_TEXT"], os.environ["COVER_TARGET_TEXT"]],
                  open(sys.argv[3] + ".json", "w"))
    """))
    conv = registry.get_engine("converter", "gpt-sovits-command",
                               template="{python_exec} " + str(script) + " {reference_voice} {input_vocal} "
                               "{output_vocal}", asr=opts(tiny_model))
    ctx = StageContext(stage="infer", workdir=tmp_path / "w")
    vocal = signals.reference_voice(1.0, 22050)
    out = conv.convert(vocal, 22050, vocal, 22050, ConversionParams(reference_text="ref words"), ctx)
    assert out.shape == vocal.shape
    ref, tgt = json.loads(next((tmp_path / "w" / "tmp").glob("convert-*/output_vocal.wav.json")).read_text())
    assert ref == "ref words" and tgt == ctx.info["asr"]["target_text"]


def test_language_hints_from_gpt_sovits_codes():
    assert [whisper_language(c) for c in ("all_zh", "auto", "auto_yue", "en", "JA", None, "", "en-US")] == \
        ["zh", None, None, "en", "ja", None, None, "en"]


# --- speech_seconds -------------------------------------------------------------------------

def test_speech_seconds_voice_like_signal_vs_noise_and_silence():
    sr = 44100
    voice = signals.reference_voice(6.0, sr)  # 0.3 s pause every 1.5 s: 4.8 s voiced
    assert 4.0 <= speech_seconds(voice, sr) <= 6.0
    assert speech_seconds(signals.noise(6.0, sr), sr) < 0.3
    assert speech_seconds(np.zeros(6 * sr, np.float32), sr) == 0.0
    assert speech_seconds(signals.sine_from_f0(np.full(3 * sr, 220.0), sr), sr) < 0.3  # a test tone
    assert speech_seconds(np.zeros(0, np.float32), sr) == 0.0
    # quiet voice still counts; stereo input is fine
    assert speech_seconds(signals.pan(voice * 0.05, 0.3), sr) >= 4.0


def test_speech_seconds_methods_are_honest():
    """Silero (speech-trained) misses the synthetic harmonic voice; the periodicity detector
    finds it. ``auto`` takes the larger. Both say no to noise."""
    sr = 16000
    voice = signals.reference_voice(6.0, sr)
    assert speech_seconds(voice, sr, method="silero") < 1.0
    assert speech_seconds(voice, sr, method="periodicity") >= 4.0
    assert speech_seconds(signals.noise(4.0, sr), sr, method="silero") < 0.3
    with pytest.raises(ValueError):
        speech_seconds(voice, sr, method="magic")


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed")
def test_speech_seconds_real_speech_from_espeak(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run([ESPEAK, "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True,
                   capture_output=True, timeout=30)
    audio, sr = sf.read(str(wav), dtype="float32")
    dur = len(audio) / sr
    padded = np.concatenate([np.zeros(sr, np.float32), audio, np.zeros(sr, np.float32)])
    silero = speech_seconds(padded, sr, method="silero")
    assert 0.5 * dur <= silero <= dur + 0.2  # Silero recognises real speech, not the padding
    assert speech_seconds(padded, sr) >= silero
