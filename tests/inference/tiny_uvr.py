"""Tiny random-weight UVR-family models in their real file formats, for the ``uvr`` separator.

Each builder writes into a model folder what a user would put there, and the engine loads it
through python-audio-separator's own architecture classes:

- :func:`build_mdx`: a MDX-Net ``.onnx`` (a small conv net over the ``[batch, 4, dim_f, dim_t]``
  spectrogram the library feeds MDX models, input named ``input``) plus its entry in
  ``mdx_model_data.json``, keyed by the MD5 the library computes (:func:`uvr_hash`).
- :func:`build_vr`: a VR 5.1 ``.pth`` (the library's ``nets_new.CascadedNet`` state dict; its
  width comes from ``nout``/``nout_lstm`` in the model data, so it can be made small) plus its
  ``vr_model_data.json`` entry (``vr_model_param`` names one of the library's band layouts).
- :func:`build_roformer`: a BS-Roformer or MelBand-Roformer ``.ckpt`` (state dict of the
  library's own classes) with a YAML config of tiny dimensions beside it.

Builders add to the JSON files already in the folder, so several models share one folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

# The library hashes the last 10,000 KiB of a model file (or the whole file when smaller).
_HASH_BYTES = 10000 * 1024


def uvr_hash(path) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size >= _HASH_BYTES:
            f.seek(size - _HASH_BYTES)
        return hashlib.md5(f.read()).hexdigest()


def add_model_data(folder, json_name: str, model_path, entry: dict) -> str:
    """Add ``entry`` under ``model_path``'s hash to ``folder/json_name``; returns the hash."""
    p = Path(folder) / json_name
    data = json.loads(p.read_text()) if p.exists() else {}
    h = uvr_hash(model_path)
    data[h] = entry
    p.write_text(json.dumps(data, indent=1))
    return h


def _torch():
    import torch
    return torch


def build_mdx(folder, name: str = "tiny_mdx.onnx", *, seed: int = 0, dim_f: int = 128, dim_t_pow: int = 5,
              n_fft: int = 2048, primary_stem: str = "Vocals", compensate: float = 1.0,
              channels: int = 8, data: bool = True) -> Path:
    """A MDX-Net ONNX file: spectrogram ``[B, 4, dim_f, dim_t]`` in, the same shape out."""
    torch = _torch()
    from torch import nn

    class TinyMDX(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, channels, 3, padding=1)
            self.b = nn.Conv2d(channels, 4, 3, padding=1)

        def forward(self, x):
            return x * torch.sigmoid(self.b(torch.relu(self.a(x))))

    torch.manual_seed(seed)
    net = TinyMDX().eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    dim_t = 2 ** dim_t_pow
    x = torch.randn(1, 4, dim_f, dim_t)
    torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    if data:
        add_model_data(folder, "mdx_model_data.json", path, {
            "compensate": compensate, "mdx_dim_f_set": dim_f, "mdx_dim_t_set": dim_t_pow,
            "mdx_n_fft_scale_set": n_fft, "primary_stem": primary_stem})
    return path


def build_vr(folder, name: str = "tiny_vr.pth", *, seed: int = 0, param: str = "1band_sr44100_hl512",
             nout: int = 8, nout_lstm: int = 8, primary_stem: str = "Vocals", is_karaoke: bool = False,
             data: bool = True, extra: dict | None = None) -> Path:
    """A VR 5.1 ``.pth``: the library's CascadedNet state dict with a small width."""
    torch = _torch()
    from inference._compat import import_audio_separator
    import_audio_separator()
    from audio_separator.separator.uvr_lib_v5.vr_network import nets_new
    from audio_separator.separator.uvr_lib_v5.vr_network.model_param_init import ModelParameters
    import audio_separator.separator as pkg

    params_dir = Path(pkg.__file__).parent / "uvr_lib_v5" / "vr_network" / "modelparams"
    bins = ModelParameters(str(params_dir / f"{param}.json")).param["bins"]
    torch.manual_seed(seed)
    net = nets_new.CascadedNet(bins * 2, 0, nout=nout, nout_lstm=nout_lstm)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(net.state_dict(), path)
    if data:
        entry = {"vr_model_param": param, "primary_stem": primary_stem, "nout": nout, "nout_lstm": nout_lstm,
                 "is_karaoke": is_karaoke, "is_bv_model": False, "is_bv_model_rebalanced": 0.0}
        entry.update(extra or {})
        add_model_data(folder, "vr_model_data.json", path, entry)
    return path


