"""Engines that run the user's own scripts: separator ``command``, converter ``gpt-sovits-command``.

Both fill a shell command template (the inherited ``COVER_SEPARATE_CMD_TEMPLATE`` and
``COVER_INFER_CMD_TEMPLATE``) and run it with :func:`run_template`: one subprocess per job,
in its own process group (a timeout or cancel kills the whole tree), polled every 0.25 s.

Placeholders are written ``{name}``; every value is shell-quoted (``shlex.quote``), so a
template must not quote them again. ``${VAR}`` shell expansions are left alone.

Separator template placeholders: ``{python_exec} {project_root} {song_input} {vocal_output}
{inst_output} {uvr_model}``.

Converter template placeholders: ``{python_exec} {project_root} {reference_voice}
{input_vocal} {output_vocal} {model_id} {pitch_shift}`` and optionally ``{reference_text}``
and ``{target_text}`` (empty string when unknown), and ``{gpt_weights}`` / ``{sovits_weights}``
(the model's weights found under ``project_root`` by :func:`inference.models.resolve_gpt_sovits_model`). When the template lacks those two, the
texts are passed in the environment as ``COVER_REFERENCE_TEXT`` / ``COVER_TARGET_TEXT``
(always set; empty when unknown). Missing texts are transcribed first when the converter
has ``asr`` options (``{"model_path": ...}``, see :mod:`inference.engines.asr`).

A script may print lines ``PROGRESS 0.42`` on stdout; they become stage progress.
When ``template`` is not given, the environment variables above are used.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import decode, resample, to_mono, write_wav
from ..context import StageContext
from ..errors import InputError, PipelineError
from ..registry import register
from .base import ConversionParams

log = logging.getLogger("inference.command")

POLL_SECONDS = 0.25
KILL_GRACE_SECONDS = 3.0
TAIL_LINES = 20
TAIL_CHARS = 2000
LAG_SECONDS = 0.5  # the separator's stems are realigned when they are off by up to this much
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY", re.IGNORECASE)
_PROGRESS = re.compile(r"^\s*PROGRESS\s+([0-9]*\.?[0-9]+)\s*$")


@dataclass
class CommandResult:
    command: str
    returncode: int
    seconds: float
    stdout_tail: str
    stderr_tail: str


def placeholders(template: str) -> list[str]:
    """The ``{names}`` used in ``template``, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(template)))


def fill_template(template: str, values: dict[str, Any], *, stage: str | None = None, what: str = "command") -> str:
    """Replace each ``{name}`` with ``shlex.quote(str(values[name]))``.

    A placeholder with no value (absent or ``None``) raises :class:`PipelineError` naming it.
    """
    if not template or not str(template).strip():
        raise PipelineError(stage, f"{what}: no command template configured", code="config_error")
    missing = [n for n in placeholders(template) if values.get(n) is None]
    if missing:
        raise PipelineError(stage, f"{what} template uses placeholders with no value: "
                            + ", ".join("{" + n + "}" for n in missing)
                            + f" (known: {', '.join(sorted(k for k, v in values.items() if v is not None))})",
                            code="config_error")
    return _PLACEHOLDER.sub(lambda m: shlex.quote(str(values[m.group(1)])), template)


