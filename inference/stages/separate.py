"""Stage 2: split the song into a vocal stem and an instrumental stem with the separator engine.

Writes ``vocals.wav`` and ``instrumental.wav`` (work rate, the song's channels). A near-silent
vocal stem is not an error: the song may have no singing; the job goes on with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import audio, loudness
from ..config import PipelineConfig
from ..context import StageContext
from ..errors import Canceled, PipelineError
from ..registry import get_engine
from ..stem_cache import stem_cache_key
from .preprocess import Preprocessed

log = logging.getLogger("inference.separate")

# The vocal stem counts as empty when it is this far below the song (or absolutely quiet).
NO_VOCALS_RELATIVE_DB = -30.0
NO_VOCALS_ABSOLUTE_DB = -60.0


# No vocals when the Silero VAD finds voice in less than these shares of the vocal stem and the song.
STEM_VOICE_FRACTION = 0.25
QUIET_STEM_DB = 4.5         # ... and only when the vocal stem is this far below the song
SONG_VOICE_FRACTION = 0.10


def _voice_fraction(vocals: np.ndarray, sr: int) -> float | None:
    """Share of the vocal stem's duration the Silero VAD calls voice; None when it cannot run."""
    try:
        from ..engines import asr
        seconds = float(asr.speech_seconds(audio.to_mono(vocals), sr, method="silero"))
    except Exception as exc:  # VAD unavailable: fall back to the level test alone
        log.info("Silero VAD unavailable for the vocal stem (%s)", exc)
        return None
    return seconds / max(1e-9, vocals.shape[1] / sr)


@dataclass
class Separated:
    vocals: np.ndarray          # (channels, samples), work rate
    instrumental: np.ndarray    # (channels, samples), work rate
    sr: int
    has_vocals: bool
    vocals_path: Path
    instrumental_path: Path


def load_engine(kind: str, name: str, cfg: PipelineConfig, stage: str):
    return build_engine(kind, name, cfg.engine_options.get(name, {}), stage)


def build_engine(kind: str, name: str, options: dict, stage: str):
    try:
        return get_engine(kind, name, **(options or {}))
    except KeyError as exc:
        raise PipelineError(stage, str(exc).strip("'\""), code="unknown_engine") from None
    except PipelineError:
        raise
    except Exception as exc:
        log.exception("loading %s engine %s failed", kind, name)
        raise PipelineError(stage, f"could not load the {kind} engine {name!r} "
                                   f"({exc.__class__.__name__}: {str(exc)[:200]})", code="engine_error") from None


def engine_facts(engine, name: str) -> dict:
    return {"name": getattr(engine, "name", name), "version": str(getattr(engine, "version", "unknown"))}


