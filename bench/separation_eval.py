"""Separate the eval kit's public cases and score the stems (separation only).

    .venv/bin/python bench/separation_eval.py [--cases a,b] [--params '{"chunk_s": 20}'] [--engine spectral]

Writes stems to a temp folder, then scores them with the eval kit's own ``Scorer.separation``
(run with the eval kit's interpreter). Not part of the service.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.audio import decode, write_wav  # noqa: E402
from inference.context import StageContext  # noqa: E402
from inference.registry import get_engine  # noqa: E402

EVALKIT = Path(os.environ.get("EVALKIT", "/work/evalkit"))
MANIFEST = EVALKIT / "out/corpus/manifest.public.json"
DEFAULT = "pub_song10_a,pub_song10_b,pub_song30_a,pub_song30_b,pub_edge_flac48k,pub_edge_mp3_22k_mono,pub_edge_clipped,pub_edge_2s"

SCORE = r"""
import json, sys
sys.path.insert(0, '.')
from score import Scorer
sc = Scorer(sys.argv[1])
out = {}
for cid, v, i in json.loads(sys.argv[2]):
    out[cid] = sc.separation(sc.cases[cid], v, i)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--engine", default="spectral")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    manifest = json.loads(MANIFEST.read_text())
    cases = {c["id"]: c for c in manifest["cases"]}
    out = Path(args.out or tempfile.mkdtemp(prefix="sepeval-"))
    eng = get_engine("separator", args.engine, **json.loads(args.params))
    todo = []
    times = {}
    for cid in args.cases.split(","):
        case = cases[cid]
        song, sr = decode(MANIFEST.parent / case["input"]["song"])
        ctx = StageContext("separate", out)
        t0 = time.perf_counter()
        v, i = eng.separate(song, sr, ctx)
        dt = time.perf_counter() - t0
        times[cid] = (dt, song.shape[1] / sr)
        d = out / cid
        write_wav(d / "vocal.wav", v, sr)
        write_wav(d / "instrumental.wav", i, sr)
        todo.append((cid, str(d / "vocal.wav"), str(d / "instrumental.wav")))
    res = subprocess.run([str(EVALKIT / ".venv/bin/python"), "-c", SCORE, str(MANIFEST), json.dumps(todo)],
                         cwd=EVALKIT, capture_output=True, text=True)
    if res.returncode:
        print(res.stderr[-3000:])
        sys.exit(1)
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{'case':24s} {'vSDR':>7s} {'vMix':>7s} {'vImp':>6s} {'iSDR':>7s} {'iMix':>7s} {'iImp':>6s} {'sec':>6s} {'RTF':>6s}")
    imps = []
    for cid, s in scores.items():
        v, i = s["vocal"], s["instrumental"]
        dt, dur = times[cid]
        vi = (v.get("sdr") or float("nan")) - (v.get("mixture_sdr") or float("nan"))
        ii = (i.get("sdr") or float("nan")) - (i.get("mixture_sdr") or float("nan"))
        imps.append(vi)
        print(f"{cid:24s} {v.get('sdr', float('nan')):7.2f} {v.get('mixture_sdr', float('nan')):7.2f} {vi:6.2f} "
              f"{i.get('sdr', float('nan')):7.2f} {i.get('mixture_sdr', float('nan')):7.2f} {ii:6.2f} {dt:6.2f} {dt / dur:6.3f}")
    print(f"mean vocal improvement: {sum(imps) / len(imps):.2f} dB  params={args.params}")
    (out / "scores.json").write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
