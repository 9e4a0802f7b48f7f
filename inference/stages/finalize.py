"""Stage 5: write the cover at the song's own rate, channel count and length, plus report.json.

``cover.wav`` is PCM (16-bit, or 24 with ``cfg.output.bit_depth == 24``); FLAC and MP3 copies
when ``cfg.output.extra_formats`` asks. The loudness target and true-peak ceiling are checked
again at the output rate (resampling moves inter-sample peaks) and restored if needed.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import audio, loudness
from ..config import PipelineConfig
from ..context import StageContext
from ..errors import PipelineError
from ..pipeline import PipelineResult, write_report
from .mix import Mixed
from .preprocess import Preprocessed

log = logging.getLogger("inference.finalize")

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[0] == channels:
        return x
    mono = x.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(np.repeat(mono, channels, axis=0))


def write_mp3(path: Path, x: np.ndarray, sr: int, bitrate: int = 192_000) -> Path:
    """MP3 through PyAV's libmp3lame (rates above 48 kHz are resampled to 48 kHz)."""
    import av
    if sr not in MP3_RATES:
        target = min((r for r in MP3_RATES if r >= min(sr, 48000)), default=48000)
        x, sr = audio.resample(x, sr, target), target
    layout = "mono" if x.shape[0] == 1 else "stereo"
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp3") as out:
        st = out.add_stream("libmp3lame", rate=sr, layout=layout)
        st.bit_rate = bitrate
        fs = st.codec_context.frame_size or 1152
        for start in range(0, x.shape[1], fs):
            blk = np.clip(x[:, start:start + fs], -1.0, 1.0).astype(np.float32, copy=False)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(blk), format="fltp",
                                               layout=layout)
            frame.sample_rate = sr
            frame.pts = start
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    tmp.replace(path)
    return path


def run(pre: Preprocessed, mixed: Mixed, cfg: PipelineConfig, report: dict[str, Any],
        ctx: StageContext) -> PipelineResult:
    out_cfg = cfg.output
    out_sr = int(out_cfg.sample_rate or pre.original_sr)
    out_ch = int(out_cfg.channels or pre.original_channels)
    if out_cfg.bit_depth not in (16, 24):
        raise PipelineError(ctx.stage, f"bit depth {out_cfg.bit_depth} is not supported; use 16 or 24",
                            code="bad_option")
    subtype = "PCM_24" if out_cfg.bit_depth == 24 else "PCM_16"
    n_out = int(round(pre.original_duration * out_sr))

    ctx.progress(0.0, "converting to the output format")
    x = _channels(mixed.master, out_ch)
    x = audio.resample(x, mixed.sr, out_sr)          # block-wise (soxr stream); no copy at the same rate
    if x.shape[1] > n_out:
        x = x[:, :n_out]
    elif x.shape[1] < n_out:
        x = np.pad(x, ((0, 0), (0, n_out - x.shape[1])))
    ctx.check_cancel()

    ctx.progress(0.3, "checking loudness and true peak")
    target, ceiling = cfg.mix.target_lufs, cfg.mix.true_peak_dbtp
    lo = mixed.loudness
    if out_sr == mixed.sr and out_ch == mixed.master.shape[0] and "master_output_lufs" in lo \
            and "master_true_peak_dbtp" in lo:
        # same samples as the mix stage verified (only padded/cut to the exact length)
        lufs, tp = float(lo["master_output_lufs"]), float(lo["master_true_peak_dbtp"])
    else:
        lufs, tp = loudness.integrated_lufs(x, out_sr), loudness.true_peak_db(x)
    renormalized = False
    silent = lufs <= loudness.SILENCE_DB + 1
    if not silent and (tp > ceiling - 0.05 or abs(lufs - target) > 0.3):
        x, rep = loudness.normalize(x, out_sr, target, ceiling, inplace=not np.shares_memory(x, mixed.master))
        lufs, tp, renormalized = rep.output_lufs, rep.true_peak_dbtp, True
    ctx.check_cancel()

    ctx.progress(0.5, "writing the cover")
    wd = ctx.workdir
    artifacts: dict[str, Path] = {
        "song": pre.song_path, "reference": pre.reference_path,
        "vocals": wd / "vocals.wav", "instrumental": wd / "instrumental.wav",
        "converted_vocals": wd / "converted_vocals.wav",
    }
    artifacts["cover"] = audio.write_wav(wd / "cover.wav", x, out_sr, subtype=subtype)
    extras = tuple(f.lower().lstrip(".") for f in out_cfg.extra_formats)
    for fmt in extras:
        ctx.check_cancel()
        if fmt == "flac":
            artifacts["cover_flac"] = audio.write_wav(wd / "cover.flac", x, out_sr, subtype=subtype)
        elif fmt == "mp3":
            artifacts["cover_mp3"] = write_mp3(wd / "cover.mp3", x, out_sr)
        else:
            ctx.warn(f"output format {fmt!r} is not supported (flac, mp3); skipped")
    ctx.progress(0.8, "writing the report")

    clipped = loudness.count_clipped(x)
    out_facts = {"sample_rate": out_sr, "channels": out_ch, "samples": int(x.shape[1]),
                 "duration": round(x.shape[1] / out_sr, 6), "bit_depth": out_cfg.bit_depth,
                 "lufs": round(lufs, 3), "true_peak_dbtp": round(tp, 3),
                 "sample_peak_dbfs": round(loudness.sample_peak_db(x), 3), "clipped_samples": clipped,
                 "renormalized_at_output_rate": renormalized,
                 "files": {k: v.name for k, v in artifacts.items() if k.startswith("cover")}}
    in_facts = {"format": pre.song_format, "sample_rate": pre.original_sr, "channels": pre.original_channels,
                "samples": pre.original_samples, "duration": round(pre.original_duration, 6),
                "reference_duration": round(pre.reference_duration, 3),
                "reference_voice_seconds": round(pre.reference_voice_seconds, 2)}
    report.update({"input": in_facts, "output": out_facts, "loudness": mixed.loudness,
                   "duration_error_ms": round((x.shape[1] / out_sr - pre.original_duration) * 1000, 3),
                   "warnings": ctx.warnings, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    artifacts["report"] = write_report(wd / "report.json", report)
    ctx.info.update({"cover": artifacts["cover"].name})
    ctx.progress(1.0)
    return PipelineResult(workdir=wd, artifacts=artifacts, report=report, warnings=ctx.warnings)