def roformer_config(kind: str = "bs", *, instruments=("vocals", "other"), target: str | None = "vocals",
                    n_fft: int = 256, hop: int = 64, dim: int = 16, dim_t: int = 64) -> dict:
    bins = n_fft // 2 + 1
    model = {"dim": dim, "depth": 1, "stereo": True, "num_stems": 1, "time_transformer_depth": 1,
             "freq_transformer_depth": 1, "dim_head": 8, "heads": 2, "attn_dropout": 0.0, "ff_dropout": 0.0,
             "flash_attn": False, "stft_n_fft": n_fft, "stft_hop_length": hop, "stft_win_length": n_fft,
             "stft_normalized": False, "mask_estimator_depth": 1}
    if kind == "bs":
        half = bins // 2
        model["freqs_per_bands"] = (half, bins - half)
        model["linear_transformer_depth"] = 0
    else:
        model["num_bands"] = 8
        model["sample_rate"] = 44100
    training = {"instruments": list(instruments), "batch_size": 1}
    if target:
        training["target_instrument"] = target
    return {"audio": {"chunk_size": hop * (dim_t - 1), "dim_f": bins - 1, "dim_t": dim_t, "hop_length": hop,
                      "n_fft": n_fft, "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.0},
            "model": model, "training": training,
            "inference": {"batch_size": 1, "dim_t": dim_t, "num_overlap": 2}}


def write_yaml(path, config: dict) -> Path:
    """YAML the way the published configs are written (tuples as ``!!python/tuple``)."""
    import yaml

    class Dumper(yaml.Dumper):
        pass

    Dumper.add_representer(tuple, lambda d, v: d.represent_sequence("tag:yaml.org,2002:python/tuple", list(v)))
    Path(path).write_text(yaml.dump(config, Dumper=Dumper, sort_keys=False))
    return Path(path)


def build_roformer(folder, name: str = "tiny_bs_roformer.ckpt", *, kind: str = "bs", seed: int = 0,
                   config: dict | None = None, yaml_name: str | None = None, write_config: bool = True,
                   **config_kw) -> Path:
    """A Roformer ``.ckpt`` (plain state dict) and its YAML (``<stem>.yaml`` unless ``yaml_name``)."""
    torch = _torch()
    from inference._compat import import_audio_separator
    import_audio_separator()
    cfg = config or roformer_config(kind, **config_kw)
    from audio_separator.separator.roformer.roformer_loader import RoformerLoader
    torch.manual_seed(seed)
    # The library's own factory builds the net from the config (no checkpoint at this path yet).
    result = RoformerLoader().load_model(model_path=str(Path(folder) / "-absent-"), config=cfg, device="cpu")
    if not result.success:
        raise RuntimeError(result.error_message)
    net = result.model
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(net.state_dict(), path)
    if write_config:
        write_yaml(folder / (yaml_name or (path.stem + ".yaml")), cfg)
    return path


def song(seconds: float = 2.5, sr: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A little stereo "song": a sung-like harmonic tone panned centre over noise and a bass line."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 220 * 2 ** (np.floor(t * 2) % 5 / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    bass = 0.2 * np.sin(2 * np.pi * 55 * t)
    noise = rng.standard_normal((2, t.size)) * 0.03
    x = np.stack([voice + bass * 0.8, voice + bass * 1.2]) + noise
    x = x.astype(np.float32)
    return x if channels == 2 else x.mean(axis=0, keepdims=True)
