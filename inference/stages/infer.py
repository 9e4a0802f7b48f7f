"""Stage 3: sing the separated vocal in the reference voice with the converter engine.

Writes ``converted_vocals.wav`` (mono, work rate, the song's length). With no vocal in the
song the conversion is skipped and the converted vocal is silence (with a warning).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import audio
from ..config import PipelineConfig
from ..context import StageContext
from ..engines.base import ConversionParams
from ..errors import Canceled, PipelineError
from .preprocess import Preprocessed
from .separate import Separated, engine_facts, load_engine

log = logging.getLogger("inference.infer")


@dataclass
class Converted:
    vocal: np.ndarray        # (samples,) mono, work rate
    sr: int
    converted: bool          # False when skipped (no vocals)
    path: Path
    quality: dict | None = None   # inference.quality.QualityReport.as_dict(), when measured


def params_from(cfg: PipelineConfig) -> ConversionParams:
    return ConversionParams(pitch_shift=float(cfg.pitch_shift), auto_pitch=bool(cfg.auto_pitch),
                            model_id=cfg.model_id, reference_text=cfg.reference_text,
                            target_text=cfg.target_text, model_files=dict(cfg.model_files or {}) or None,
                            engine_params=dict(cfg.converter_params or {}) or None)


def run(pre: Preprocessed, sep: Separated, cfg: PipelineConfig, ctx: StageContext) -> Converted:
    """Convert the separated vocal. Takes the (multi-channel) vocal stem out of ``sep``: only its
    mono mix is needed here, and later stages read the stem back from ``sep.vocals_path``."""
    vocal = audio.to_mono(sep.vocals)
    if vocal is not sep.vocals:
        sep.vocals = None   # a 10-minute stereo stem is ~200 MB at 44.1 kHz
    n = len(vocal)
    if not sep.has_vocals or not np.any(vocal):
        if sep.has_vocals:   # (otherwise the separate stage has already said so)
            ctx.warn("conversion skipped: the vocal stem is digital silence")
        ctx.info.update({"name": cfg.converter, "skipped": True})
        out = np.zeros(n, dtype=np.float32)
        ctx.progress(1.0)
        quality = None
        if cfg.quality_report:
            from ..quality import QualityReport
            quality = QualityReport(None, None, notes=["not measured: no vocal was converted"]).as_dict()
        return Converted(out, sep.sr, False, audio.write_wav(ctx.workdir / "converted_vocals.wav", out, sep.sr),
                         quality)
    engine = load_engine("converter", cfg.converter, cfg, ctx.stage)
    ctx.info.update(engine_facts(engine, cfg.converter))
    ctx.progress(0.0, f"converting with {cfg.converter}")
    try:
        out = engine.convert(vocal, sep.sr, pre.reference, pre.ref_sr, params_from(cfg), ctx)
    except (PipelineError, Canceled):
        raise
    except Exception as exc:
        log.exception("converter %s failed", cfg.converter)
        raise PipelineError(ctx.stage, f"the converter {cfg.converter!r} failed "
                                       f"({exc.__class__.__name__}: {str(exc)[:200]})", code="engine_error") from None
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 2:
        out = out.mean(axis=0)
    if not np.all(np.isfinite(out)):
        raise PipelineError(ctx.stage, f"the converter {cfg.converter!r} returned invalid samples (NaN/inf)",
                            code="engine_error")
    if len(out) != n:
        if abs(len(out) - n) > 0.05 * sep.sr:
            ctx.warn(f"the converter returned {len(out) / sep.sr:.2f} s for a {n / sep.sr:.2f} s vocal; "
                     "it was padded/cut to fit")
        out = np.pad(out, (0, max(0, n - len(out))))[:n]
    ctx.check_cancel()
    path = audio.write_wav(ctx.workdir / "converted_vocals.wav", out, sep.sr)
    quality = measure_quality(out, vocal, sep.sr, pre, cfg, ctx) if cfg.quality_report else None
    ctx.progress(1.0)
    return Converted(out, sep.sr, True, path, quality)


def measure_quality(out: np.ndarray, vocal: np.ndarray, sr: int, pre: Preprocessed, cfg: PipelineConfig,
                    ctx: StageContext) -> dict | None:
    """The quality report (inference.quality) of a conversion; a failure to measure is a warning,
    never a failed job. Progress stays at the top of the stage (only cancel is checked)."""
    from .. import quality

    ctx.progress(1.0, "measuring pitch accuracy and speaker similarity")
    octaves = ctx.info.get("auto_pitch_octaves")   # the world converter says what auto_pitch did
    try:
        rep = quality.assess(out, vocal, sr, pre.reference, pre.ref_sr, float(cfg.pitch_shift),
                             device=ctx.device, auto_pitch=bool(cfg.auto_pitch),
                             octave_shift=int(octaves) if octaves is not None else None,
                             progress=lambda _f: ctx.check_cancel())
    except (PipelineError, Canceled):
        raise
    except Exception as exc:
        log.exception("quality report failed")
        ctx.warn(f"the quality report could not be made ({exc.__class__.__name__})")
        return None
    return rep.as_dict()
