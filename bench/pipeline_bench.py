"""Per-stage wall time, real-time factor and peak memory of the whole pipeline.

    .venv/bin/python bench/pipeline_bench.py [--runs 3] [--runs-long 1] [--skip-memory] [--write-benchmarks]

Songs: the eval kit's public 10 s, 30 s and 180 s cases (generated test songs when the kit is
absent), default engines, the case's reference voice. Each song is run ``--runs`` times warm
(one warm-up run first, so engine loading and torchcrepe's first-call compile are excluded)
and the median per stage is reported (``--runs-long`` times for 180 s). Peak memory is
measured in a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) on a 10-minute
song built by looping the 180 s case.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- pipeline-bench:begin -->", "<!-- pipeline-bench:end -->"
STAGES = ("preprocess", "separate", "infer", "mix", "finalize")


def inputs(kit: Path, out: Path) -> dict[str, tuple[Path, Path, float]]:
    cases = kit / "out/corpus/public/cases"
    voices = kit / "out/corpus/public/voices"
    if cases.exists():
        ref = voices / "ref_m7/clip1.wav"
        return {"10 s": (cases / "pub_song10_a/song.wav", ref, 10.0),
                "30 s": (cases / "pub_song30_a/song.wav", voices / "ref_f3/clip1.wav", 30.0),
                "180 s": (cases / "pub_song180/song.wav", ref, 180.0)}
    from tests import signals
    ref = signals.write(out / "ref.wav", signals.reference_voice(8.0))
    return {f"{s} s": (signals.write(out / f"song{s}.wav", signals.song(float(s))[0]), ref, float(s))
            for s in (10, 30, 180)}


def ten_minutes(song180: Path, out: Path) -> Path:
    import numpy as np
    from inference import audio
    dest = out / "song600.wav"
    if dest.exists():
        return dest
    x, sr = audio.decode(song180, "song")
    reps = int(np.ceil(600 * sr / x.shape[1]))
    y = np.tile(x, (1, reps))[:, : 600 * sr]
    audio.write_wav(dest, y, sr, subtype="PCM_16")
    return dest


def _identity_engines() -> None:
    """Register engines that do (almost) nothing, to measure the stages' own cost."""
    import numpy as np
    from inference import registry

    @registry.register("separator", "bench-identity")
    class _Sep:
        name, version = "bench-identity", "0"

        def separate(self, song, sr, ctx):
            mid = song.mean(axis=0, keepdims=True)
            return np.repeat(mid, song.shape[0], axis=0), song - mid

    @registry.register("converter", "bench-identity")
    class _Conv:
        name, version = "bench-identity", "0"

        def convert(self, vocal, sr, ref, ref_sr, params, ctx):
            return vocal * np.float32(0.5)


