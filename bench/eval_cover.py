"""Run the cover pipeline on every public case of the evaluation kit, score it, write the table.

    .venv/bin/python bench/eval_cover.py [--kit /work/evalkit] [--out bench/out/eval]
                                         [--case ID ...] [--cli] [--no-score] [--write-benchmarks]

Per case: ``--pitch`` = the case's ``semitones``, reference = ``voices/<voice>/clip1.wav``;
outputs go to ``OUT/<case>/{cover.wav,converted_vocal.wav,vocal.wav,instrumental.wav}``
(what the kit's ``score.py --outputs`` reads) plus ``report.json`` / ``error.txt``.
By default the pipeline runs in this process, warm (one short warm-up run first, so torchcrepe's
first-call compile is not in the timings); ``--cli`` runs ``python -m inference cover`` per case.
Then ``score.py --split public`` scores the folder and a markdown table goes to
``OUT/table.md`` (and into BENCHMARKS.md between the eval markers with --write-benchmarks).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_cases(kit: Path, out: Path, ids: list[str] | None, use_cli: bool) -> dict:
    manifest = json.loads((kit / "out/corpus/manifest.public.json").read_text())
    root = kit / "out/corpus"
    cases = [c for c in manifest["cases"] if c["split"] == "public" and (not ids or c["id"] in ids)]
    runs: dict[str, dict] = {}
    if not use_cli:
        _warm_up(out)
    for case in cases:
        cid = case["id"]
        d = out / cid
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        song = root / case["input"]["song"]
        ref = root / case["input"].get("reference", manifest["voices"][case["reference_voice"]]["clip1"])
        print(f"[{time.strftime('%H:%M:%S')}] {cid}: {song.name}, pitch {case['semitones']:+}", file=sys.stderr,
              flush=True)
        t0 = time.perf_counter()
        rec: dict = {"case": cid, "semitones": case["semitones"], "edge": case.get("edge")}
        if use_cli:
            work = d / "work"
            r = subprocess.run([sys.executable, "-m", "inference", "cover", "--song", str(song), "--reference",
                                str(ref), "-o", str(d / "cover.wav"), "--pitch", str(case["semitones"]),
                                "--keep-stems", str(d), "--workdir", str(work)], cwd=ROOT,
                               capture_output=True, text=True)
            rec["wall_s"] = time.perf_counter() - t0
            if r.returncode != 0:
                rec["error"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
            else:
                rec["report"] = json.loads((d / "report.json").read_text())
            shutil.rmtree(work, ignore_errors=True)
        else:
            from inference import Pipeline, PipelineConfig
            from inference.errors import PipelineError
            work = d / "work"
            try:
                res = Pipeline(PipelineConfig(pitch_shift=float(case["semitones"]))).run(song, ref, work)
                rec["wall_s"] = time.perf_counter() - t0
                for key, name in (("cover", "cover.wav"), ("converted_vocals", "converted_vocal.wav"),
                                  ("vocals", "vocal.wav"), ("instrumental", "instrumental.wav"),
                                  ("report", "report.json")):
                    shutil.copyfile(res.artifacts[key], d / name)
                rec["report"] = res.report
            except PipelineError as exc:
                rec["wall_s"] = time.perf_counter() - t0
                rec["error"] = f"error: {exc}"
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if "error" in rec:
            (d / "error.txt").write_text(rec["error"] + "\n")
            print(f"    -> {rec['error']}", file=sys.stderr, flush=True)
        else:
            rep = rec["report"]
            print(f"    -> {rec['wall_s']:.1f} s, rtf {rep['real_time_factor']}, warnings {rep['warnings']}",
                  file=sys.stderr, flush=True)
        runs[cid] = rec
    if ids and (out / "runs.json").exists():   # re-running some cases: keep the others' records
        merged = json.loads((out / "runs.json").read_text())
        merged.update(runs)
        runs = {c["id"]: merged[c["id"]] for c in manifest["cases"] if c["id"] in merged}
    (out / "runs.json").write_text(json.dumps(runs, indent=1, default=str))
    return runs


def _warm_up(out: Path) -> None:
    """One short run so model loading and JIT compiles are out of the per-case timings."""
    import numpy as np
    from inference import Pipeline
    from tests import signals
    d = out / "_warmup"
    song = signals.write(d / "song.wav", signals.song(4.0)[0])
    ref = signals.write(d / "ref.wav", signals.reference_voice(5.0))
    t0 = time.perf_counter()
    Pipeline().run(song, ref, d / "work")
    print(f"warm-up run: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    shutil.rmtree(d, ignore_errors=True)
    del np


def score(kit: Path, out: Path, case: str | None = None) -> list[dict]:
    dest = out / ("scores.json" if case is None else f"scores_{case}.json")
    sel = ["--split", "public"] if case is None else ["--case", case]
    cmd = [str(kit / ".venv/bin/python"), "score.py", *sel, "--manifest",
           "out/corpus/manifest.public.json", "--outputs", str(out.resolve()), "--json-out", str(dest.resolve())]
    print("scoring:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=kit, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(dest.read_text())
    return data if isinstance(data, list) else [data]


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def _fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{nd}f}"


COLS = [  # (header, getter over (score, run), decimals)
    ("voc SDR", lambda s, r: _get(s, "separation", "vocal", "sdr"), 2),
    ("voc SDR (mixture)", lambda s, r: _get(s, "separation", "vocal", "mixture_sdr"), 2),
    ("ins SDR", lambda s, r: _get(s, "separation", "instrumental", "sdr"), 2),
    ("ins SDR (mixture)", lambda s, r: _get(s, "separation", "instrumental", "mixture_sdr"), 2),
    ("RPA 50c", lambda s, r: _get(s, "melody", "rpa_50c"), 2),
    ("RCA 50c", lambda s, r: _get(s, "melody", "rca_50c"), 2),
    ("transfer", lambda s, r: _get(s, "timbre", "transfer_fraction"), 2),
    ("voicing FA", lambda s, r: _get(s, "melody", "voicing_false_alarm"), 2),
    ("LUFS", lambda s, r: _get(s, "mix", "lufs_integrated"), 1),
    ("TP dBTP", lambda s, r: _get(s, "mix", "true_peak_dbtp"), 2),
    ("clipped", lambda s, r: _get(s, "mix", "clipped_samples"), 0),
    ("Δdur ms", lambda s, r: _get(s, "mix", "duration_diff_ms"), 2),
    ("prep s", lambda s, r: _get(r, "report", "timings", "preprocess"), 2),
    ("sep s", lambda s, r: _get(r, "report", "timings", "separate"), 2),
    ("infer s", lambda s, r: _get(r, "report", "timings", "infer"), 2),
    ("mix s", lambda s, r: _get(r, "report", "timings", "mix"), 2),
    ("final s", lambda s, r: _get(r, "report", "timings", "finalize"), 2),
    ("RTF", lambda s, r: _get(r, "report", "real_time_factor"), 3),
]


def table(scores: list[dict], runs: dict) -> tuple[str, dict]:
    by_case = {s["case"]: s for s in scores}
    head = "| case | " + " | ".join(c[0] for c in COLS) + " | notes |"
    lines = [head, "|" + "---|" * (len(COLS) + 2)]
    sums: dict[str, list[float]] = {c[0]: [] for c in COLS}
    for cid, run in runs.items():
        s = by_case.get(cid, {})
        vals = []
        for name, get, nd in COLS:
            v = get(s, run) if "error" not in run or name in () else None
            if v is not None:
                sums[name].append(float(v))
            vals.append(_fmt(v, nd))
        note = run.get("error") or "; ".join(_get(run, "report", "warnings") or [])
        if s.get("error"):
            note = (note + "; " if note else "") + "score: " + s["error"]
        lines.append(f"| {cid} | " + " | ".join(vals) + f" | {note[:160]} |")
    means = {k: (sum(v) / len(v) if v else None) for k, v in sums.items()}
    lines.append("| **mean** | " + " | ".join(_fmt(means[c[0]], c[2] if c[2] else 1) for c in COLS) + " | |")
    return "\n".join(lines), means


def passthrough_means(kit: Path) -> str:
    """The kit's passthrough baseline mean row, in our columns where they exist."""
    text = (kit / "BASELINES.md").read_text()
    m = re.search(r"## Mean over.*?\n(\|.*?\n)\|---.*?\n((?:\|.*\n)+)", text, re.S)
    if not m:
        return ""
    header = [h.strip() for h in m.group(1).strip().strip("|").split("|")]
    rows = {}
    for line in m.group(2).strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    p = rows.get("passthrough", {})
    want = [("voc SDR", "voc SDR"), ("ins SDR", "ins SDR"), ("RPA 50c", "RPA"), ("RCA 50c", "RCA"),
            ("transfer", "transfer"), ("LUFS", "LUFS"), ("TP dBTP", "TP dBTP"), ("clipped", "clipped"),
            ("Δdur ms", "Δdur ms")]
    return "| " + " | ".join(f"{ours}: {p.get(theirs, '–')}" for ours, theirs in want) + " |"


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
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/eval")
    ap.add_argument("--case", action="append", help="only these case ids (repeatable)")
    ap.add_argument("--cli", action="store_true", help="run the CLI per case instead of the pipeline in-process")
    ap.add_argument("--no-run", action="store_true", help="reuse OUT/runs.json")
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--rescore-only", action="store_true", help="score only the --case ids, keep other scores")
    ap.add_argument("--write-benchmarks", action="store_true", help="put the table into BENCHMARKS.md")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = json.loads((a.out / "runs.json").read_text()) if a.no_run else run_cases(a.kit, a.out, a.case, a.cli)
    run_s = time.perf_counter() - t0
    if a.no_score:
        return 0
    if a.rescore_only and (a.out / "scores.json").exists():
        # score only the cases given with --case; keep the other cases' scores
        old = {x["case"]: x for x in json.loads((a.out / "scores.json").read_text())}
        for cid in a.case or []:
            old[cid] = score(a.kit, a.out, case=cid)[0]
        scores = list(old.values())
        (a.out / "scores.json").write_text(json.dumps(scores, indent=1))
    else:
        scores = score(a.kit, a.out)
    tab, means = table(scores, runs)
    mode = "CLI per case" if a.cli else "in-process, warm (one warm-up run first)"
    section = f"""## End-to-end evaluation on the kit's public cases

Command: `.venv/bin/python bench/eval_cover.py --write-benchmarks` ({mode}); scored by
`cd /work/evalkit && .venv/bin/python score.py --split public --manifest out/corpus/manifest.public.json --outputs DIR`.
Machine: {os.cpu_count()} CPU cores ({cpu_model()}), CPU only, shared with other jobs. Default engines
(separator `spectral`, converter `world`); `--pitch` = the case's `semitones`; reference = the voice's `clip1.wav`.
Run time of all cases: {run_s:.0f} s. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

Columns: SDR in dB (BSS Eval, fast_bss_eval) of our stems, beside the input mixture used as the
estimate ("mixture" = doing nothing); RPA / RCA = pitch / chroma accuracy within 50 cents of the
converted vocal against the shifted melody; voicing FA = voicing false alarm of the converted vocal
(share of the frames where nobody sings that the kit's tracker calls voiced); transfer = timbre transfer fraction (0 = still the
singer, 1 = as close as the reference voice singing); LUFS / TP / clipped / Δdur measured on cover.wav;
per-stage wall seconds from report.json; RTF = pipeline wall time / song duration.

{tab}

Kit's passthrough baseline (means over the same cases, from /work/evalkit/BASELINES.md):

{passthrough_means(a.kit)}
"""
    (a.out / "table.md").write_text(section)
    print(section)
    if a.write_benchmarks:
        write_benchmarks(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
