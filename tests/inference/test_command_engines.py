"""Separator ``command`` and converter ``gpt-sovits-command`` against real small scripts."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from inference.context import StageContext
from inference.engines.base import ConversionParams
from inference.engines.command import (CommandSeparator, GptSovitsCommandConverter, fill_template,
                                       run_template)
from inference.errors import Canceled, PipelineError
from inference.registry import get_engine
from tests import signals

SR = 22050
SEP_TEMPLATE = "{python_exec} {project_root}/separate.py {song_input} {vocal_output} {inst_output} {uvr_model}"
INFER_TEMPLATE = ("{python_exec} {project_root}/infer.py {reference_voice} {input_vocal} {output_vocal} "
                  "{model_id} {pitch_shift}")

SEPARATE_PY = """
import sys, numpy as np, soundfile as sf
from scipy import signal
song, vocal_out, inst_out, model = sys.argv[1:5]
x, sr = sf.read(song, dtype="float32", always_2d=True)
print("PROGRESS 0.3", flush=True)
b, a = signal.butter(4, 1000, "highpass", fs=sr)
vocal = signal.lfilter(b, a, x.mean(axis=1))            # mono, by filtering
inst = x - vocal[:, None]
# Deliberately awkward outputs: vocal mono at another rate, instrumental 100 samples short.
sf.write(vocal_out, signal.resample_poly(vocal, 16000, sr), 16000)
sf.write(inst_out, inst[:-100], sr, subtype="PCM_24")
print("PROGRESS 1.0", flush=True)
print("model=" + model)
"""

INFER_PY = """
import json, os, sys, numpy as np, soundfile as sf
ref, vin, vout, model_id, shift = sys.argv[1:6]
x, sr = sf.read(vin, dtype="float32")
factor = 2 ** (float(shift) / 12)
t = np.arange(0, len(x) - 1, factor)                    # pitch shift by resampling
y = np.interp(t, np.arange(len(x)), x)
from scipy import signal
sf.write(vout, signal.resample_poly(y, 32000, sr), 32000, format="WAV")  # another rate on purpose
json.dump({"argv": sys.argv[1:], "ref_text": os.environ.get("COVER_REFERENCE_TEXT"),
           "tgt_text": os.environ.get("COVER_TARGET_TEXT")}, open(vout + ".json", "w"))
"""

FAIL_PY = """
import sys
for i in range(40):
    print(f"log line {i}", file=sys.stderr)
