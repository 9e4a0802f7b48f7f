"""Real-time factor and peak memory of the ``rvc`` converter at full size (random weights).

    .venv/bin/python bench/rvc_bench.py [--device cpu|cuda] [--half] [--seconds 30] [--runs 3]
                                        [--threads N] [--budget 600] [--models DIR] [--crepe]

Random weights in the real architectures cost the same compute as trained ones. Built once into
``--models`` (default /tmp/rvc-bench-models) by the project's own test builders, in the real file
formats, and loaded by the engine's real loaders:

- content encoder: HuBERT-base as the community's fairseq-format ``hubert_base.pt`` (12 layers,
  768 dim, FFN 3072, 512-channel conv feature extractor, 128-wide positional conv, final_proj 256);
- voice model: RVC v2, 40 kHz, pitch-guided, with upstream's default 40k model config
  (inter/hidden 192, filter 768, 2 heads, 6 layers, resblock "1" with kernels 3/7/11,
  upsampling 10x10x2x2 with kernels 16/16/4/4 from 512 channels, gin 256, 109 speakers);
- RMVPE at upstream's size (E2E(4, 1, (2, 2)): 16 channels, 4 intermediate layers, BiGRU 256);
- a faiss IVF-Flat index of 10 000 768-dim vectors, written as RVC's training writes it.

The vocal is ``--seconds`` of a synthetic sung melody at 44.1 kHz. The measurement runs in a fresh
process (so the builder's memory is not counted): load the engine, one warm-up conversion of 5 s,
then the median of ``--runs`` conversions of the whole vocal (fewer when the warm-up says they
would not fit in ``--budget`` seconds; the table says how many). Per-step seconds come from the
engine's own timings (``ctx.info["seconds"]``: pitch, content, retrieval, synthesis, post =
resampling, filtering, loudness mix). Peak memory: the process's VmHWM (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SR = 44100
STEPS = ("pitch", "content", "retrieval", "synthesis", "post")


def build(models: Path) -> dict:
    """Write the full-size random-weight files (skipped when already there)."""
    from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq, make_tiny_rmvpe
    from tests.inference.tiny_rvc_index import make_tiny_index
    from tests.inference.tiny_rvc_synth import rvc_config, write_rvc_file

    models.mkdir(parents=True, exist_ok=True)
    paths = {"hubert": models / "hubert_base.pt", "rmvpe": models / "rmvpe.pt",
             "model": models / "v2_40k_full.pth", "index": models / "added_IVF256_Flat_nprobe_1_v2.index"}
    if not paths["hubert"].exists():
        make_tiny_hubert_fairseq(paths["hubert"], dim=768, layers=12, final_proj_dim=256, conv_channels=512,
                                 ffn=3072, conv_pos=128, conv_pos_groups=16, heads=12)
    if not paths["rmvpe"].exists():
        make_tiny_rmvpe(paths["rmvpe"], full_size=True)
    if not paths["model"].exists():
        write_rvc_file(paths["model"], config=rvc_config(version="v2", sr=40000, full=True), version="v2", f0=True,
                       info="bench: random weights")
    if not paths["index"].exists():
        make_tiny_index(paths["index"], 768, n=10000)
    return {k: str(v) for k, v in paths.items()}


def vocal(seconds: float) -> np.ndarray:
    from tests.signals import harmonic_voice, melody_f0
    notes = [220.0, 246.9, 261.6, 293.7, 329.6, 293.7, 261.6, 246.9]
    f0 = melody_f0(notes, 0.5, SR, vibrato_cents=25)
    reps = int(np.ceil(seconds * SR / len(f0)))
    f0 = np.tile(f0, reps)[:int(seconds * SR)]
    gaps = (np.arange(len(f0)) / SR) % 4.0 > 3.7           # a breath every 4 s
    f0[gaps] = 0.0
    return harmonic_voice(f0, SR)


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(a) -> dict:
    import torch
    from inference.context import StageContext
    from inference.engines.base import ConversionParams
    from inference.engines.rvc.engine import RvcConverter

    if a.threads:
        torch.set_num_threads(a.threads)
    paths = json.loads(a.child)
    t0 = time.perf_counter()
    eng = RvcConverter(paths["hubert"], rmvpe=None if a.crepe else paths["rmvpe"], device=a.device,
                       half=a.half if a.device.startswith("cuda") else False)
    params = ConversionParams(model_files={"model": paths["model"], "index": paths["index"]})
    x = vocal(a.seconds)
    ctx = StageContext("infer", Path(a.models))
    warm = x[:5 * SR]
    tw = time.perf_counter()
    eng.convert(warm, SR, warm, SR, params, ctx)
    warm_s = time.perf_counter() - tw
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    est = warm_s / 5 * a.seconds
    runs = max(1, min(a.runs, int(a.budget // max(est, 1e-3))))
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    walls, cpus, steps = [], [], {k: [] for k in STEPS}
    info = {}
    for _ in range(runs):
        ctx = StageContext("infer", Path(a.models))
        c0, w0 = time.process_time(), time.perf_counter()
        y = eng.convert(x, SR, x, SR, params, ctx)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        for k in STEPS:
            steps[k].append(ctx.info["seconds"][k])
        info = ctx.info
        assert len(y) == len(x) and np.all(np.isfinite(y))
    out = {"runs": runs, "wall": statistics.median(walls), "cpu": statistics.median(cpus),
           "steps": {k: statistics.median(v) for k, v in steps.items()}, "load_and_warmup_s": load_s,
           "rss_loaded_mib": rss_loaded, "peak_rss_mib": _peak_rss_mib(), "windows": info.get("windows"),
           "f0_method": info.get("f0_method"), "half": info.get("half"), "threads": torch.get_num_threads()}
    if a.device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="float16 (CUDA only)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of measured runs")
    ap.add_argument("--models", default="/tmp/rvc-bench-models")
    ap.add_argument("--crepe", action="store_true", help="the bundled tracker instead of RMVPE")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(measure(a)), flush=True)
        return
    t = time.perf_counter()
    paths = build(Path(a.models))
    print(f"models ready in {time.perf_counter() - t:.1f} s: {a.models}", file=sys.stderr)
    cmd = [sys.executable, __file__, "--child", json.dumps(paths)] + [
        arg for arg in sys.argv[1:] if arg != "--child"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"measurement failed (exit {proc.returncode})")
    r = json.loads(lines[-1][7:])
    dev = a.device + (" half" if r["half"] else "") + (f" ({r['gpu']})" if "gpu" in r else "")
    mem = (f"CUDA peak {r['cuda_peak_mib']:.0f} MiB, process peak RSS {r['peak_rss_mib']:.0f} MiB"
           if "cuda_peak_mib" in r else f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"\n### rvc: v2 40 kHz full size, {r['f0_method']}, index 10k x 768, {a.seconds:.0f} s vocal, {dev}\n")
    print(f"median of {r['runs']} run(s) after a 5 s warm-up; {r['windows']} window(s); torch threads "
          f"{r['threads']}; load + warm-up {r['load_and_warmup_s']:.1f} s; RSS after load {r['rss_loaded_mib']:.0f} "
          f"MiB; {mem}\n")
    print("| step | seconds | x audio duration |")
    print("|---|---|---|")
    for k in STEPS:
        v = r["steps"][k]
        print(f"| {k} | {v:.2f} | {v / a.seconds:.3f} |")
    print(f"| **total (wall)** | {r['wall']:.2f} | **{r['wall'] / a.seconds:.3f}** |")
    print(f"| process CPU | {r['cpu']:.2f} | {r['cpu'] / a.seconds:.3f} |")


if __name__ == "__main__":
    main()