def _fit(x: np.ndarray, channels: int, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[0] != channels:
        x = np.repeat(x.mean(axis=0, keepdims=True), channels, axis=0)
    if x.shape[1] < n:
        x = np.pad(x, ((0, 0), (0, n - x.shape[1])))
    return np.ascontiguousarray(x[:, :n])


def _finite(x: np.ndarray, block: int = 1 << 18) -> bool:
    """No NaN/inf in ``(channels, samples)``, checked block by block (no full-length mask)."""
    return all(bool(np.all(np.isfinite(x[:, s:s + block]))) for s in range(0, x.shape[1], block))


def _decode_stem(path, field: str, max_seconds: float, scratch: Path) -> tuple[np.ndarray, int]:
    """A client's stem, decoded in a child process with limits when this process opted in
    (audio.isolate_decoding: the service's worker), like preprocess decodes a song."""
    if audio.decoding_isolation() is None:
        return audio.decode(path, field, max_seconds=max_seconds)
    _, data, sr = audio.decode_isolated(path, field, max_seconds=max_seconds, scratch=scratch)
    return data, sr


def song_from_stems(vocals_path, instrumental_path, out_path: Path, max_seconds: float) -> Path:
    """The "song" of a job that brought its own stems: vocals + instrumental (resampled to the
    vocal's rate, cut or padded to its length; silence when absent), as a float WAV so the sum
    never clips. Preprocess then checks it like any song."""
    vocals, sr = _decode_stem(vocals_path, "vocals", max_seconds, Path(out_path).parent)
    song = vocals
    if instrumental_path is not None:
        inst, isr = _decode_stem(instrumental_path, "instrumental", max_seconds, Path(out_path).parent)
        inst = audio.resample(inst, isr, sr)
        ch = max(vocals.shape[0], inst.shape[0])
        song = _fit(vocals, ch, vocals.shape[1]) + _fit(inst, ch, vocals.shape[1])
    return audio.write_wav(out_path, song, sr)


def _provided(pre: Preprocessed, cfg: PipelineConfig, ctx: StageContext, vocals_path,
              instrumental_path) -> Separated:
    """Stems the client brought: no separator runs (reported as skipped/cached)."""
    ctx.info.update({"name": "provided", "version": "-", "skipped": True, "cached": True})
    ch, n = pre.song.shape
    lim = cfg.limits.max_song_seconds
    v, vsr = _decode_stem(vocals_path, "vocals", lim, ctx.workdir)
    vocals = _fit(audio.resample(v, vsr, pre.sr), ch, n)
    if instrumental_path is not None:
        i, isr = _decode_stem(instrumental_path, "instrumental", lim, ctx.workdir)
        inst = _fit(audio.resample(i, isr, pre.sr), ch, n)
    else:
        inst = np.zeros_like(vocals)
    ctx.check_cancel()
    voc_db = loudness.rms_db(vocals)
    has_vocals = voc_db > NO_VOCALS_ABSOLUTE_DB
    if not has_vocals:
        ctx.warn("the vocals stem is silent; nothing was converted")
    ctx.info.update({"vocal_level_db": round(voc_db, 2), "has_vocals": bool(has_vocals),
                     "instrumental": "provided" if instrumental_path is not None else "silence"})
    vp = audio.write_wav(ctx.workdir / "vocals.wav", vocals, pre.sr)
    ip = audio.write_wav(ctx.workdir / "instrumental.wav", inst, pre.sr)
    ctx.progress(1.0)
    return Separated(vocals=vocals, instrumental=inst, sr=pre.sr, has_vocals=bool(has_vocals),
                     vocals_path=vp, instrumental_path=ip)


def _from_cache(pre: Preprocessed, ctx: StageContext, cache, key: str) -> Separated | None:
    try:
        hit = cache.get(key, ctx.workdir / "tmp" / "stem-cache")
        if hit is None:
            return None
        ch, n = pre.song.shape
        vocals, sr_v = audio.read_wav(hit.vocals)
        inst, sr_i = audio.read_wav(hit.instrumental)
        if sr_v != pre.sr or sr_i != pre.sr:
            raise ValueError(f"cached stems at {sr_v}/{sr_i} Hz, the song at {pre.sr} Hz")
        vocals, inst = _fit(vocals, ch, n), _fit(inst, ch, n)
    except Exception as exc:  # a broken entry is a miss, never a failed job
        log.warning("stem cache entry %s unusable (%s): separating", key[:12], exc)
        return None
    meta = dict(hit.meta or {})
    for message in meta.get("warnings") or []:
        ctx.warn(message)
    ctx.info.update(meta.get("info") or {})
    ctx.info.update({"cached": True, "cache_key": key})
    vp = audio.write_wav(ctx.workdir / "vocals.wav", vocals, pre.sr)
    ip = audio.write_wav(ctx.workdir / "instrumental.wav", inst, pre.sr)
    ctx.progress(1.0, "stems from the cache")
    return Separated(vocals=vocals, instrumental=inst, sr=pre.sr, has_vocals=bool(ctx.info.get("has_vocals", True)),
                     vocals_path=vp, instrumental_path=ip)


def run(pre: Preprocessed, cfg: PipelineConfig, ctx: StageContext, *, vocals_path=None,
        instrumental_path=None, cache=None) -> Separated:
    """Separate the song, or (``vocals_path`` given) take the client's stems as they are.

    ``cache``: an :class:`inference.stem_cache.StemCache` (or None); a hit (same decoded song,
    separator and options) skips the separator and is reported ``cached``."""
    if vocals_path is not None:
        return _provided(pre, cfg, ctx, vocals_path, instrumental_path)
    key = None
    chain = _chain_steps(cfg)
    if cache is not None:
        options = cfg.engine_options.get(cfg.separator)
        if chain:  # the chain changes the stems: part of the key (keys without a chain are unchanged)
            options = {"options": options, "chain": cfg.separation_chain}
        key = stem_cache_key(pre.song, pre.sr, cfg.separator, options)
        cached = _from_cache(pre, ctx, cache, key)
        if cached is not None:
            return cached
    warnings_before = len(ctx.warnings)
    engine = load_engine("separator", cfg.separator, cfg, ctx.stage)
    ctx.info.update(engine_facts(engine, cfg.separator))
    ctx.progress(0.0, f"separating with {cfg.separator}")
    spans = _chain_spans(chain)
    try:
        if chain:
            vocals, inst = engine.separate(pre.song, pre.sr, _step_context(ctx, 0.0, spans[0], ctx.info))
        else:
            vocals, inst = engine.separate(pre.song, pre.sr, ctx)
    except (PipelineError, Canceled):
        raise
    except Exception as exc:
        log.exception("separator %s failed", cfg.separator)
        raise PipelineError(ctx.stage, f"the separator {cfg.separator!r} failed "
                                       f"({exc.__class__.__name__}: {str(exc)[:200]})", code="engine_error") from None
    ch, n = pre.song.shape
    vocals, inst = _fit(vocals, ch, n), _fit(inst, ch, n)
    if not (_finite(vocals) and _finite(inst)):
        raise PipelineError(ctx.stage, f"the separator {cfg.separator!r} returned invalid samples (NaN/inf)",
                            code="engine_error")
    ctx.check_cancel()
    song_db = loudness.rms_db(pre.song)
    voc_db = loudness.rms_db(vocals)
    has_vocals = voc_db > max(NO_VOCALS_ABSOLUTE_DB, song_db + NO_VOCALS_RELATIVE_DB)
    why = f"the vocal stem is {song_db - voc_db:.0f} dB below the song"
    # Only a quiet stem is questioned: a separator's leakage sits well below the song, while
    # a voice the VAD does not know (synthetic, unusual singing) is usually near the song's level.
    quiet = song_db - voc_db > QUIET_STEM_DB
    speech = _voice_fraction(vocals, pre.sr) if has_vocals and quiet else None
    in_song = None
    if speech is not None and speech < STEM_VOICE_FRACTION:
        # A separator always leaks something into the vocal stem; a voice detector tells leaked
        # instruments from singing. Both the stem and the whole song must look voiceless.
        in_song = _voice_fraction(pre.song, pre.sr)
        if in_song is not None and in_song < SONG_VOICE_FRACTION:
            has_vocals = False
            why = (f"a voice detector finds voice in {100 * speech:.0f}% of the vocal stem and "
                   f"{100 * in_song:.0f}% of the song")
    if not has_vocals:
        ctx.warn(f"no vocals detected in the song ({why}); nothing was converted and the cover is the "
                 "song's music as it is")
        # what the separator put in the vocal stem is music: the whole song is the instrumental
        inst = np.ascontiguousarray(pre.song, dtype=np.float32).copy()
        vocals = np.zeros_like(inst)
    ctx.info.update({"vocal_level_db": round(voc_db, 2), "song_level_db": round(song_db, 2),
                     "vocal_voice_fraction": None if speech is None else round(speech, 3),
                     "song_voice_fraction": None if in_song is None else round(in_song, 3),
                     "has_vocals": bool(has_vocals)})
    if chain and has_vocals:
        vocals, inst = _run_chain(vocals, inst, pre.sr, cfg, ctx, chain, spans)
    elif chain:
        ctx.info["chain"] = {"ran": [], "skipped": "no vocals"}
    vp = audio.write_wav(ctx.workdir / "vocals.wav", vocals, pre.sr)
    ip = audio.write_wav(ctx.workdir / "instrumental.wav", inst, pre.sr)
    if cache is not None:
        try:
            cache.put(key, vp, ip, {"info": dict(ctx.info), "warnings": list(ctx.warnings[warnings_before:])})
            ctx.info["cache_key"] = key
        except Exception as exc:
            log.warning("could not store the stems in the stem cache (%s)", exc)
    ctx.progress(1.0)
    return Separated(vocals=vocals, instrumental=inst, sr=pre.sr, has_vocals=bool(has_vocals),
                     vocals_path=vp, instrumental_path=ip)


# ---- chain steps after the separator (PipelineConfig.separation_chain) ----------------------
CHAIN_STEPS = ("karaoke", "dereverb")
# Share of the stage's progress: the separator, then each step that runs.
_CHAIN_WEIGHTS = {"separator": 0.6, "karaoke": 0.25, "dereverb": 0.15}


def _chain_steps(cfg: PipelineConfig) -> list[tuple[str, dict]]:
    chain = cfg.separation_chain or {}
    unknown = [k for k in chain if k not in CHAIN_STEPS and k != "convert_backing"]
    if unknown:
        raise PipelineError("separate", f"unknown separation chain step(s) {', '.join(map(repr, unknown))} "
                                        f"(steps: {', '.join(CHAIN_STEPS)}, convert_backing)", code="invalid_option")
    steps = []
    for step in CHAIN_STEPS:
        spec = chain.get(step)
        if not spec:
            continue
        if not isinstance(spec, dict) or not spec.get("engine"):
            raise PipelineError("separate", f"separation chain step {step!r} needs {{'engine': NAME, 'options': {{...}}}}",
                                code="invalid_option")
        steps.append((step, spec))
    return steps


def _chain_spans(steps: list[tuple[str, dict]]) -> list[float]:
    """Cumulative ends of the separator's and each step's share of the stage (last one 1.0)."""
    w = [_CHAIN_WEIGHTS["separator"]] + [_CHAIN_WEIGHTS[s] for s, _ in steps]
    total, acc, ends = sum(w), 0.0, []
    for x in w:
        acc += x / total
        ends.append(acc)
    ends[-1] = 1.0
    return ends


def _step_context(ctx: StageContext, start: float, end: float, info: dict) -> StageContext:
    """A context whose 0..1 progress covers ``start..end`` of ``ctx``'s; shares cancel and warnings."""
    def on_event(ev):
        ctx.progress(start + (end - start) * ev.progress, ev.message)

    return StageContext(stage=ctx.stage, workdir=ctx.workdir, device=ctx.device, on_event=on_event,
                        should_cancel=ctx.should_cancel, warnings=ctx.warnings, info=info)


def _split(engine, x: np.ndarray, sr: int, ctx: StageContext, role: str) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(engine, "split"):  # the uvr engine knows which output is the lead / the dry one
        return engine.split(x, sr, ctx, role)
    return engine.separate(x, sr, ctx)


def _run_chain(vocals: np.ndarray, inst: np.ndarray, sr: int, cfg: PipelineConfig, ctx: StageContext,
               steps: list[tuple[str, dict]], spans: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Karaoke (lead / backing) then de-reverb on the lead. Backing vocals go into the instrumental
    unconverted unless ``convert_backing``; what de-reverb removes is dropped (the mix adds its own)."""
    ch, n = vocals.shape
    convert_backing = bool((cfg.separation_chain or {}).get("convert_backing"))
    report: dict = {"ran": [], "convert_backing": convert_backing}
    lead, backing = vocals, None
    for i, (step, spec) in enumerate(steps):
        start, end = spans[i], spans[i + 1]
        name = str(spec["engine"])
        ctx.progress(start, f"{step} with {name}")
        engine = build_engine("separator", name, dict(spec.get("options") or {}), ctx.stage)
        info = dict(engine_facts(engine, name))
        sub = _step_context(ctx, start, end, info)
        role = "lead" if step == "karaoke" else "dry"
        try:
            kept, rest = _split(engine, lead, sr, sub, role)
        except (PipelineError, Canceled):
            raise
        except Exception as exc:
            log.exception("separation chain step %s (%s) failed", step, name)
            raise PipelineError(ctx.stage, f"the {step} step ({name!r}) failed "
                                           f"({exc.__class__.__name__}: {str(exc)[:200]})", code="engine_error") from None
        kept, rest = _fit(kept, ch, n), _fit(rest, ch, n)
        if not (_finite(kept) and _finite(rest)):
            raise PipelineError(ctx.stage, f"the {step} step ({name!r}) returned invalid samples (NaN/inf)",
                                code="engine_error")
        if step == "karaoke":
            lead, backing = kept, rest
            audio.write_wav(ctx.workdir / "lead_vocals.wav", lead, sr)
            audio.write_wav(ctx.workdir / "backing_vocals.wav", backing, sr)
            info["backing_level_db"] = round(loudness.rms_db(backing), 2)
        else:
            lead = kept
            audio.write_wav(ctx.workdir / "removed_reverb.wav", rest, sr)
            info["removed_level_db"] = round(loudness.rms_db(rest), 2)
        report[step] = info
        report["ran"].append(step)
        ctx.check_cancel()
    if backing is not None and not convert_backing:
        vocals, inst = lead, (inst + backing).astype(np.float32)
        report["backing"] = "mixed into the instrumental, unconverted"
    elif backing is not None:
        vocals = (lead + backing).astype(np.float32)
        report["backing"] = "kept in the vocal and converted"
    else:
        vocals = lead
    ctx.info["chain"] = report
    return np.ascontiguousarray(vocals, dtype=np.float32), np.ascontiguousarray(inst, dtype=np.float32)
