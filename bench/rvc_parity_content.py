"""Parity and cost of our RVC content encoder and RMVPE against upstream RVC's, same random weights.

    git -C <mirror> archive HEAD infer tools configs | tar -x -C /tmp/rvc_upstream
    python bench/rvc_parity_content.py --upstream /tmp/rvc_upstream [--seconds 10] [--json out.json]

- HuBERT-base at full size (12 layers, 768/3072, 512-channel conv front end, 128-tap positional
  conv in 16 groups, final_proj 256) with random weights, written as a fairseq-format checkpoint
  (float16 tensors, as the community's ``hubert_base.pt``) and read by our loader; the same values
  converted to transformers names and run by upstream's ``HubertModelWithFinalProj`` through its
  ``extract_hubert_features``. Reported: max abs difference of v1 (layer 9 + final_proj) and v2
  (layer 12) features, and the features' own scale.
- RMVPE at upstream's full size (E2E(4, 1, (2, 2)): 5 encoder stages of 4 blocks, 16 base channels,
  4 intermediate stages, BiGRU 256) with random weights (and random batch-norm statistics), one
  ``rmvpe.pt`` state dict loaded by both. Reported: max abs difference of the salience, of the f0
  track in Hz on frames voiced in both, and the count of frames voiced in only one.
- Cost: each side in its own child process (so peak RSS is its own): load, one warm-up call, then
  the median wall time (and CPU time, less sensitive to other load on a shared machine) of 3 calls
  on ``--seconds`` of audio, and the process's peak RSS (VmHWM).
- ``--long S``: our RMVPE on S seconds, windowed (as shipped) and in one pass: peak RSS of each and
  how far the two f0 tracks differ (random weights: a bound on the seams' effect, not a quality figure).

Upstream code is only imported from ``--upstream`` (never copied into this project).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_HUBERT = dict(dim=768, layers=12, ffn=3072, conv_channels=512, conv_pos=128, conv_pos_groups=16)


def test_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """A sung-like test signal at 16 kHz: harmonics on a gliding, vibrato melody, pauses, a little noise."""
    rng = np.random.default_rng(seed)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    f = 220 * 2 ** (np.floor(t / 0.5) % 5 / 12) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * 0.4 * t) > -0.8).astype(float)
    return (0.2 * x * gate + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def build_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    import torch

    from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq, make_tiny_rmvpe

    hub = make_tiny_hubert_fairseq(folder / "hubert_base.pt", seed=seed, final_proj_dim=256, flavour="cfg",
                                   **FULL_HUBERT)
    state = {k: v.float() for k, v in torch.load(hub, weights_only=True)["model"].items()}
    torch.save(state, folder / "hubert_state_f32.pt")
    rm = make_tiny_rmvpe(folder / "rmvpe.pt", seed=seed, full_size=True)
    return {"hubert": hub, "hubert_state": folder / "hubert_state_f32.pt", "rmvpe": rm}


def upstream_hubert(upstream: Path, state_path: Path):
    import torch
    from transformers import HubertConfig

    sys.path.insert(0, str(upstream))
    from infer.hubert import HubertModelWithFinalProj, extract_hubert_features  # noqa: E402

    from tests.inference.tiny_rvc_content import fairseq_to_transformers_state, transformers_config

    cfg = HubertConfig(**transformers_config(final_proj_dim=256, **FULL_HUBERT))
    model = HubertModelWithFinalProj(cfg)
    missing, unexpected = model.load_state_dict(
        fairseq_to_transformers_state(torch.load(state_path, weights_only=True)), strict=False)
    assert not unexpected and set(missing) <= {"masked_spec_embed"}, (missing, unexpected)
    model.eval()

    def run(wav: np.ndarray, version: str):
        x = torch.from_numpy(wav).float().view(1, -1)
        with torch.no_grad():
            return extract_hubert_features(model, x, version, padding_mask=torch.zeros_like(x, dtype=torch.bool))

    return run


def ours_hubert(path: Path):
    import torch

    from inference.engines.rvc.content import load_content_encoder

    enc = load_content_encoder(path)

    def run(wav: np.ndarray, version: str):
        return enc.extract(torch.from_numpy(wav).view(1, -1), version)

    return run


def upstream_rmvpe(upstream: Path, path: Path):
    sys.path.insert(0, str(upstream))
    from infer.rmvpe import RMVPE  # noqa: E402

    model = RMVPE(str(path), is_half=False, device="cpu")

    def f0(wav):
        return model.infer_from_audio(wav, thred=0.03)

    def salience(wav):
        return model.mel2hidden(model.extract_mel(wav, center=True)).squeeze(0).cpu().numpy()

    return f0, salience


def ours_rmvpe(path: Path):
    from inference.engines.rvc.rmvpe import load_rmvpe

    model = load_rmvpe(path)
    return (lambda wav: model.f0(wav, threshold=0.03)), model.salience


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args) -> None:
    """Time one side in this fresh process and print a JSON line."""
    import torch

    files = json.loads(args.files)
    wav = test_audio(args.seconds)
    t0 = time.perf_counter()
    if args.child in ("ours-hubert", "upstream-hubert"):
        run = (ours_hubert(Path(files["hubert"])) if args.child == "ours-hubert"
               else upstream_hubert(Path(args.upstream), Path(files["hubert_state"])))
        calls = {"v2": lambda: run(wav, "v2"), "v1": lambda: run(wav, "v1")}
    else:
        f0, _ = (ours_rmvpe(Path(files["rmvpe"])) if args.child == "ours-rmvpe"
                 else upstream_rmvpe(Path(args.upstream), Path(files["rmvpe"])))
        calls = {"f0": lambda: f0(wav)}
    if args.child == "ours-rmvpe-long":
        long_child(args, files)
        return
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mib()
    out = {"what": args.child, "threads": torch.get_num_threads(), "load_s": round(load_s, 2),
           "rss_after_load_mib": round(rss_loaded)}
    for name, call in calls.items():
        call()  # warm-up
        times, cpu = [], []
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            call()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[f"{name}_median_s"] = round(statistics.median(times), 3)
        out[f"{name}_median_cpu_s"] = round(statistics.median(cpu), 3)
        out[f"{name}_rtf"] = round(statistics.median(times) / args.seconds, 4)
    out["peak_rss_mib"] = round(peak_rss_mib())
    print(json.dumps(out))


def long_child(args, files: dict) -> None:
    """Our RMVPE on a long input: windowed (as shipped) vs one pass over everything."""
    from inference.engines.rvc import rmvpe as rm

    wav = test_audio(args.long)
    model = rm.load_rmvpe(Path(files["rmvpe"]))
    base = peak_rss_mib()
    t, c = time.perf_counter(), time.process_time()
    windowed = model.f0(wav)
    out = {"what": "ours-rmvpe-long", "seconds": args.long, "wall_s": round(time.perf_counter() - t, 2),
           "cpu_s": round(time.process_time() - c, 2), "rss_after_load_mib": round(base),
           "peak_rss_windowed_mib": round(peak_rss_mib())}
    rm.SINGLE_PASS_FRAMES = 10 ** 9
    whole = model.f0(wav)
    both = (windowed > 0) & (whole > 0)
    cents = 1200 * np.abs(np.log2(windowed[both] / whole[both]))
    out.update({"peak_rss_after_one_pass_mib": round(peak_rss_mib()), "frames": len(whole),
                "voiced_in_one_only": int(((windowed > 0) != (whole > 0)).sum()),
                "frames_off_by_over_50_cents": int((cents > 50).sum()),
                "max_cents_diff": round(float(cents.max()), 2) if cents.size else None})
    print(json.dumps(out))


def parity(upstream: Path, files: dict, seconds: float) -> dict:
    wav = test_audio(seconds)
    res: dict = {}
    ours_h, up_h = ours_hubert(files["hubert"]), upstream_hubert(upstream, files["hubert_state"])
    for version in ("v1", "v2"):
        a, b = ours_h(wav, version).numpy(), up_h(wav, version).numpy()
        res[f"hubert_{version}"] = {"shape": list(a.shape), "upstream_shape": list(b.shape),
                                    "max_abs_diff": float(np.abs(a - b).max()),
                                    "feature_abs_max": float(np.abs(b).max()),
                                    "feature_std": float(b.std())}
    (of0, osal), (uf0, usal) = ours_rmvpe(files["rmvpe"]), upstream_rmvpe(upstream, files["rmvpe"])
    a, b = of0(wav), uf0(wav)
    both = (a > 0) & (b > 0)
    sa, sb = osal(wav), usal(wav)
    res["rmvpe"] = {"frames": len(a), "upstream_frames": len(b), "voiced_both": int(both.sum()),
                    "voiced_in_one_only": int(((a > 0) != (b > 0)).sum()),
                    "f0_max_abs_diff_hz": float(np.abs(a[both] - b[both]).max()) if both.any() else None,
                    "f0_median_hz": float(np.median(b[both])) if both.any() else None,
                    "salience_max_abs_diff": float(np.abs(sa - sb).max())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="folder holding upstream RVC's infer/, tools/, configs/")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--long", type=float, default=0.0,
                    help="also run our RMVPE on this many seconds: windowed vs one pass, peak RSS of each")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    upstream = Path(args.upstream).resolve()
    if not (upstream / "infer" / "rmvpe.py").is_file():
        sys.exit(f"{upstream} has no infer/rmvpe.py (extract upstream RVC there first)")
    with tempfile.TemporaryDirectory(prefix="rvc_parity_") as tmp:
        files = build_files(Path(tmp))
        report = {"seconds": args.seconds, "parity": parity(upstream, files, args.seconds)}
        print(json.dumps(report["parity"], indent=1), flush=True)
        if not args.no_timing:
            report["cost"] = []
            enc_files = json.dumps({k: str(v) for k, v in files.items()})
            sides = ["ours-hubert", "upstream-hubert", "ours-rmvpe", "upstream-rmvpe"]
            for what in sides + (["ours-rmvpe-long"] if args.long else []):
                cmd = [sys.executable, __file__, "--upstream", str(upstream), "--seconds", str(args.seconds),
                       "--long", str(args.long), "--child", what, "--files", enc_files]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
                if proc.returncode:
                    sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
                line = json.loads(proc.stdout.strip().splitlines()[-1])
                report["cost"].append(line)
                print(json.dumps(line), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