def one_run(song: Path, ref: Path, workdir: Path, engines: str = "default") -> dict:
    from inference import Pipeline, PipelineConfig
    cfg = PipelineConfig()
    if engines == "identity":
        _identity_engines()
        cfg = PipelineConfig(separator="bench-identity", converter="bench-identity", quality_report=False)
    where = {"stage": "start"}
    peaks: dict[str, float] = {}
    done = threading.Event()

    def on_event(ev) -> None:  # which stage (and, within it, which step) the RSS samples belong to
        step = (ev.message or "").split(":")[0].split("(")[0].strip()[:40]
        where["stage"] = f"{ev.stage}: {step}" if step else ev.stage

    def sample() -> None:  # resident set size every 50 ms, the peak per stage/step
        while not done.wait(0.05):
            rss = _rss_mib()
            key = where["stage"]
            peaks[key] = max(peaks.get(key, 0.0), rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        res = Pipeline(cfg, on_event=on_event).run(song, ref, workdir)
    finally:
        done.set()
        sampler.join()
    total = time.perf_counter() - t0
    rep = res.report
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)
    return {"timings": rep["timings"], "total": total, "duration": rep["input"]["duration"],
            "peak_rss_mib_by_step": {k: round(v) for k, v in sorted(peaks.items(), key=lambda kv: -kv[1])[:8]}}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(song: str, ref: str, workdir: str, engines: str = "default") -> int:
    """Run once in this fresh process and print timings + peak RSS as JSON."""
    r = one_run(Path(song), Path(ref), Path(workdir), engines)
    r["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))
    return 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def write_benchmarks(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", type=Path, default=Path("/work/evalkit"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/pipeline")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runs-long", type=int, default=1)
    ap.add_argument("--only", action="append", help="only these sizes, e.g. '10 s'")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--write-benchmarks", action="store_true")
    ap.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    a.out.mkdir(parents=True, exist_ok=True)
    songs = inputs(a.kit, a.out)
    from tests import signals
    from inference import Pipeline
    warm_song = signals.write(a.out / "warm.wav", signals.song(4.0)[0])
    warm_ref = signals.write(a.out / "warm_ref.wav", signals.reference_voice(5.0))
    Pipeline().run(warm_song, warm_ref, a.out / "warm")
    rows = []
    raw = {}
    for label, (song, ref, dur) in songs.items():
        if a.only and label not in a.only:
            continue
        n = a.runs_long if dur > 60 else a.runs
        runs = []
        for i in range(n):
            r = one_run(song, ref, a.out / "work")
            runs.append(r)
            print(f"{label} run {i + 1}/{n}: {r['total']:.1f} s, rtf {r['total'] / r['duration']:.3f}, "
                  f"{r['timings']}", file=sys.stderr, flush=True)
        raw[label] = runs
        med = {s: statistics.median(r["timings"][s] for r in runs) for s in STAGES}
        total = statistics.median(r["total"] for r in runs)
        rows.append(f"| {label} | {n} | " + " | ".join(f"{med[s]:.2f}" for s in STAGES)
                    + f" | {total:.2f} | {total / dur:.3f} |")
    mem = "not measured"
    if not a.skip_memory and "180 s" in songs:
        long_song = ten_minutes(songs["180 s"][0], a.out)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(long_song), str(songs["180 s"][1]),
               str(a.out / "work600")]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode == 0:
            r = json.loads(p.stdout.strip().splitlines()[-1])
            raw["600 s"] = [r]
            mem = (f"{r['maxrss_mib']:.0f} MiB peak RSS ({r['maxrss_mib'] / 1024:.2f} GiB) for a 600 s stereo "
                   f"44.1 kHz song; that run took {r['total']:.0f} s (RTF {r['total'] / 600:.3f}), stages "
                   + ", ".join(f"{s} {r['timings'][s]:.1f} s" for s in STAGES))
        else:
            mem = f"the 600 s run failed after {time.perf_counter() - t0:.0f} s: {p.stderr.strip()[-300:]}"
    (a.out / "bench.json").write_text(json.dumps(raw, indent=1))
    section = f"""## Pipeline speed and memory

Command: `.venv/bin/python bench/pipeline_bench.py --runs {a.runs} --runs-long {a.runs_long} --write-benchmarks`.
Machine: {os.cpu_count()} CPU cores ({cpu_model()}), CPU only, torch {_torch()}; other jobs shared the
machine while this ran, so figures are upper bounds. Default engines (spectral separator, world
converter), warm (engines loaded and torchcrepe compiled by one warm-up run). Songs: the eval kit's
pub_song10_a, pub_song30_a and pub_song180 (stereo 44.1 kHz WAV). Median wall seconds per stage.
Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

| song | runs | preprocess | separate | infer | mix | finalize | total | RTF |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Peak memory (fresh subprocess, `resource.getrusage(RUSAGE_SELF).ru_maxrss`): {mem}.

Targets: RTF <= 0.5 for 180 s; peak memory < 2 GiB for 10 minutes.
"""
    print(section)
    if a.write_benchmarks:
        write_benchmarks(section)
    return 0


def _torch() -> str:
    try:
        import torch
        return torch.__version__
    except Exception:
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