print("RuntimeError: shapes do not match in layer 7", file=sys.stderr)
sys.exit(3)
"""

HANG_PY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name, body in (("separate.py", SEPARATE_PY), ("infer.py", INFER_PY), ("fail.py", FAIL_PY),
                       ("hang.py", HANG_PY)):
        (root / name).write_text(textwrap.dedent(body))
    return root


def make_ctx(tmp_path: Path, stage: str = "separate", should_cancel=None):
    events = []
    ctx = StageContext(stage=stage, workdir=tmp_path / "work", on_event=events.append, should_cancel=should_cancel)
    return ctx, events


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its (new) parent to reap it is dead too
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# --- template filling -----------------------------------------------------------------------

def test_fill_template_quotes_values_and_leaves_shell_vars():
    cmd = fill_template("echo {a} ${HOME} {b}", {"a": "it's a file.wav", "b": "x;rm -rf /"})
    assert cmd == "echo 'it'\"'\"'s a file.wav' ${HOME} 'x;rm -rf /'"


def test_missing_placeholders_are_named(tmp_path):
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(PipelineError) as ei:
        run_template("{python_exec} {project_root}/x.py {nonsense}", {"python_exec": sys.executable,
                     "project_root": None}, timeout=5, ctx=ctx, what="the test command")
    assert ei.value.code == "config_error" and ei.value.stage == "separate"
    assert "{project_root}" in ei.value.message and "{nonsense}" in ei.value.message


# --- separator ------------------------------------------------------------------------------

def test_command_separator_runs_script_and_aligns_outputs(tmp_path, project):
    mix, _vocal, _inst, _f0 = signals.song(1.5, SR)
    sep = get_engine("separator", "command", template=SEP_TEMPLATE, project_root=str(project),
                     uvr_model="HP5_only_main_vocal", timeout=60)
    assert isinstance(sep, CommandSeparator)
    ctx, events = make_ctx(tmp_path)
    vocals, inst = sep.separate(mix, SR, ctx)
    assert vocals.shape == mix.shape and inst.shape == mix.shape
    assert vocals.dtype == np.float32 and np.all(np.isfinite(vocals))
    assert np.std(vocals) > 1e-3 and np.std(inst) > 1e-3
    # The instrumental came back 100 samples short: padded with silence at the end.
    assert np.all(inst[:, -100:] == 0)
    progress = [e.progress for e in events if e.type == "progress"]
    assert any(0.2 < p < 0.5 for p in progress), progress  # "PROGRESS 0.3" from the script
    assert progress[-1] == 1.0
    assert ctx.info["engine"] == "command"


def test_failing_command_reports_exit_code_and_stderr_tail(tmp_path, project):
    sep = CommandSeparator(template="{python_exec} {project_root}/fail.py {song_input}",
                           project_root=str(project), timeout=60)
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(PipelineError) as ei:
        sep.separate(signals.noise(0.2, SR)[None, :], SR, ctx)
    err = ei.value
    assert err.code == "command_failed" and err.stage == "separate"
    assert "exit code 3" in err.message
    assert "RuntimeError: shapes do not match in layer 7" in err.message
    assert "log line 39" in err.message and "log line 5\n" not in err.message  # only the tail
    assert len(err.message) < 2200


def test_out_of_memory_in_stderr_is_transient(tmp_path):
    tpl = "{python_exec} -c \"import sys; sys.exit('torch.OutOfMemoryError: CUDA out of memory.')\""
    ctx, _ = make_ctx(tmp_path, "infer")
    with pytest.raises(PipelineError) as ei:
        run_template(tpl, {"python_exec": sys.executable}, timeout=30, ctx=ctx, what="the conversion command")
    assert ei.value.code == "out_of_memory" and ei.value.transient and "exit code 1" in ei.value.message


def test_command_that_writes_nothing(tmp_path, project):
    sep = CommandSeparator(template="{python_exec} -c pass {song_input} {vocal_output}",
                           project_root=str(project), timeout=60)
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(PipelineError) as ei:
        sep.separate(signals.noise(0.2, SR)[None, :], SR, ctx)
    assert ei.value.code == "missing_output" and "vocal" in ei.value.message


def test_command_that_writes_garbage(tmp_path, project):
    tpl = "{python_exec} -c \"import sys; [open(p, 'w').write('not audio') for p in sys.argv[1:]]\" " \
          "{vocal_output} {inst_output}"
    sep = CommandSeparator(template=tpl, timeout=60)
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(PipelineError) as ei:
        sep.separate(signals.noise(0.2, SR)[None, :], SR, ctx)
    assert ei.value.code == "bad_output" and "unreadable vocal" in ei.value.message


def test_timeout_kills_the_whole_process_tree(tmp_path, project):
    pidfile = tmp_path / "child.pid"
    ctx, _ = make_ctx(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as ei:
        run_template("{python_exec} {project_root}/hang.py {pidfile}",
                     {"python_exec": sys.executable, "project_root": project, "pidfile": pidfile},
                     timeout=3, ctx=ctx, what="the separation command")
    assert ei.value.code == "timeout"
    assert "timed out after 3 s" in ei.value.message
    assert time.monotonic() - t0 < 12
    assert pidfile.exists(), "the script did not start its child within the timeout"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child), "the grandchild survived the timeout"


def test_cancel_during_run_stops_the_command(tmp_path, project):
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    ctx, _ = make_ctx(tmp_path, should_cancel=lambda: time.monotonic() - t0 > 0.8)
    with pytest.raises(Canceled):
        run_template("{python_exec} {project_root}/hang.py {pidfile}",
                     {"python_exec": sys.executable, "project_root": project, "pidfile": pidfile},
                     timeout=60, ctx=ctx, what="the separation command")
    assert time.monotonic() - t0 < 8
    if pidfile.exists():
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while not _dead(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dead(child)


# --- converter ------------------------------------------------------------------------------

def test_gpt_sovits_command_converter_pitch_shift_and_alignment(tmp_path, project):
    vocal = signals.sine_from_f0(np.full(SR, 220.0), SR)
    reference = signals.reference_voice(1.0, 16000)
    conv = get_engine("converter", "gpt-sovits-command", template=INFER_TEMPLATE, project_root=str(project),
                      timeout=60)
    assert isinstance(conv, GptSovitsCommandConverter)
    ctx, _ = make_ctx(tmp_path, "infer")
    params = ConversionParams(pitch_shift=12.0, model_id="my voice", reference_text="hello there",
                              target_text="la la la")
    out = conv.convert(vocal, SR, reference, 16000, params, ctx)
    assert out.shape == vocal.shape and out.dtype == np.float32
    n = len(vocal) // 2  # the script's output is half as long at +12: the rest is padding
    assert dominant_hz(out[: n - 100], SR) == pytest.approx(440.0, abs=4)
    assert np.all(out[n + 10:] == 0)
    sidecar = json.loads(next((tmp_path / "work" / "tmp").glob("convert-*/output_vocal.wav.json")).read_text())
    assert sidecar["argv"][3:] == ["my voice", "12"]  # quoted: one argument despite the space
    # The template has no {reference_text}/{target_text}: texts come through the environment.
    assert sidecar["ref_text"] == "hello there" and sidecar["tgt_text"] == "la la la"


def test_converter_text_placeholders(tmp_path, project):
    tpl = INFER_TEMPLATE + " {reference_text} {target_text}"
    (project / "infer.py").write_text(textwrap.dedent(INFER_PY).replace("sys.argv[1:6]", "sys.argv[1:6]; "
                                      "open(sys.argv[3] + '.texts', 'w').write('|'.join(sys.argv[6:8]))"))
    conv = GptSovitsCommandConverter(template=tpl, project_root=str(project), timeout=60)
    ctx, _ = make_ctx(tmp_path, "infer")
    vocal = signals.sine_from_f0(np.full(SR // 2, 220.0), SR)
    out = conv.convert(vocal, SR, vocal, SR, ConversionParams(target_text="it's a song"), ctx)
    assert out.shape == vocal.shape
    texts = next((tmp_path / "work" / "tmp").glob("convert-*/output_vocal.wav.texts")).read_text()
    assert texts == "|it's a song"  # empty reference text is an empty argument


def test_converter_failure_names_stage_infer(tmp_path, project):
    conv = GptSovitsCommandConverter(template="{python_exec} {project_root}/fail.py", project_root=str(project))
    ctx, _ = make_ctx(tmp_path, "infer")
    vocal = signals.noise(0.2, SR)
    with pytest.raises(PipelineError) as ei:
        conv.convert(vocal, SR, vocal, SR, ConversionParams(), ctx)
    assert ei.value.stage == "infer" and "exit code 3" in str(ei.value)


def test_template_from_environment(tmp_path, project, monkeypatch):
    monkeypatch.setenv("COVER_INFER_CMD_TEMPLATE", INFER_TEMPLATE)
    conv = GptSovitsCommandConverter(project_root=str(project))
    assert conv.template == INFER_TEMPLATE
    monkeypatch.delenv("COVER_INFER_CMD_TEMPLATE")
    conv = GptSovitsCommandConverter(project_root=str(project))
    ctx, _ = make_ctx(tmp_path, "infer")
    with pytest.raises(PipelineError) as ei:
        conv.convert(np.zeros(100, np.float32), SR, np.zeros(100, np.float32), SR, ConversionParams(), ctx)
    assert ei.value.code == "config_error" and "no command template" in ei.value.message


def test_converter_weights_placeholders_resolved_from_project_root(tmp_path, project):
    d = project / "trained" / "kim"
    d.mkdir(parents=True)
    (d / "kim-e10.ckpt").write_bytes(b"g")
    (d / "kim_e8_s80.pth").write_bytes(b"s")
    tpl = ("{python_exec} -c \"import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); "
           "open(sys.argv[2] + '.w', 'w').write(sys.argv[3] + '|' + sys.argv[4])\" "
           "{input_vocal} {output_vocal} {gpt_weights} {sovits_weights}")
    conv = GptSovitsCommandConverter(template=tpl, project_root=str(project))
    ctx, _ = make_ctx(tmp_path, "infer")
    vocal = signals.noise(0.3, SR)
    out = conv.convert(vocal, SR, vocal, SR, ConversionParams(model_id="kim"), ctx)
    assert np.allclose(out, vocal, atol=1e-6)
    w = next((tmp_path / "work" / "tmp").glob("convert-*/output_vocal.wav.w")).read_text()
    assert w == f"{(d / 'kim-e10.ckpt').resolve()}|{(d / 'kim_e8_s80.pth').resolve()}"
    with pytest.raises(PipelineError) as ei:
        conv.convert(vocal, SR, vocal, SR, ConversionParams(model_id="nobody"), ctx)
    assert ei.value.code == "model_not_found"


def test_pipeline_end_to_end_with_command_engines(tmp_path, project):
    from inference.config import PipelineConfig
    from inference.pipeline import Pipeline

    mix, _v, _i, _f0 = signals.song(3.0, SR)
    song = signals.write(tmp_path / "song.wav", mix, SR)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(4.0, SR), SR)
    cfg = PipelineConfig(separator="command", converter="gpt-sovits-command", pitch_shift=3.0,
                         work_sample_rate=SR, target_text="la la",
                         engine_options={"command": {"template": SEP_TEMPLATE, "project_root": str(project)},
                                         "gpt-sovits-command": {"template": INFER_TEMPLATE,
                                                                "project_root": str(project)}})
    events = []
    result = Pipeline(cfg, on_event=events.append).run(song, ref, tmp_path / "job")
    assert result.cover.is_file()
    cover, csr = sf_read(result.cover)
    assert cover.shape[0] == int(3.0 * SR) and np.all(np.isfinite(cover))
    assert [e.stage for e in events if e.type == "stage_finished"] == ["preprocess", "separate", "infer", "mix",
                                                                      "finalize"]
    assert not (tmp_path / "job" / "tmp").exists()  # scratch files are removed


def sf_read(path):
    import soundfile as sf
    return sf.read(str(path), dtype="float32")


DELAY_PY = """
import sys, numpy as np, soundfile as sf
song, vocal_out, inst_out = sys.argv[1:4]
x, sr = sf.read(song, dtype="float32", always_2d=True)
pad = np.zeros((1000, x.shape[1]), np.float32)            # model padding leaking into the output
sf.write(vocal_out, np.concatenate([pad, 0.5 * x]), sr)
sf.write(inst_out, np.concatenate([pad, 0.5 * x]), sr)
"""


def test_separator_realigns_delayed_stems(tmp_path, project):
    (project / "delay.py").write_text(textwrap.dedent(DELAY_PY))
    sep = CommandSeparator(template="{python_exec} {project_root}/delay.py {song_input} {vocal_output} {inst_output}",
                           project_root=str(project))
    mix, _v, _i, _f0 = signals.song(2.0, SR)
    ctx, _ = make_ctx(tmp_path)
    vocals, inst = sep.separate(mix, SR, ctx)
    assert ctx.info["lag_samples"] == 1000
    assert np.allclose(vocals + inst, mix, atol=1e-3)  # back in place (16-bit output)
    # an undelayed script is left alone
    sep2 = get_engine("separator", "command", template=SEP_TEMPLATE, project_root=str(project))
    ctx2, _ = make_ctx(tmp_path / "b")
    sep2.separate(mix, SR, ctx2)
    assert ctx2.info["lag_samples"] == 0