def _tail(lines: collections.deque) -> str:
    text = "\n".join(lines).strip()
    return text[-TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("process %s did not die after SIGKILL", proc.pid)


def run_template(template: str, values: dict[str, Any], *, timeout: float | None, ctx: StageContext,
                 what: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 progress_range: tuple[float, float] = (0.0, 1.0)) -> CommandResult:
    """Fill ``template`` with shell-quoted ``values`` and run it to completion.

    Polls ``ctx`` (cancel, progress) every 0.25 s; ``PROGRESS <0..1>`` lines on the command's
    stdout are mapped onto ``progress_range``. Raises :class:`PipelineError` with code
    ``timeout`` after ``timeout`` seconds, ``command_failed`` on a non-zero exit (with the
    exit code and the last lines of stderr; ``out_of_memory``, transient, when they say so),
    and re-raises :class:`Canceled` after killing
    the process tree.
    """
    command = fill_template(template, values, stage=ctx.stage, what=what)
    full_env = dict(os.environ)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log.info("%s: running %s", what, command)
    out_tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    err_tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    pending: collections.deque = collections.deque()  # PROGRESS values not yet reported
    lo, hi = progress_range

    def pump(stream, tail, parse):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if parse:
                m = _PROGRESS.match(line)
                if m:
                    pending.append(max(0.0, min(1.0, float(m.group(1)))))
                    continue
            tail.append(line)
        stream.close()

    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env, cwd=str(cwd) if cwd else None,
                                start_new_session=True)
    except OSError as exc:
        raise PipelineError(ctx.stage, f"{what} could not start: {exc}", code="command_failed") from None
    readers = [threading.Thread(target=pump, args=(proc.stdout, out_tail, True), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_tail, False), daemon=True)]
    for r in readers:
        r.start()
    reported = [-1.0]

    def report_progress() -> bool:
        """Report the PROGRESS values received since the last poll (ctx.progress checks cancel)."""
        sent = False
        while pending:
            p = pending.popleft()
            if abs(p - reported[0]) >= 0.01 or (p == 1.0 and reported[0] != 1.0):
                reported[0] = p
                ctx.progress(lo + (hi - lo) * p, what)
                sent = True
        return sent

    try:
        while True:
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - t0
            if timeout is not None and elapsed > timeout:
                _terminate(proc)
                raise PipelineError(ctx.stage, f"{what} timed out after {timeout:g} s", code="timeout",
                                    transient=False)
            if not report_progress():
                ctx.check_cancel()
    except BaseException:
        if proc.poll() is None:
            _terminate(proc)
        raise
    finally:
        # Leftover children of a finished command (daemons, orphans) die with the job.
        _kill_group(proc, signal.SIGKILL)
        for r in readers:
            r.join(timeout=2.0)
    seconds = time.monotonic() - t0
    rc = proc.returncode
    result = CommandResult(command, rc, seconds, _tail(out_tail), _tail(err_tail))
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"failed with exit code {rc}"
        detail = result.stderr_tail or result.stdout_tail or "(no output)"
        if _OOM.search(detail):  # worth one retry, like an in-process CUDA OOM
            raise PipelineError(ctx.stage, f"{what} ran out of memory ({how}):\n{detail}",
                                code="out_of_memory", transient=True)
        raise PipelineError(ctx.stage, f"{what} {how}:\n{detail}", code="command_failed")
    report_progress()
    return result


def read_output(path: Path, *, ctx: StageContext, what: str, name: str) -> tuple[np.ndarray, int]:
    """Decode a file the command should have written; clear errors when it did not."""
    if not path.is_file():
        raise PipelineError(ctx.stage, f"{what} finished but wrote no {name} file ({path.name})",
                            code="missing_output")
    if path.stat().st_size == 0:
        raise PipelineError(ctx.stage, f"{what} wrote an empty {name} file ({path.name})", code="bad_output")
    try:
        return decode(path, name)
    except InputError as exc:
        raise PipelineError(ctx.stage, f"{what} wrote an unreadable {name} file: {exc.message}",
                            code="bad_output") from None


def fit_to(audio: np.ndarray, sr: int, *, target_sr: int, channels: int | None, length: int) -> np.ndarray:
    """Resample to ``target_sr``, match the channel count (None: mono ``(n,)``), pad/trim to ``length``."""
    x = audio if audio.ndim == 2 else audio[None, :]
    x = resample(x, sr, target_sr)
    if channels is None:
        x = to_mono(x)[None, :]
    elif x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        elif channels == 1:
            x = to_mono(x)[None, :]
        elif x.shape[0] > channels:
            x = x[:channels]
        else:
            x = np.concatenate([x, np.repeat(x[-1:], channels - x.shape[0], axis=0)])
    n = x.shape[1]
    if n < length:
        x = np.pad(x, ((0, 0), (0, length - n)))
    x = x[:, :length].astype(np.float32, copy=False)
    return x[0] if channels is None else np.ascontiguousarray(x)


