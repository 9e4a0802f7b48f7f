"""Stage 4: put the converted vocal back over the instrumental and master to a loudness target.

The converted vocal is matched to the loudness of the original vocal stem (BS.1770 with
pyloudnorm's filters, RMS where a signal is too quiet or short to gate), optional reverb/compression
(pedalboard), the user's gains, summed with the instrumental (the vocal centred on both
channels) and brought to ``cfg.mix.target_lufs`` through a true-peak limiter.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import audio, loudness
from ..config import PipelineConfig
from ..context import StageContext
from .infer import Converted
from .preprocess import Preprocessed
from .separate import Separated

log = logging.getLogger("inference.mix")

MAX_MATCH_DB = 30.0     # never boost/cut the converted vocal more than this to match


@dataclass
class Mixed:
    master: np.ndarray      # (channels, samples), work rate, normalised
    sr: int
    loudness: dict
    path: Path


def _effects(vocal: np.ndarray, sr: int, cfg: PipelineConfig) -> np.ndarray:
    m = cfg.mix
    if not m.compression and m.reverb <= 0:
        return vocal
    import pedalboard
    chain = []
    if m.compression:
        chain.append(pedalboard.Compressor(threshold_db=-20.0, ratio=3.0, attack_ms=5.0, release_ms=120.0))
    if m.reverb > 0:
        wet = float(np.clip(m.reverb, 0.0, 1.0))
        chain.append(pedalboard.Reverb(room_size=0.5, damping=0.5, wet_level=0.5 * wet, dry_level=1.0 - 0.3 * wet))
    out = pedalboard.Pedalboard(chain)(vocal[None, :].astype(np.float32), sr)
    return np.asarray(out[0, : len(vocal)], dtype=np.float32)


def run(pre: Preprocessed, sep: Separated, conv: Converted, cfg: PipelineConfig, ctx: StageContext) -> Mixed:
    """Arrays the pipeline has already let go (``pre.song``, ``sep.vocals``, ``sep.instrumental``
    set to None) are read back from the work folder: loudness straight from the file in blocks,
    the instrumental into the array that becomes the master (summed and mastered in place)."""
    sr = pre.sr
    inst = sep.instrumental
    owned = inst is None
    if owned:
        inst, _ = audio.read_wav(sep.instrumental_path)
    ch, n = pre.song.shape if pre.song is not None else inst.shape
    inst = inst[:, :n]
    vocal = conv.vocal
    if len(vocal) != n:
        vocal = np.pad(vocal, (0, max(0, n - len(vocal))))[:n]
    vocal = np.asarray(vocal, dtype=np.float32)
    ctx.progress(0.05, "measuring loudness")
    song_lufs = loudness.integrated_lufs(pre.song, sr) if pre.song is not None \
        else loudness.file_lufs(pre.song_path)
    orig_vocal_lufs = loudness.integrated_lufs(sep.vocals, sr) if sep.vocals is not None \
        else loudness.file_lufs(sep.vocals_path)
    info = {"song_lufs": song_lufs, "vocal_stem_lufs": orig_vocal_lufs}
    ctx.check_cancel()

    vocal_gain = 0.0
    if conv.converted and np.any(vocal):
        vocal = _effects(vocal, sr, cfg)
        ctx.progress(0.2, "matching the converted vocal's loudness")
        # compare in the same layout: the converted vocal sits on every channel
        # (identical channels: BS.1770 sums channel powers, +10*log10(ch) dB over one channel)
        conv_lufs = loudness.integrated_lufs(vocal, sr)
        if conv_lufs > loudness.SILENCE_DB + 1:
            conv_lufs += 10 * np.log10(ch)
        match_db = float(np.clip(orig_vocal_lufs - conv_lufs, -MAX_MATCH_DB, MAX_MATCH_DB)) \
            if orig_vocal_lufs > loudness.SILENCE_DB + 1 and conv_lufs > loudness.SILENCE_DB + 1 else 0.0
        info.update({"converted_lufs": conv_lufs, "vocal_match_gain_db": match_db})
        vocal_gain = loudness.db_to_gain(match_db + cfg.mix.vocal_gain_db)
    else:
        info.update({"converted_lufs": loudness.SILENCE_DB, "vocal_match_gain_db": 0.0})

    ctx.check_cancel()

    ctx.progress(0.4, "summing")
    ig = np.float32(loudness.db_to_gain(cfg.mix.instrumental_gain_db))
    if owned and inst.flags.c_contiguous:
        master = inst                      # read from the work folder for us: sum in place
        master *= ig
    else:
        master = inst * ig
    del inst
    if vocal_gain:
        vg = np.float32(vocal_gain)
        for s in range(0, n, 1 << 18):
            master[:, s:s + (1 << 18)] += (vocal[s:s + (1 << 18)] * vg)[None, :]
    del vocal
    ctx.progress(0.5, "mastering (loudness + true-peak limiter)")
    master, rep = loudness.normalize(master, sr, cfg.mix.target_lufs, cfg.mix.true_peak_dbtp, inplace=True)
    info.update({"master_" + k: v for k, v in rep.as_dict().items()})
    if rep.output_lufs <= loudness.SILENCE_DB + 1:
        ctx.warn("the mix is silent")
    ctx.check_cancel()
    ctx.progress(0.9, "writing the mix")
    path = audio.write_wav(ctx.workdir / "mix.wav", master, sr)
    info = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}
    ctx.info.update({"loudness": info})
    ctx.progress(1.0)
    return Mixed(master=master, sr=sr, loudness=info, path=path)
