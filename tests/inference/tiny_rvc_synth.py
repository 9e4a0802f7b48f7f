"""Build tiny random-weight RVC voice models in the real ``.pth`` format (for tests; offline).

The file is what RVC's export writes: ``{"weight": state dict (float16, weight-norm layers as
weight_g/weight_v, no enc_q), "config": [18 hyper-parameters], "info", "sr": "40k", "f0": 1|0,
"version": "v1"|"v2"}``, with the key names the reference synthesizers produce (the parity bench
loads the same files into RVC-Project's own classes with ``strict=True``).

    python -m tests.inference.tiny_rvc_synth /tmp/tiny.pth --version v2 --sr 40000
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from inference.engines.rvc._synth import RvcSynthesizer, SynthConfig, weight_normed_modules

# Upsampling per sample rate and version, as RVC's configs have them (hop = sr / 100).
UPSAMPLING = {
    ("v1", 32000): ([10, 4, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v2", 32000): ([10, 8, 2, 2], [20, 16, 4, 4]),
    ("v1", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v2", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v1", 48000): ([10, 6, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v2", 48000): ([12, 10, 2, 2], [24, 20, 4, 4]),
}
SR_NAMES = {32000: "32k", 40000: "40k", 48000: "48k"}


def rvc_config(*, version: str, sr: int, full: bool = False) -> list:
    """The ``config`` list: RVC's real sizes with ``full``, else tiny ones."""
    rates, kernels = UPSAMPLING[(version, sr)]
    if full:
        sizes = dict(inter=192, hidden=192, filt=768, heads=2, layers=6, up_ch=512, gin=256, spk=109)
    else:
        sizes = dict(inter=8, hidden=16, filt=32, heads=2, layers=2, up_ch=32 * 2 ** (len(rates) - 4), gin=8, spk=2)
    return [
        1025, 32, sizes["inter"], sizes["hidden"], sizes["filt"], sizes["heads"], sizes["layers"], 3, 0,
        "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]], rates, sizes["up_ch"], kernels,
        sizes["spk"], sizes["gin"], sr,
    ]


def random_state_dict(config: list, *, version: str, f0: bool, seed: int) -> dict[str, torch.Tensor]:
    """A float32 state dict in the checkpoint layout (weight_g/weight_v pairs) with random values.

    Weights ~ N(0, 1/fan_in) keep activations of the order of one through the depth; the flow's
    shift and the prior's log-scale layers are scaled down so the random prior stays moderate.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = SynthConfig.from_list(config)
    with torch.device("meta"):
        model = RvcSynthesizer(cfg, version=version, f0=f0, n_speakers=config[15])
    state: dict[str, torch.Tensor] = {}
    for key, meta in model.state_dict().items():
        shape = tuple(meta.shape)
        if key.endswith((".gamma",)):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith((".bias", ".beta")):
            value = 0.02 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and not key.startswith(("emb_g.", "enc_p.emb_pitch.")) and "emb_rel" not in key:
            fan_in = math.prod(shape[1:]) if "ups." not in key else shape[0] * shape[2] // 2
            value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            value = 0.3 * torch.randn(shape, generator=gen)
        if key.startswith("flow.") and ".post." in key:
            value = value * 0.1
        if key == "enc_p.proj.weight":
            value[config[2]:] *= 0.1  # the log-scale half
        state[key] = value
    for module in weight_normed_modules(model):
        v = state.pop(module + ".weight")
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        g = norm * (0.5 + torch.rand(norm.shape, generator=gen))
        state[module + ".weight_v"] = v
        state[module + ".weight_g"] = g
    return state


def write_rvc_file(path, *, config: list, version: str, f0: bool, seed: int = 0, info: str = "tiny random") -> Path:
    """Write an RVC ``.pth`` with random weights for ``config`` (float16, as RVC exports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(config, version=version, f0=f0, seed=seed)
    data = {
        "weight": {k: v.half() for k, v in state.items()},
        "config": config,
        "info": info,
        "sr": SR_NAMES.get(config[-1], config[-1]),
        "f0": int(f0),
        "version": version,
    }
    torch.save(data, path)
    return path


def make_tiny_rvc(path, *, version: str = "v2", f0: bool = True, sr: int = 40000, seed: int = 0) -> Path:
    """A tiny RVC voice model (~0.3 MB) in the real file format; builds in well under a second."""
    return write_rvc_file(path, config=rvc_config(version=version, sr=sr), version=version, f0=f0, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--version", default="v2", choices=["v1", "v2"])
    ap.add_argument("--sr", type=int, default=40000, choices=sorted(SR_NAMES))
    ap.add_argument("--no-f0", action="store_true")
    ap.add_argument("--full", action="store_true", help="RVC's real sizes (random weights)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = rvc_config(version=a.version, sr=a.sr, full=a.full)
    print(write_rvc_file(a.path, config=cfg, version=a.version, f0=not a.no_f0, seed=a.seed))


if __name__ == "__main__":
    main()