def detect_lag(reference: np.ndarray, estimate: np.ndarray, sr: int, max_seconds: float = 0.5,
               window_seconds: float = 20.0) -> int:
    """Samples by which ``estimate`` lags ``reference`` (mono, same rate), or 0 when unsure.

    Scripts sometimes pad or trim their outputs (codec priming, model padding); the stems'
    sum should line up with the song. FFT cross-correlation over the first ``window_seconds``;
    a shift is trusted only when it correlates clearly better than no shift.
    """
    n = min(len(reference), len(estimate), int(window_seconds * sr))
    max_lag = min(int(max_seconds * sr), n // 4)
    if n < 1024 or max_lag < 1:
        return 0
    a = reference[:n].astype(np.float64)
    b = estimate[:n].astype(np.float64)
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if denom <= 1e-12:
        return 0
    size = 1 << int(np.ceil(np.log2(2 * n)))
    xc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    vals = np.concatenate([xc[: max_lag + 1], xc[size - max_lag:]]) / denom
    best = int(np.argmax(vals))
    lag, peak, zero = int(lags[best]), float(vals[best]), float(vals[0])
    if lag != 0 and peak > 0.3 and peak > 1.5 * max(zero, 0.0):
        return lag
    return 0


def _shift(x: np.ndarray, lag: int, length: int) -> np.ndarray:
    """``x`` (channels, >= length + lag) moved earlier by ``lag`` samples (later when negative),
    cut to ``length``."""
    if lag >= 0:
        return np.ascontiguousarray(x[:, lag: lag + length])
    return np.ascontiguousarray(np.pad(x, ((0, 0), (-lag, 0)))[:, :length])


def _template(value: str | None, env_name: str) -> str | None:
    return value if value else os.environ.get(env_name) or None


def _job_dir(ctx: StageContext, prefix: str) -> Path:
    base = ctx.tmpdir
    for i in range(1000):
        d = base / f"{prefix}-{i}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise PipelineError(ctx.stage, "could not create a scratch folder", code="io_error")


@register("separator", "command")
class CommandSeparator:
    """Separation by the user's script (``COVER_SEPARATE_CMD_TEMPLATE``).

    Options: ``template``, ``python_exec`` (default: this Python), ``project_root`` (also the
    working directory), ``uvr_model``, ``timeout`` (seconds, default 1800), ``env`` (extra
    environment). The stems are resampled to the song's rate, given its channel count and
    length, and shifted back when their sum is offset from the song (up to 0.5 s).
    """

    name = "command"
    version = "1"

    def __init__(self, template: str | None = None, python_exec: str | None = None,
                 project_root: str | None = None, uvr_model: str | None = "", timeout: float = 1800.0,
                 env: dict[str, str] | None = None):
        self.template = _template(template, "COVER_SEPARATE_CMD_TEMPLATE")
        self.python_exec = python_exec or sys.executable
        self.project_root = project_root
        self.uvr_model = uvr_model if uvr_model is not None else ""
        self.timeout = float(timeout) if timeout else None
        self.env = dict(env or {})

    def separate(self, song: np.ndarray, sr: int, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        what = "the separation command"
        song2 = song if song.ndim == 2 else song[None, :]
        d = _job_dir(ctx, "separate")
        song_in, vocal_out, inst_out = d / "song.wav", d / "vocals.wav", d / "instrumental.wav"
        write_wav(song_in, song2, sr)
        values = {"python_exec": self.python_exec, "project_root": self.project_root,
                  "song_input": song_in, "vocal_output": vocal_out, "inst_output": inst_out,
                  "uvr_model": self.uvr_model}
        res = run_template(self.template, values, timeout=self.timeout, ctx=ctx, what=what, env=self.env,
                           cwd=self.project_root if self.project_root and Path(self.project_root).is_dir() else None,
                           progress_range=(0.02, 0.95))
        voc, vsr = read_output(vocal_out, ctx=ctx, what=what, name="vocal")
        inst, isr = read_output(inst_out, ctx=ctx, what=what, name="instrumental")
        n = song2.shape[1]
        extra = int(LAG_SECONDS * sr)  # keep a little beyond the song's end in case the stems are late
        shape = dict(target_sr=sr, channels=song2.shape[0], length=n + extra)
        vocals, instrumental = fit_to(voc, vsr, **shape), fit_to(inst, isr, **shape)
        lag = detect_lag(to_mono(song2), to_mono(vocals[:, :n] + instrumental[:, :n]), sr, LAG_SECONDS)
        if lag:
            ctx.warn(f"the separation command's stems were offset by {lag / sr * 1000:.0f} ms; realigned")
        vocals, instrumental = _shift(vocals, lag, n), _shift(instrumental, lag, n)
        if song.ndim == 1:
            vocals, instrumental = vocals[0], instrumental[0]
        ctx.info.update({"engine": self.name, "command_seconds": round(res.seconds, 3), "lag_samples": lag})
        ctx.progress(1.0)
        return vocals, instrumental


@register("converter", "gpt-sovits-command")
class GptSovitsCommandConverter:
    """Conversion by the user's GPT-SoVITS script (``COVER_INFER_CMD_TEMPLATE``), one process per job.

    Options: ``template``, ``python_exec``, ``project_root``, ``timeout`` (default 1800 s),
    ``env``, ``asr`` (options for the ``faster-whisper`` ASR engine, used to fill missing
    texts), ``language`` / ``prompt_language`` (hints for ASR), ``models``
    (``{model_id: {"gpt_weights": ..., "sovits_weights": ...}}``: registered models' files, used
    for ``{gpt_weights}``/``{sovits_weights}`` before searching ``project_root``).
    """

    name = "gpt-sovits-command"
    version = "1"

    def __init__(self, template: str | None = None, python_exec: str | None = None,
                 project_root: str | None = None, timeout: float = 1800.0, env: dict[str, str] | None = None,
                 asr: dict | None = None, language: str | None = None, prompt_language: str | None = None,
                 models: dict[str, dict[str, str]] | None = None):
        self.template = _template(template, "COVER_INFER_CMD_TEMPLATE")
        self.models = dict(models or {})
        self.python_exec = python_exec or sys.executable
        self.project_root = project_root
        self.timeout = float(timeout) if timeout else None
        self.env = dict(env or {})
        self.asr = asr
        self.language = language
        self.prompt_language = prompt_language

    def convert(self, vocal: np.ndarray, sr: int, reference: np.ndarray, ref_sr: int,
                params: ConversionParams, ctx: StageContext) -> np.ndarray:
        what = "the conversion command"
        vocal = to_mono(vocal)
        d = _job_dir(ctx, "convert")
        ref_in, vocal_in, vocal_out = d / "reference.wav", d / "input_vocal.wav", d / "output_vocal.wav"
        write_wav(ref_in, to_mono(reference), ref_sr)
        write_wav(vocal_in, vocal, sr)
        names = placeholders(self.template or "")
        ref_text, tgt_text = params.reference_text or "", params.target_text or ""
        if self.asr and (not ref_text or not tgt_text):
            from .asr import fill_texts
            ctx.progress(0.01, "transcribing")
            ref_text, tgt_text = fill_texts(ref_text, tgt_text, vocal=vocal, sr=sr, reference=reference,
                                            ref_sr=ref_sr, asr_options=self.asr, ctx=ctx,
                                            language=self.language, prompt_language=self.prompt_language)
        values = {"python_exec": self.python_exec, "project_root": self.project_root,
                  "reference_voice": ref_in, "input_vocal": vocal_in, "output_vocal": vocal_out,
                  "model_id": params.model_id or "", "pitch_shift": f"{float(params.pitch_shift):g}",
                  "reference_text": ref_text, "target_text": tgt_text}
        if "gpt_weights" in names or "sovits_weights" in names:
            entry = self.models.get(params.model_id) if params.model_id else None
            if entry and entry.get("gpt_weights") and entry.get("sovits_weights"):
                values.update(gpt_weights=entry["gpt_weights"], sovits_weights=entry["sovits_weights"])
            else:
                from ..models import resolve_gpt_sovits_model
                m = resolve_gpt_sovits_model(self.project_root, params.model_id)
                values.update(gpt_weights=m.gpt_weights, sovits_weights=m.sovits_weights)
        env = dict(self.env)
        if "reference_text" not in names or "target_text" not in names:
            env["COVER_REFERENCE_TEXT"] = ref_text
            env["COVER_TARGET_TEXT"] = tgt_text
        res = run_template(self.template, values, timeout=self.timeout, ctx=ctx, what=what, env=env,
                           cwd=self.project_root if self.project_root and Path(self.project_root).is_dir() else None,
                           progress_range=(0.05, 0.95))
        out, osr = read_output(vocal_out, ctx=ctx, what=what, name="converted vocal")
        converted = fit_to(out, osr, target_sr=sr, channels=None, length=len(vocal))
        ctx.info.update({"engine": self.name, "command_seconds": round(res.seconds, 3),
                         "model_id": params.model_id})
        ctx.progress(1.0)
        return converted
