"""The whole ``rvc`` converter against RVC-Project's own inference pipeline: same files, same input, same seed.

    git -C <RVC-WebUI mirror> archive HEAD infer tools configs | tar -x -C /tmp/rvc_upstream
    .venv/bin/python bench/rvc_pipeline_parity.py --upstream /tmp/rvc_upstream [--seconds 6] [--json out.json]

Upstream side: ``infer.vc.pipeline.Pipeline.pipeline`` (the function behind the WebUI's single
inference) with upstream's own synthesizer classes (loaded as its ``VC.get_vc`` does), its
transformers ``HubertModelWithFinalProj`` and its ``RMVPE``; CPU settings x_pad 1, x_query 6,
x_center 38, x_max 41 (its config for a CPU), no output resampling. Our side: ``RvcConverter``
with the same files (the content encoder as a fairseq-format ``hubert_base.pt`` holding the same
weights as the transformers folder upstream reads), ``context_seconds=1`` (= x_pad),
``f0_fill_unvoiced=True`` (this upstream release interpolates F0 across unvoiced frames), the
same ``seed`` set just before each synthesizer call (ours does that itself; upstream's
``net_g.infer`` is wrapped to call ``torch.manual_seed(seed)`` first), so both draw the same
prior and NSF noise.

Models (random weights, real formats): HuBERT with 12 layers of dim 768 (small FFN and conv front
end: v1 needs layer 9), RMVPE at upstream's full size (``E2E(4, 1, (2, 2))`` is hard-coded
there), tiny RVC voices for v1/v2, pitch-guided or not, 32/40/48 kHz, with a faiss index.

The vocal is ``--seconds`` of a synthetic sung melody with a breath pause, at 16 kHz, peak 0.5.
Upstream returns int16 at the model's rate; it is scaled to float and resampled to 16 kHz with
the same resampler ours uses for its output. Upstream's output is one content frame (20 ms)
short at the end (its last window keeps the feature count, ours pads the song's length), so the
last 50 ms are left out of the comparison. With ``rms_mix_rate`` < 1 that shortfall also
stretches upstream's loudness envelope by 20 ms over the song (its ``change_rms`` interpolates the
input's envelope to the output's length): the last variant shows the size of that difference; the
envelope formula itself is checked against upstream's in tests/inference/test_rvc_engine.py.
Reported per variant: max |ours - upstream|, the
SNR of ours against upstream in dB, and the output's RMS. Upstream code is only imported from
``--upstream`` (never copied into this project); ``parselmouth`` (used only by its "pm" F0
method) gets a stand-in module when it is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [  # version, f0, sr, index, settings
    ("v2", True, 40000, True, {"index_rate": 0.75, "protect": 0.33, "rms_mix_rate": 1.0, "pitch_shift": 0}),
    ("v2", True, 48000, True, {"index_rate": 0.5, "protect": 0.5, "rms_mix_rate": 1.0, "pitch_shift": 3}),
    ("v1", True, 40000, True, {"index_rate": 1.0, "protect": 0.2, "rms_mix_rate": 1.0, "pitch_shift": -5}),
    ("v1", False, 32000, False, {"index_rate": 0.0, "protect": 0.33, "rms_mix_rate": 1.0, "pitch_shift": 0}),
    ("v2", False, 48000, True, {"index_rate": 0.75, "protect": 0.33, "rms_mix_rate": 1.0, "pitch_shift": 0}),
    # rms_mix_rate < 1: upstream maps the input's loudness envelope over its output, which is 20 ms
    # short (see above), so its envelope is stretched by that much; ours spans the song's length.
    ("v2", True, 40000, True, {"index_rate": 0.75, "protect": 0.33, "rms_mix_rate": 0.25, "pitch_shift": 0}),
]


def _upstream_imports(upstream: Path):
    sys.path.insert(0, str(upstream))
    try:
        import parselmouth  # noqa: F401
    except ImportError:
        sys.modules["parselmouth"] = types.ModuleType("parselmouth")
    from infer.hubert import HubertModelWithFinalProj
    from infer.module import models
    from infer.vc.pipeline import Pipeline
    return Pipeline, HubertModelWithFinalProj, models


def _upstream_synth(models, path: Path):
    cpt = torch.load(path, map_location="cpu", weights_only=False)  # our own test file
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    f0, version = cpt.get("f0", 1), cpt.get("version", "v1")
    cls = {("v1", 1): models.SynthesizerTrnMs256NSFsid, ("v1", 0): models.SynthesizerTrnMs256NSFsid_nono,
           ("v2", 1): models.SynthesizerTrnMs768NSFsid, ("v2", 0): models.SynthesizerTrnMs768NSFsid_nono}
    net = cls[(version, f0)](*cpt["config"], is_half=False)
    del net.enc_q
    net.load_state_dict(cpt["weight"], strict=False)
    return net.eval().float(), cpt["config"][-1], f0, version


def _seeded_infer(net, seed: int):
    infer = net.infer

    def wrapped(*args, **kwargs):
        torch.manual_seed(seed)
        return infer(*args, **kwargs)

    net.infer = wrapped
    return net


def vocal(seconds: float, sr: int = 16000) -> np.ndarray:
    from tests.signals import harmonic_voice, melody_f0
    f0 = melody_f0([220.0, 261.6, 196.0, 293.7], seconds / 4, sr, vibrato_cents=25)
    t = np.arange(len(f0)) / sr
    f0[(t > seconds * 0.45) & (t < seconds * 0.55)] = 0.0        # a pause
    x = harmonic_voice(f0, sr)
    x += (0.01 * np.random.default_rng(0).standard_normal(len(x))).astype(np.float32) * (f0 == 0)  # breath
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, type=Path)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--models", default=None, help="folder for the model files (default: a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from inference.audio import resample
    from inference.context import StageContext
    from inference.engines.base import ConversionParams
    from inference.engines.rvc.engine import RvcConverter
    from tests.inference.tiny_rvc_content import (make_tiny_hubert_fairseq, make_tiny_hubert_transformers,
                                                  make_tiny_rmvpe)
    from tests.inference.tiny_rvc_index import make_tiny_index
    from tests.inference.tiny_rvc_synth import make_tiny_rvc

    Pipeline, HubertModelWithFinalProj, models = _upstream_imports(a.upstream.resolve())
    root = Path(a.models or tempfile.mkdtemp(prefix="rvc-parity-"))
    root.mkdir(parents=True, exist_ok=True)
    hub_args = dict(dim=768, layers=12, final_proj_dim=256, conv_channels=64, ffn=256, conv_pos=32, seed=7)
    hub_pt = make_tiny_hubert_fairseq(root / "hubert_base.pt", half=False, **hub_args)
    hub_dir = make_tiny_hubert_transformers(root / "hubert_hf", **hub_args)
    rmvpe = root / "rmvpe.pt"
    if not rmvpe.exists():
        make_tiny_rmvpe(rmvpe, full_size=True)
    os.environ["rmvpe_root"] = str(root)
    idx = {"v1": make_tiny_index(root / "v1.index", 256, n=400), "v2": make_tiny_index(root / "v2.index", 768, n=400)}

    up_hubert = HubertModelWithFinalProj.from_pretrained(str(hub_dir), local_files_only=True).eval().float()
    cfg = types.SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device="cpu")
    ours = RvcConverter(hub_pt, rmvpe=rmvpe, device="cpu", half=False, context_seconds=1.0)
    x = vocal(a.seconds)
    rows = []
    for i, (version, f0, sr, with_index, s) in enumerate(VARIANTS):
        pth = make_tiny_rvc(root / f"{version}_{int(f0)}_{sr}.pth", version=version, f0=f0, sr=sr, seed=i)
        net, tgt, if_f0, ver = _upstream_synth(models, pth)
        index = str(idx[version]) if with_index else ""
        net = _seeded_infer(net, a.seed)
        with torch.no_grad():
            up = Pipeline(tgt, cfg).pipeline(up_hubert, net, 0, x.astype(np.float64).copy(), [0, 0, 0],
                                             s["pitch_shift"], "rmvpe", index, s["index_rate"], if_f0, tgt, 0,
                                             s["rms_mix_rate"], ver, s["protect"])
        up = resample(up.astype(np.float32) / 32768.0, tgt, 16000)
        files = {"model": str(pth)} | ({"index": index} if index else {})
        params = ConversionParams(pitch_shift=s["pitch_shift"], model_files=files, engine_params={
            "index_rate": s["index_rate"], "protect": s["protect"], "rms_mix_rate": s["rms_mix_rate"],
            "f0_fill_unvoiced": True, "seed": a.seed, "f0_method": "rmvpe"})
        ctx = StageContext("infer", root)
        y = ours.convert(x, 16000, x, 16000, params, ctx)
        n = min(len(y), len(up)) - 800
        d = y[:n] - up[:n]
        snr = 10 * np.log10(np.sum(up[:n] ** 2) / max(np.sum(d ** 2), 1e-30))
        row = {"variant": f"{version} {'f0' if f0 else 'no-f0'} {sr // 1000}k{' +index' if with_index else ''}",
               "settings": s, "max_abs_diff": float(np.max(np.abs(d))), "snr_db": float(snr),
               "rms": float(np.sqrt(np.mean(up[:n] ** 2))), "len_ours": len(y), "len_upstream": len(up)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"\n### rvc converter vs RVC-Project's pipeline ({a.seconds:.0f} s vocal, CPU float32, seed {a.seed})\n")
    print("| variant | index_rate / protect / rms_mix / shift | max abs diff | SNR vs upstream | output RMS |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["settings"]
        print(f"| {r['variant']} | {s['index_rate']} / {s['protect']} / {s['rms_mix_rate']} / {s['pitch_shift']} | "
              f"{r['max_abs_diff']:.2e} | {r['snr_db']:.1f} dB | {r['rms']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
