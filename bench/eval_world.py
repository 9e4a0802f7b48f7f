"""Score the ``world`` converter with the evaluation kit (outside the repo, /work/evalkit).

Converts each public case's vocal (the TRUE stem by default, or ``--vocals DIR`` with
``DIR/<case>/vocal.wav`` separated stems) with pitch_shift = the case's semitones and the
case's reference clip, writes ``OUT/<case>/converted_vocal.wav`` and ``cover.wav`` (converted
vocal + true instrumental), scores them with the kit's ``score.py`` and prints a table:

    .venv/bin/python bench/eval_world.py [--cases a,b] [--out /tmp/world_eval] [--vocals DIR]
        [--options '{"knn_weight": 0.75}'] [--no-score] [--residue-fraction A]

``--residue-fraction A`` (with ``--vocals``) converts ``true + A * (separated - true)``: the true
stem with a fraction of the separation's error put back, to see how the converter's melody and
timbre degrade with the separator's leakage (A = 0: the true stem, A = 1: the separated stem).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.audio import read_wav, resample, to_mono, write_wav  # noqa: E402
from inference.context import StageContext  # noqa: E402
from inference.engines.base import ConversionParams  # noqa: E402
from inference.engines.world import WorldConverter  # noqa: E402

KIT = Path("/work/evalkit")
MANIFEST = KIT / "out/corpus/manifest.public.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="")
    ap.add_argument("--out", type=Path, default=Path("/tmp/world_eval"))
    ap.add_argument("--vocals", type=Path, help="folder with <case>/vocal.wav (separated stems)")
    ap.add_argument("--options", default="{}", help="JSON constructor options for WorldConverter")
    ap.add_argument("--auto-pitch", action="store_true")
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--residue-fraction", type=float, default=None,
                    help="with --vocals: convert true + A * (separated - true)")
    a = ap.parse_args()
    if a.residue_fraction is not None and not a.vocals:
        ap.error("--residue-fraction needs --vocals")

    man = json.loads(MANIFEST.read_text())
    base = MANIFEST.parent
    cases = [c for c in man["cases"] if not a.cases or c["id"] in a.cases.split(",")]
    conv = WorldConverter(**json.loads(a.options))
    # warm-up (model load) outside the timings
    warm = np.zeros(16000, np.float32)
    warm[:8000] = 0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)
    from inference.engines import pitch
    pitch.track_f0(warm, 16000, device="cpu", model=conv.f0_model or "tiny")

    rows = []
    for c in cases:
        t = c["truth"]
        vpath = (a.vocals / c["id"] / "vocal.wav") if a.vocals else base / t["vocal"]
        if not vpath.exists():
            print(f"skip {c['id']}: no {vpath}", file=sys.stderr)
            continue
        v, sr = read_wav(vpath)
        if a.residue_fraction is not None:
            tv, tsr = read_wav(base / t["vocal"])
            sep, true = to_mono(v), to_mono(resample(tv, tsr, sr))
            m = min(len(sep), len(true))
            v = (true[:m] + np.float32(a.residue_fraction) * (sep[:m] - true[:m]))[None, :]
        r, rsr = read_wav(base / c["input"]["reference"])
        ctx = StageContext("infer", a.out / c["id"])
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        y = conv.convert(to_mono(v), sr, to_mono(r), rsr,
                         ConversionParams(pitch_shift=float(c["semitones"]), auto_pitch=a.auto_pitch), ctx)
        dt = time.perf_counter() - t0
        d = a.out / c["id"]
        write_wav(d / "converted_vocal.wav", y, sr)
        cover = y[None, :]
        ipath = base / t["instrumental"] if "instrumental" in t else None
        if ipath and ipath.exists():
            inst, isr = read_wav(ipath)
            inst = resample(inst, isr, sr)
            m = min(inst.shape[1], len(y))
            cover = inst[:, :m] + y[None, :m]
        write_wav(d / "cover.wav", cover, sr)
        rows.append(dict(case=c["id"], seconds=round(dt, 2), rtf=round(dt / (len(y) / sr), 3),
                         cpu_rtf=round((ctx.info.get("cpu_seconds") or 0) / (len(y) / sr), 3),
                         warnings=ctx.warnings, info=ctx.info))
        print(f"converted {c['id']}: {dt:.2f} s, rtf {dt / (len(y) / sr):.3f}, "
              f"cpu {ctx.info.get('cpu_seconds')} s, warp {ctx.info.get('warp_factor')}, warnings {ctx.warnings}", file=sys.stderr, flush=True)
    if a.no_score or not rows:
        return
    cmd = [str(KIT / ".venv/bin/python"), "score.py", "--manifest", str(MANIFEST),
           "--outputs", str(a.out)]
    for r in rows:
        cmd += ["--case", r["case"]]
    res = subprocess.run(cmd, cwd=KIT, capture_output=True, text=True)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        sys.exit(res.returncode)
    scores = json.loads(res.stdout)
    scores = scores if isinstance(scores, list) else [scores]
    by = {s.get("case", s.get("id")): s for s in scores}
    print("| case | rpa_50c | rca_50c | med ¢ | transfer | sim→ref | wall s | rtf | cpu rtf |")
    print("|---|---|---|---|---|---|---|---|---|")
    rp, tf = [], []
    for r in rows:
        s = by.get(r["case"], {})
        m, tb = s.get("melody", {}), s.get("timbre", {})
        rpa, tr = m.get("rpa_50c"), tb.get("transfer_fraction")
        if rpa is not None:
            rp.append(rpa)
        if tr is not None:
            tf.append(tr)
        f = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(f"| {r['case']} | {f(rpa)} | {f(m.get('rca_50c'))} | {f(m.get('median_abs_cents'), 1)} | {f(tr)} "
              f"| {f(tb.get('sim_converted_to_reference'))} | {r['seconds']:.2f} | {r['rtf']:.3f} | {r['cpu_rtf']:.3f} |")
    if rp or tf:
        print(f"| mean | {np.mean(rp) if rp else float('nan'):.3f} | | | {np.mean(tf) if tf else float('nan'):.3f} | | | |")
        print(f"| min | {np.min(rp) if rp else float('nan'):.3f} | | | {np.min(tf) if tf else float('nan'):.3f} | | | |")
    (a.out / "scores.json").write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
