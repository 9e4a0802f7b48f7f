"""Real-time factor and peak memory of the ``uvr`` separator's architectures at full size.

    .venv/bin/python bench/uvr_bench.py [--device cpu|cuda] [--threads N] [--only vr,mdx,bs,mel]
                                        [--budget 300] [--models DIR]

Random weights in the real architectures (the same compute as trained weights), built once into
``--models`` (default /tmp/uvr-bench-models), each loaded and run by the ``uvr`` engine exactly
as a job would (python-audio-separator's own classes):

- ``vr``: a VR net the size of UVR's HP models (``CascadedASPPNet``, the 123821 KiB capacity;
  RVC's ``HP2_all_vocals.pth`` is that net stored in float16) with the ``4band_v2`` band layout
  RVC uses for HP2/HP5.
- ``mdx``: MDX-Net with Inst_HQ_3's model data (dim_f 3072, dim_t 2^8, n_fft 6144, compensate
  1.022), exported to ONNX from a KUIELab-layout TFC-TDF U-Net (11 blocks, 3 conv layers per
  block, growth 48, kernel 3, TDF bottleneck /8: 16.7 M parameters, a 63.7 MiB ONNX file). The
  layer sizes are our estimate of the released model's (no copy of it here to read them from),
  so its compute is matched only as far as that estimate is right.
- ``bs``: BS-Roformer with the dims of ``model_bs_roformer_ep_317_sdr_12.9755.yaml``
  (dim 512, depth 12, 62 bands, hop 441, dim_t 801, 2 overlaps).
- ``mel``: MelBand-Roformer with the dims of ``model_mel_band_roformer_ep_3005_sdr_11.4360.yaml``
  (dim 384, depth 12, 60 bands).

The song is 30 s of stereo 44.1 kHz test audio (tests/signals.song). Each model runs in its own subprocess (peak RSS
is that process's VmHWM, or the CUDA peak allocation on ``--device cuda``): one warm-up
separation of 10 s (also the cost estimate), then the median of 3 separations of 30 s; when that
would exceed ``--budget`` seconds, 1 run of 30 s, or 1 run of 10 s, as the table says. On a
CPU the Roformers (~9 TFLOP per 8 s chunk) are timed on one chunk of their own size, through the loaded
model, and scaled by the library's chunk count for 30 s (``--full-roformer``: whole songs).
Prints a markdown table; beside the wall-clock RTF, the process's CPU seconds per second of audio
(what the separation costs when the machine is shared: the wall figure then includes waiting).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SR = 44100
BS_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


def _roformer_yaml(kind: str) -> dict:
    model = {"dim": 512 if kind == "bs" else 384, "depth": 12, "stereo": True, "num_stems": 1,
             "time_transformer_depth": 1, "freq_transformer_depth": 1, "linear_transformer_depth": 0,
             "dim_head": 64, "heads": 8, "attn_dropout": 0.1, "ff_dropout": 0.1, "flash_attn": True,
             "dim_freqs_in": 1025, "stft_n_fft": 2048, "stft_hop_length": 441, "stft_win_length": 2048,
             "stft_normalized": False, "mask_estimator_depth": 2, "multi_stft_resolution_loss_weight": 1.0,
             "multi_stft_resolutions_window_sizes": (4096, 2048, 1024, 512, 256), "multi_stft_hop_size": 147,
             "multi_stft_normalized": False}
    if kind == "bs":
        model["freqs_per_bands"] = BS_BANDS
    else:
        model["num_bands"] = 60
        model["sample_rate"] = SR
    return {"audio": {"chunk_size": 352800, "dim_f": 1024, "dim_t": 801, "hop_length": 441, "n_fft": 2048,
                      "num_channels": 2, "sample_rate": SR, "min_mean_abs": 0.0},
            "model": model,
            "training": {"batch_size": 2, "instruments": ["vocals", "other"], "target_instrument": "vocals"},
            "inference": {"batch_size": 4, "dim_t": 801, "num_overlap": 2}}


def _mdx_net():
    """A TFC-TDF U-Net in KUIELab's MDX-Net layout, built from the library's TFC_TDF block."""
    import torch
    from torch import nn
    from inference._compat import import_audio_separator
    import_audio_separator()
    from audio_separator.separator.uvr_lib_v5.modules import TFC_TDF

    dim_c, dim_f, n_blocks, l, g, k, bn = 4, 3072, 11, 3, 48, 3, 8

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.n = n_blocks // 2
            self.first = nn.Sequential(nn.Conv2d(dim_c, g, 1), nn.BatchNorm2d(g), nn.ReLU())
            f, c = dim_f, g
            self.enc, self.ds, self.us, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(self.n):
                self.enc.append(TFC_TDF(c, l, f, k, bn))
                self.ds.append(nn.Sequential(nn.Conv2d(c, c + g, 2, 2), nn.BatchNorm2d(c + g), nn.ReLU()))
                f, c = f // 2, c + g
            self.mid = TFC_TDF(c, l, f, k, bn)
            for _ in range(self.n):
                self.us.append(nn.Sequential(nn.ConvTranspose2d(c, c - g, 2, 2), nn.BatchNorm2d(c - g), nn.ReLU()))
                f, c = f * 2, c - g
                self.dec.append(TFC_TDF(c, l, f, k, bn))
            self.last = nn.Conv2d(c, dim_c, 1)

        def forward(self, x):
            x = self.first(x).transpose(-1, -2)
            skips = []
            for i in range(self.n):
                x = self.enc[i](x)
                skips.append(x)
                x = self.ds[i](x)
            x = self.mid(x)
            for i in range(self.n):
                x = self.us[i](x) * skips[-i - 1]
                x = self.dec[i](x)
            return self.last(x.transpose(-1, -2))

    return Net().eval()


def build(models: Path, which: list[str]) -> dict[str, dict]:
    """Write the full-size random-weight models (once); returns the engine options per model."""
    import torch
    from tests.inference import tiny_uvr

    models.mkdir(parents=True, exist_ok=True)
    out = {}
    torch.manual_seed(0)
    if "vr" in which:
        p = models / "HP2_all_vocals_random.pth"
        if not p.exists():
            from inference._compat import import_audio_separator
            import_audio_separator()
            from audio_separator.separator.uvr_lib_v5.vr_network import nets
            net = nets.determine_model_capacity(672 * 2, 123821)  # 4band_v2: 672 bins
            torch.save(net.state_dict(), p)
            tiny_uvr.add_model_data(models, "vr_model_data.json", p,
                                    {"vr_model_param": "4band_v2", "primary_stem": "Instrumental",
                                     "is_karaoke": False, "is_bv_model": False})
        out["vr"] = {"model": p.name, "window_size": 512, "aggression": 5}
    if "mdx" in which:
        p = models / "Inst_HQ_3_random.onnx"
        if not p.exists():
            net = _mdx_net()
            torch.onnx.export(net, (torch.randn(1, 4, 3072, 256),), str(p), input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              opset_version=17, dynamo=False)
            tiny_uvr.add_model_data(models, "mdx_model_data.json", p,
                                    {"compensate": 1.022, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8,
                                     "mdx_n_fft_scale_set": 6144, "primary_stem": "Instrumental"})
        out["mdx"] = {"model": p.name}
    for kind, name in (("bs", "model_bs_roformer_ep_317_random.ckpt"),
                       ("mel", "model_mel_band_roformer_ep_3005_random.ckpt")):
        if kind in which:
            p = models / name
            if not p.exists():
                tiny_uvr.build_roformer(models, name, kind=kind, config=_roformer_yaml(kind))
            out[kind] = {"model": p.name}
    return out


def child(args) -> None:
    import numpy as np
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from inference.context import StageContext
    from inference.engines.uvr import UvrSeparator
    from tests import signals

    opts = json.loads(args.child)
    song30 = np.asarray(signals.song(30.0, SR)[0], dtype=np.float32)  # (2, n): voice over chords and drums
    song10 = song30[:, : 10 * SR]
    ctx = StageContext(stage="separate", workdir=Path(args.models) / "work")
    t0 = time.perf_counter()
    eng = UvrSeparator(model_dir=args.models, device=args.device, **opts)
    load_s = time.perf_counter() - t0
    params = _params(eng)

    cpu = []

    def run(x):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        v, i = eng.separate(x, SR, ctx)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        assert np.all(np.isfinite(v))
        cpu.append((time.process_time() - c) / (x.shape[1] / SR))
        return time.perf_counter() - t

    if eng.is_roformer and not args.full_roformer and not args.device.startswith("cuda"):
        return _roformer_chunk(args, eng, song30, load_s)
    warm = run(song10)
    est30 = warm / 10 * 30
    if 3 * est30 <= args.budget:
        secs, times = 30, [run(song30) for _ in range(3)]
    elif est30 <= args.budget:
        secs, times = 30, [run(song30)]
    else:
        secs, times = 10, [run(song10)] if warm * 3 > args.budget else [run(song10) for _ in range(3)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else _vm_hwm_mib()
    print("RESULT " + json.dumps({"arch": eng.arch, "precision": eng.precision, "runtime": getattr(eng, "mdx_runtime", ""),
                                  "params_m": round(params / 1e6, 1), "load_s": round(load_s, 1),
                                  "warmup_s": round(warm, 1), "seconds": secs, "runs": len(times),
                                  "rtf": statistics.median(times) / secs,
                                  "cpu_rtf": statistics.median(cpu[1:]), "peak_mib": round(peak)}), flush=True)


def _roformer_chunk(args, eng, song30, load_s) -> None:
    """Full-size Roformers cost ~9 TFLOP per 8 s chunk: too slow for whole songs on a shared
    2-core CPU. Time one forward pass of the loaded model on one chunk of the model's own size
    and scale by the number of chunks the library runs for 30 s (its own chunk schedule)."""
    import torch
    inst = eng.library.model_instance
    cfg = inst.model_data_cfgdict
    hop = getattr(cfg.model, "stft_hop_length", None) or cfg.audio.hop_length
    chunk = int(hop) * (int(cfg.inference.dim_t) - 1)
    n_chunks = len(inst._roformer_chunk_starts(song30.shape[1], chunk, chunk // inst.overlap))
    dev = torch.device(args.device)
    x = torch.from_numpy(np.ascontiguousarray(song30[:, :chunk])).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, cpus = [], []
    for _ in range(1 if dev.type == "cpu" else 4):
        sync()
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            y = inst.model_run(x.unsqueeze(0))[0]
        sync()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    assert torch.isfinite(y).all()
    t = statistics.median(times[1:] if len(times) > 1 else times)
    c = statistics.median(cpus[1:] if len(cpus) > 1 else cpus)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _vm_hwm_mib()
    print("RESULT " + json.dumps({"arch": eng.arch, "precision": eng.precision, "runtime": "",
                                  "params_m": round(_params(eng) / 1e6, 1), "load_s": round(load_s, 1),
                                  "warmup_s": None, "seconds": f"1 chunk of {chunk / SR:.1f} s (x{n_chunks} for 30 s)",
                                  "runs": len(times), "rtf": t * n_chunks / 30.0, "cpu_rtf": c * n_chunks / 30.0,
                                  "chunk_s": round(t, 1), "peak_mib": round(peak)}), flush=True)


def _vm_hwm_mib() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries that over exec from the parent
    (which built the models), VmHWM belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _params(eng) -> int:
    import torch
    run = getattr(eng.library.model_instance, "model_run", None)
    if isinstance(run, torch.nn.Module):
        return sum(p.numel() for p in run.parameters())
    import onnx  # the ONNX graph's weights
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(eng.model_path)).graph.initializer)


def _modules(eng):
    import torch
    run = getattr(eng.library.model_instance, "model_run", None)
    return [run] if isinstance(run, torch.nn.Module) else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", default="vr,mdx,bs,mel")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of measured runs per model")
    ap.add_argument("--models", default="/tmp/uvr-bench-models")
    ap.add_argument("--full-roformer", action="store_true",
                    help="separate whole songs with the Roformers too (default: time one model chunk, scale to 30 s)")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    t0 = time.perf_counter()
    opts = build(Path(args.models), which)
    print(f"models ready in {time.perf_counter() - t0:.0f} s in {args.models}", flush=True)
    rows = []
    names = {"vr": "VR HP (4band_v2, 123821 KiB net)", "mdx": "MDX-Net Inst_HQ_3 dims (ONNX)",
             "bs": "BS-Roformer ep_317 dims", "mel": "MelBand-Roformer ep_3005 dims"}
    for w in which:
        cmd = [sys.executable, __file__, "--child", json.dumps(opts[w]), "--device", args.device,
               "--threads", str(args.threads), "--budget", str(args.budget), "--models", args.models]
        if args.full_roformer:
            cmd.append("--full-roformer")
        load = os.getloadavg()[0]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{w}: failed\n{p.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(line[7:])
        r["name"], r["load_before"] = names[w], round(load, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"\n`bench/uvr_bench.py --device {args.device} --threads {args.threads or 'default'}` "
          f"({os.cpu_count()} CPUs; 1-min load average before each model in the last column)\n")
    print(f"| model | params | precision | audio measured | runs | RTF wall (median) | CPU s per audio s | {mem} "
          "| load (s) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        secs = r["seconds"] if isinstance(r["seconds"], str) else f"{r['seconds']} s"
        print(f"| {r['name']} | {r['params_m']} M | {r['precision']}{' ' + r['runtime'] if r['runtime'] and r['arch'] == 'MDX' else ''} "
              f"| {secs} | {r['runs']} | {r['rtf']:.3f} | {r['cpu_rtf']:.3f} | {r['peak_mib']} | {r['load_s']} "
              f"| {r['load_before']} |")


if __name__ == "__main__":
    main()
