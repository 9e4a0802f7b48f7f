"""Our RVC synthesizer against RVC-Project's own classes: same file, same input, same seed.

    git -C <RVC-WebUI mirror> archive HEAD infer | tar -x -C /tmp/rvc_upstream
    .venv/bin/python bench/rvc_parity.py --upstream /tmp/rvc_upstream [--device cuda] [--json out.json]

For every variant (v1/v2 x pitch-guided or not) a random-weight model is written in the real
``.pth`` format (tests/inference/tiny_rvc_synth.py: float16 weights, weight_g/weight_v pairs),
tiny at 32/40/48 kHz and full-size at 40 kHz (RVC's real sizes: hidden 192, filter 768, 6 layers,
upsample_initial 512, rates [10,10,2,2]). The same file goes into upstream's
``SynthesizerTrnMs{256,768}NSFsid[_nono]`` (``load_state_dict(strict=True)``: our files carry
exactly the reference's key names) and into ours (``read_rvc_checkpoint``/``build_synthesizer``);
both run ``infer`` on the same features, coarse pitch and f0 after the same
``torch.manual_seed``. Reported: max |ours - upstream|, SNR of ours against upstream, the
output's RMS. Target on float32 CPU: max abs diff < 1e-4.

Then the time of the full-size v2 40 kHz synthesizer for 10 s of features (1000 frames),
ours and upstream's, median of 3 warm runs.

Upstream's code is never committed here: the bench imports it from ``--upstream``. Its module
imports need only torch, numpy and scipy (a stand-in ``scipy`` module is put in place when scipy
is missing; the synthesizer classes do not use it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCE = 1e-4


def import_upstream(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        import scipy  # noqa: F401
    except ImportError:
        sys.modules["scipy"] = types.ModuleType("scipy")
    from infer.module import models

    return models


def upstream_model(models, path: Path, device: str):
    cpt = torch.load(path, map_location="cpu", weights_only=True)
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    cls = {
        ("v1", 1): models.SynthesizerTrnMs256NSFsid,
        ("v1", 0): models.SynthesizerTrnMs256NSFsid_nono,
        ("v2", 1): models.SynthesizerTrnMs768NSFsid,
        ("v2", 0): models.SynthesizerTrnMs768NSFsid_nono,
    }[(cpt.get("version", "v1"), cpt.get("f0", 1))]
    net = cls(*cpt["config"], is_half=False)
    del net.enc_q
    net.load_state_dict(cpt["weight"], strict=True)  # our files carry exactly upstream's keys
    return net.eval().float().to(device)


def our_model(path: Path, device: str):
    from inference.engines.rvc.checkpoint import build_synthesizer, read_rvc_checkpoint

    ckpt, state = read_rvc_checkpoint(path)
    return build_synthesizer(ckpt, state, device=device)


def inputs(frames: int, dim: int, seed: int, device: str):
    """Features ~ N(0, 1), a sung-like f0 (glide + vibrato, with unvoiced gaps), coarse pitch."""
    gen = torch.Generator().manual_seed(seed)
    phone = torch.randn(1, frames, dim, generator=gen)
    t = np.arange(frames) / 100.0
    f0 = 180 * 2 ** (t / max(t[-1], 1e-9)) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    f0[(t % 1.0) > 0.8] = 0.0  # 0.2 s unvoiced every second
    mel = 1127 * np.log1p(f0 / 700)
    lo, hi = 1127 * np.log1p(50 / 700), 1127 * np.log1p(1100 / 700)
    coarse = np.where(mel > 0, (mel - lo) * 254 / (hi - lo) + 1, 1)
    coarse = np.clip(np.rint(coarse), 1, 255).astype(np.int64)
    return (phone.to(device), torch.tensor([frames], device=device),
            torch.from_numpy(coarse)[None].to(device), torch.from_numpy(f0.astype(np.float32))[None].to(device),
            torch.tensor([0], device=device))


@torch.no_grad()
def run_upstream(net, f0: bool, args, seed: int, **kw):
    phone, lengths, pitch, nsff0, sid = args
    torch.manual_seed(seed)
    if f0:
        return net.infer(phone, lengths, pitch, nsff0, sid, **kw)[0]
    return net.infer(phone, lengths, sid, **kw)[0]


def run_ours(model, args, seed: int, **kw):
    phone, lengths, pitch, nsff0, sid = args
    torch.manual_seed(seed)
    return model.infer(phone, lengths, pitch, nsff0, sid, **kw)


def compare(ref: torch.Tensor, ours: torch.Tensor) -> dict:
    ref, ours = ref.double().cpu(), ours.double().cpu()
    assert ref.shape == ours.shape, (ref.shape, ours.shape)
    diff = ours - ref
    err = float(diff.pow(2).sum())
    snr = float("inf") if err == 0 else 10 * math.log10(float(ref.pow(2).sum()) / err)
    return {"samples": ref.shape[-1], "max_abs_diff": float(diff.abs().max()), "snr_db": snr,
            "rms": float(ref.pow(2).mean().sqrt())}


def main() -> int:
    from tests.inference.tiny_rvc_synth import rvc_config, write_rvc_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", type=Path, required=True, help="folder holding upstream's infer/ package")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=200, help="frames per parity case (100 per second)")
    ap.add_argument("--bench-frames", type=int, default=1000, help="frames for the timing (0 = skip)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-parity", action="store_true", help="only the timing")
    ap.add_argument("--sizes", default="tiny,full", help="parity cases to run: tiny, full or both")
    ap.add_argument("--half", action="store_true",
                    help="also run ours in half precision (CUDA only) against upstream in float32: reports SNR")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    models = import_upstream(a.upstream)
    dev = a.device
    tmp = Path(tempfile.mkdtemp(prefix="rvc_parity_"))
    rows, ok = [], True
    cases = [(size, v, f0, sr) for size in ("tiny",) for v in ("v1", "v2") for f0 in (True, False)
             for sr in (32000, 40000, 48000)]
    cases += [("full", v, f0, 40000) for v in ("v2", "v1") for f0 in (True, False)]
    cases = [c for c in cases if c[0] in a.sizes.split(",")]
    if a.no_parity:
        cases = []
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, {a.frames} frames per case")
    print(f"{'model':<6}{'variant':<14}{'sr':>6}{'samples':>9}{'max|diff|':>12}{'SNR dB':>9}{'rms':>8}  note")
    for i, (size, v, f0, sr) in enumerate(cases):
        path = write_rvc_file(tmp / f"{size}_{v}_{int(f0)}_{sr}.pth", config=rvc_config(version=v, sr=sr, full=size == "full"),
                              version=v, f0=f0, seed=100 + i)
        up, ours = upstream_model(models, path, dev), our_model(path, dev)
        args = inputs(a.frames, 768 if v == "v2" else 256, seed=i, device=dev)
        variants = [("whole", {}, {})]
        if size == "tiny" and sr == 40000:
            short = (args[0], args[1] - 37, *args[2:])  # padded batch: lengths < frames
            variants.append(("lengths<T", {}, {"args": short}))
            variants.append(("skip_head", {"skip_head": 60, "return_length": 100},
                             {"skip_head": torch.tensor(60), "return_length": torch.tensor(100)}))
        for note, ours_kw, up_kw in variants:
            run_args = up_kw.pop("args", args) if "args" in up_kw else args
            ref = run_upstream(up, f0, run_args, seed=1234 + i, **up_kw)
            out = run_ours(ours, run_args, seed=1234 + i, **ours_kw)
            r = compare(ref, out)
            r.update(model=size, version=v, f0=f0, sr=sr, note=note)
            ok &= r["max_abs_diff"] < TOLERANCE
            rows.append(r)
            name = f"{v} {'f0' if f0 else 'no-f0'}"
            print(f"{size:<6}{name:<14}{sr:>6}{r['samples']:>9}{r['max_abs_diff']:>12.2e}{r['snr_db']:>9.1f}{r['rms']:>8.3f}  {note}")
            if note == "whole" and (size, v, f0, sr) == ("tiny", "v2", True, 40000):
                # Control: the comparison can fail. Another seed changes the noise draws.
                r = compare(ref, run_ours(ours, args, seed=99))
                print(f"{'':<6}{'(control)':<14}{sr:>6}{r['samples']:>9}{r['max_abs_diff']:>12.2e}{r['snr_db']:>9.1f}"
                      f"{r['rms']:>8.3f}  ours with another seed: must differ")
            if a.half and note == "whole":
                from inference.engines.rvc.checkpoint import build_synthesizer, read_rvc_checkpoint

                half = build_synthesizer(*read_rvc_checkpoint(path), device=dev, half=True)
                r = compare(ref, run_ours(half, args, seed=1234 + i).float())
                r.update(model=size, version=v, f0=f0, sr=sr, note="ours half vs upstream float32")
                rows.append(r)
                print(f"{size:<6}{name:<14}{sr:>6}{r['samples']:>9}{r['max_abs_diff']:>12.2e}{r['snr_db']:>9.1f}{r['rms']:>8.3f}  {r['note']}")

    timing = {}
    if a.bench_frames:
        path = write_rvc_file(tmp / "bench.pth", config=rvc_config(version="v2", sr=40000, full=True), version="v2", f0=True, seed=7)
        up, ours = upstream_model(models, path, dev), our_model(path, dev)
        args = inputs(a.bench_frames, 768, seed=7, device=dev)
        for label, fn in (("ours", lambda: run_ours(ours, args, 0)), ("upstream", lambda: run_upstream(up, True, args, 0))):
            fn()  # warm-up
            times, cpu = [], []
            for _ in range(a.runs):
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            timing[label] = statistics.median(times)
            timing[label + "_cpu"] = statistics.median(cpu)
            if a.half and label == "ours":
                from inference.engines.rvc.checkpoint import build_synthesizer, read_rvc_checkpoint

                half = build_synthesizer(*read_rvc_checkpoint(path), device=dev, half=True)
                run_ours(half, args, 0)
                t0 = time.perf_counter()
                run_ours(half, args, 0)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                timing["ours_half"] = time.perf_counter() - t0
        secs = a.bench_frames / 100
        print(f"full-size v2 40k f0, {secs:.0f} s of features on {dev} ({torch.get_num_threads()} threads): "
              f"ours {timing['ours']:.2f} s (RTF {timing['ours'] / secs:.3f}), upstream {timing['upstream']:.2f} s "
              f"(RTF {timing['upstream'] / secs:.3f}), median of {a.runs}; process CPU time ours "
              f"{timing['ours_cpu']:.2f} s, upstream {timing['upstream_cpu']:.2f} s; load average "
              f"{os.getloadavg()[0]:.1f}"
              + (f"; ours half {timing['ours_half']:.3f} s" if "ours_half" in timing else ""))
    if dev == "cpu":
        import resource

        print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    else:
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    worst = max((r["max_abs_diff"] for r in rows if "half" not in r["note"]), default=0.0)
    print(f"worst max|diff| {worst:.2e} -> {'PASS' if ok else 'FAIL'} (target < {TOLERANCE:g}, float32)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "timing_s": timing, "frames": a.frames,
                                      "bench_frames": a.bench_frames, "device": dev,
                                      "threads": torch.get_num_threads(), "pass": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
