"""Command line: run the whole pipeline in this process.

    python -m inference cover --song SONG --reference REF -o OUT.wav [--pitch N] [--auto-pitch]
                              [--separator NAME] [--converter NAME] [--keep-stems DIR] [--workdir DIR]
    python -m inference engines

Exit 0 on success; on failure one line ``error: <stage>: <message>`` on stderr and exit 1
(2 for bad input files, 130 when interrupted).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference", description="Song covers in a reference voice.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cover", help="make a cover of SONG in the voice of REF")
    c.add_argument("--song", required=True, type=Path, help="the song (WAV, FLAC, MP3, OGG/Opus, M4A/AAC)")
    c.add_argument("--reference", required=True, type=Path, help="3-60 s of the target voice")
    c.add_argument("-o", "--output", required=True, type=Path, help="where to write the cover (.wav)")
    c.add_argument("--pitch", type=float, default=0.0, help="shift the melody by N semitones")
    c.add_argument("--auto-pitch", action="store_true", help="move the melody by octaves toward the voice's range")
    c.add_argument("--separator", default=None, help="separator engine (default: spectral)")
    c.add_argument("--converter", default=None, help="converter engine (default: world)")
    c.add_argument("--engine-options", default=None, metavar="JSON",
                   help='constructor options per engine, e.g. \'{"demucs": {"repo": "/models"}}\'')
    c.add_argument("--keep-stems", type=Path, default=None, metavar="DIR",
                   help="copy vocal.wav, instrumental.wav, converted_vocal.wav and report.json here")
    c.add_argument("--workdir", type=Path, default=None, help="keep the work files in DIR (default: a temp dir)")
    c.add_argument("--stem-cache", type=Path, default=None, metavar="DIR",
                   help="reuse separated stems of a song seen before (same separator settings), kept in DIR")
    c.add_argument("--bit-depth", type=int, choices=(16, 24), default=16)
    c.add_argument("--format", action="append", default=[], choices=("flac", "mp3"),
                   help="also write OUT.flac / OUT.mp3 (repeatable)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--progress", action="store_true", help="progress bars even when stderr is not a terminal")
    c.add_argument("-v", "--verbose", action="store_true")
    sub.add_parser("engines", help="list the available engines")
    return p


class _Bars:
    """One tqdm bar per stage, driven by pipeline events."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, ev) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if ev.type == "stage_started":
            self.close()
            self.bar = tqdm(total=100, desc=f"{ev.stage:<10}", unit="%", file=sys.stderr, leave=True,
                            bar_format="{desc} {bar} {n:3.0f}% {elapsed}{postfix}")
        elif self.bar is not None:
            pct = 100.0 * (1.0 if ev.type == "stage_finished" else ev.progress)
            self.bar.n = max(self.bar.n, pct)
            if ev.message:
                self.bar.set_postfix_str(ev.message[:40], refresh=False)
            self.bar.refresh()
            if ev.type == "stage_finished":
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cover(args) -> int:
    from . import OutputOptions, Pipeline, PipelineConfig
    from .errors import Canceled, InputError, PipelineError

    opts = {}
    if args.engine_options:
        try:
            opts = json.loads(args.engine_options)
            assert isinstance(opts, dict)
        except Exception:
            print("error: --engine-options must be a JSON object", file=sys.stderr)
            return EXIT_FAILED
    kw = {}
    if args.separator:
        kw["separator"] = args.separator
    if args.converter:
        kw["converter"] = args.converter
    cfg = PipelineConfig(pitch_shift=args.pitch, auto_pitch=args.auto_pitch, engine_options=opts,
                         output=OutputOptions(bit_depth=args.bit_depth, extra_formats=tuple(args.format)), **kw)
    for label, p in (("song", args.song), ("reference", args.reference)):
        if not p.is_file():
            print(f"error: preprocess: {label} file not found: {p}", file=sys.stderr)
            return EXIT_INPUT
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="cover-")
        workdir = Path(tmp)
    bars = _Bars(enabled=not args.no_progress and (args.progress or sys.stderr.isatty()))
    try:
        cache = None
        if args.stem_cache is not None:
            from .stem_cache import FileStemCache
            cache = FileStemCache(args.stem_cache)
        result = Pipeline(cfg, on_event=bars, stem_cache=cache).run(args.song, args.reference, workdir)
        bars.close()
        out = args.output
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.cover, out)
        for key in ("cover_flac", "cover_mp3"):
            if key in result.artifacts:
                shutil.copyfile(result.artifacts[key], out.with_suffix("." + key.split("_")[1]))
        if args.keep_stems:
            d = args.keep_stems
            d.mkdir(parents=True, exist_ok=True)
            for key, name in (("vocals", "vocal.wav"), ("instrumental", "instrumental.wav"),
                              ("converted_vocals", "converted_vocal.wav"), ("report", "report.json")):
                shutil.copyfile(result.artifacts[key], d / name)
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        rep = result.report
        o = rep.get("output", {})
        print(f"wrote {out} ({o.get('duration', 0):.2f} s, {o.get('sample_rate')} Hz, {o.get('channels')} ch, "
              f"{o.get('lufs')} LUFS, {o.get('true_peak_dbtp')} dBTP) in {rep.get('total_seconds', 0):.1f} s")
        return 0
    except KeyboardInterrupt:
        bars.close()
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Canceled as exc:
        bars.close()
        print(f"error: {exc.stage or 'pipeline'}: canceled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PipelineError as exc:
        bars.close()
        msg = " ".join(str(exc.message).split())
        print(f"error: {exc.stage or 'pipeline'}: {msg}", file=sys.stderr)
        return EXIT_INPUT if isinstance(exc, InputError) else EXIT_FAILED
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _engines() -> int:
    from . import registry
    for kind in registry.KINDS:
        try:
            names = registry.available(kind)
        except Exception as exc:  # an engine module failed to import
            print(f"{kind}: (error listing engines: {exc})")
            continue
        print(f"{kind}: {', '.join(names) if names else '(none)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # Without -v, stderr carries the progress bars, warnings and at most one error line.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        import warnings
        warnings.filterwarnings("ignore")
    try:
        if args.command == "engines":
            return _engines()
        return _cover(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
