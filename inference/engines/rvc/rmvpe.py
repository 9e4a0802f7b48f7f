"""RMVPE pitch tracker (``rmvpe.pt``) for RVC: our own implementation of the published model.

Front end as upstream: 16 kHz audio, STFT n_fft 1024 / hann 1024 / hop 160 (centred, reflect
padding), 128 HTK mel bins 30-8000 Hz (slaney-normalised filters), log of max(mel, 1e-5).
Network: a deep U-Net of residual conv blocks (average-pool 2x2 down, transposed conv up, skip
concatenation), a 3-channel conv, a bidirectional GRU and a linear layer to 360 pitch bins of
20 cents with a sigmoid. Decoding: the salience-weighted average of the cents within 4 bins of
the peak; frames whose peak salience is at most ``threshold`` are unvoiced (0 Hz).

Hyper-parameters (encoder depth, blocks per stage, channels, intermediate depth, GRU size and
layers) are read from the state dict's key names and shapes, so any model with upstream's key
layout loads, including tiny test models. Long inputs run in windows (with context on both
sides) so memory stays flat; inputs up to ``SINGLE_PASS_FRAMES`` frames run in one pass exactly
as upstream.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("inference.rvc.rmvpe")

SR = 16000
HOP = 160
N_FFT = 1024
N_MELS = 128
FMIN, FMAX = 30.0, 8000.0
#: cents (re 10 Hz) of bin 0; bins are 20 cents apart
CENTS_BIN0 = 1997.3794084376191
#: frames processed in one pass; longer inputs go in windows of CHUNK_FRAMES with MARGIN_FRAMES context
SINGLE_PASS_FRAMES = 3584
CHUNK_FRAMES = 3072
MARGIN_FRAMES = 256


class RmvpeError(ValueError):
    """An RMVPE file that is missing, malformed or not a state dict; the message names what."""


# --------------------------------------------------------------------------------------------
# Network (module names follow the checkpoint's keys)
# --------------------------------------------------------------------------------------------


class _ResConv(nn.Module):
    """Two 3x3 conv + batch-norm + ReLU, plus the input (1x1-projected when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        return self.conv(x) + (x if self.shortcut is None else self.shortcut(x))


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, n_blocks: int):
        super().__init__()
        self.conv = nn.ModuleList([_ResConv(cin, cout)] + [_ResConv(cout, cout) for _ in range(n_blocks - 1)])

    def forward(self, x):
        for block in self.conv:
            x = block(x)
        return x


class _UpStage(nn.Module):
    def __init__(self, cin: int, cout: int, n_blocks: int):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU())
        self.conv2 = nn.ModuleList([_ResConv(2 * cout, cout)] + [_ResConv(cout, cout) for _ in range(n_blocks - 1)])

    def forward(self, x, skip):
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class _Layers(nn.Module):
    def __init__(self, layers, bn: nn.Module | None = None):
        super().__init__()
        if bn is not None:
            self.bn = bn
        self.layers = nn.ModuleList(layers)


class _BiGru(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.gru(x)[0]


class RmvpeNet(nn.Module):
    """mel (B, 128, T) with T a multiple of 2**en_de_layers -> salience (B, T, n_classes)."""

    def __init__(self, *, n_blocks: int = 4, n_gru: int = 1, en_de_layers: int = 5, inter_layers: int = 4,
                 in_channels: int = 1, en_out_channels: int = 16, gru_hidden: int = 256,
                 n_classes: int = 360, n_mels: int = N_MELS):
        super().__init__()
        self.depth, self.n_classes = en_de_layers, n_classes
        enc, cin, cout = [], in_channels, en_out_channels
        for _ in range(en_de_layers):
            enc.append(_Stage(cin, cout, n_blocks))
            cin, cout = cout, cout * 2
        top = cin * 2
        inter = [_Stage(cin, top, n_blocks)] + [_Stage(top, top, n_blocks) for _ in range(inter_layers - 1)]
        dec, c = [], top
        for _ in range(en_de_layers):
            dec.append(_UpStage(c, c // 2, n_blocks))
            c //= 2
        self.unet = nn.Module()
        self.unet.encoder = _Layers(enc, bn=nn.BatchNorm2d(in_channels))
        self.unet.intermediate = _Layers(inter)
        self.unet.decoder = _Layers(dec)
        self.cnn = nn.Conv2d(en_out_channels, 3, 3, padding=1)
        if n_gru:
            self.fc = nn.Sequential(_BiGru(3 * n_mels, gru_hidden, n_gru), nn.Linear(2 * gru_hidden, n_classes),
                                    nn.Dropout(0.25), nn.Sigmoid())
        else:
            self.fc = nn.Sequential(nn.Linear(3 * n_mels, n_classes), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.unet.encoder.bn(mel.transpose(-1, -2).unsqueeze(1))  # (B, 1, T, mels)
        skips = []
        for stage in self.unet.encoder.layers:
            x = stage(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        for stage in self.unet.intermediate.layers:
            x = stage(x)
        for stage, skip in zip(self.unet.decoder.layers, reversed(skips)):
            x = stage(x, skip)
        x = self.cnn(x).transpose(1, 2).flatten(-2)  # (B, T, 3 * mels)
        return self.fc(x)


def _count(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def rmvpe_hparams(state: dict, name: str = "rmvpe.pt") -> dict:
    """Hyper-parameters of an RMVPE state dict, from its key names and shapes."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise RmvpeError(f"{name} has no '{key}' entry")
        return state[key]

    in_ch = int(need("unet.encoder.bn.weight").shape[0])
    depth = _count(state, "unet.encoder.layers.")
    if depth == 0:
        need("unet.encoder.layers.0.conv.0.conv.0.weight")
    n_blocks = _count(state, "unet.encoder.layers.0.conv.")
    base = int(need("unet.encoder.layers.0.conv.0.conv.0.weight").shape[0])
    inter = _count(state, "unet.intermediate.layers.")
    if inter == 0:
        need("unet.intermediate.layers.0.conv.0.conv.0.weight")
    dec = _count(state, "unet.decoder.layers.")
    if dec != depth:
        need(f"unet.decoder.layers.{depth - 1}.conv1.0.weight")
        raise RmvpeError(f"{name}: {depth} encoder stages but {dec} decoder stages")
    need("cnn.weight")
    n_gru = 0
    while f"fc.0.gru.weight_ih_l{n_gru}" in state:
        n_gru += 1
    if n_gru:
        hidden = int(need("fc.0.gru.weight_hh_l0").shape[1])
        n_in = int(state["fc.0.gru.weight_ih_l0"].shape[1])
        n_classes = int(need("fc.1.weight").shape[0])
    else:
        n_in = int(need("fc.0.weight").shape[1])
        hidden, n_classes = 0, int(state["fc.0.weight"].shape[0])
    if n_in != 3 * N_MELS:
        raise RmvpeError(f"{name}: the pitch head takes {n_in} inputs, expected {3 * N_MELS} "
                         f"(3 channels x {N_MELS} mel bins)")
    return {"n_blocks": n_blocks, "n_gru": n_gru, "en_de_layers": depth, "inter_layers": inter,
            "in_channels": in_ch, "en_out_channels": base, "gru_hidden": hidden or 256, "n_classes": n_classes}


def _read_state(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals, corrupt zip, not a torch file
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RmvpeError(f"{path.name} is not a loadable RMVPE state dict: {msg}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) and "cnn.weight" not in obj:
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise RmvpeError(f"{path.name} is not a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise RmvpeError(f"{path.name}: entry '{bad[0]}' is not a tensor")
    return obj


# --------------------------------------------------------------------------------------------
# Front end and decoding
# --------------------------------------------------------------------------------------------


def mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=True).astype(np.float32)


def decode_salience(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """(frames, bins) salience -> Hz per frame: weighted mean of the cents within 4 bins of the peak."""
    sal = np.asarray(salience, dtype=np.float32)
    if sal.ndim != 2:
        raise ValueError(f"salience must be (frames, bins), got shape {sal.shape}")
    if sal.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    n_bins = sal.shape[1]
    peak = sal.argmax(axis=1)
    padded = np.pad(sal, ((0, 0), (4, 4)))
    cents = np.pad(CENTS_BIN0 + 20.0 * np.arange(n_bins), (4, 4))
    idx = peak[:, None] + np.arange(9)[None, :]  # peak-4 .. peak+4 in padded coordinates
    w = np.take_along_axis(padded, idx, axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (w * cents[idx]).sum(axis=1) / w.sum(axis=1)
    voiced = (sal.max(axis=1) > threshold) & np.isfinite(c)
    f0 = np.zeros(sal.shape[0], dtype=np.float32)
    f0[voiced] = 10.0 * np.power(2.0, c[voiced] / 1200.0)
    return f0


class Rmvpe:
    """A loaded RMVPE model; :meth:`f0` tracks pitch at 100 frames/s."""

    def __init__(self, net: RmvpeNet, *, path: Path, device: str = "cpu", half: bool = False):
        self.path = path
        self.device = torch.device(device)
        self.half = bool(half and self.device.type == "cuda")
        self.dtype = torch.float16 if self.half else torch.float32
        self.net = net.to(self.device, self.dtype).eval()
        self.multiple = max(32, 2 ** net.depth)
        self._basis = torch.from_numpy(mel_basis()).to(self.device)
        self._window = torch.hann_window(N_FFT, device=self.device)

    def _log_mel(self, padded: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Log-mel frames [first, last) from the reflect-padded audio (1, 128, last-first)."""
        seg = padded[first * HOP:(last - 1) * HOP + N_FFT]
        spec = torch.stft(seg.unsqueeze(0), N_FFT, hop_length=HOP, win_length=N_FFT, window=self._window,
                          center=False, return_complex=True)
        mel = torch.matmul(self._basis, spec.abs())
        return torch.log(torch.clamp(mel, min=1e-5))

    def _salience(self, mel: torch.Tensor) -> torch.Tensor:
        n = mel.shape[-1]
        pad = -n % self.multiple
        if pad:
            mel = F.pad(mel, (0, pad))
        return self.net(mel.to(self.dtype))[:, :n].float()

    def salience(self, wav16k: np.ndarray) -> np.ndarray:
        """(frames, bins) salience; frames = len // 160 + 1 (centred frames as upstream)."""
        wav = np.asarray(wav16k, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            return np.zeros((0, self.net.n_classes), np.float32)
        padded = torch.from_numpy(np.pad(wav, (N_FFT // 2, N_FFT // 2), mode="reflect")).to(self.device)
        total = wav.size // HOP + 1
        out = []
        with torch.inference_mode():
            if total <= SINGLE_PASS_FRAMES:
                out.append(self._salience(self._log_mel(padded, 0, total))[0].cpu())
            else:
                for a in range(0, total, CHUNK_FRAMES):
                    b = min(total, a + CHUNK_FRAMES)
                    lo, hi = max(0, a - MARGIN_FRAMES), min(total, b + MARGIN_FRAMES)
                    sal = self._salience(self._log_mel(padded, lo, hi))[0]
                    out.append(sal[a - lo:b - lo].cpu())
        return torch.cat(out).numpy()

    def f0(self, wav16k: np.ndarray, threshold: float = 0.03) -> np.ndarray:
        """Hz per 10 ms frame (hop 160 at 16 kHz), 0 where unvoiced; len(wav) // 160 + 1 frames."""
        return decode_salience(self.salience(wav16k), threshold)


def load_rmvpe(path, device: str = "cpu", half: bool = False) -> Rmvpe:
    """``rmvpe.pt`` (a plain state dict, loaded weights-only) -> :class:`Rmvpe`."""
    p = Path(path)
    if not p.is_file():
        raise RmvpeError(f"RMVPE model {p} does not exist")
    state = _read_state(p)
    hp = rmvpe_hparams(state, p.name)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        net = RmvpeNet(**hp)
    want = net.state_dict()
    missing = [k for k in want if k not in state]
    if missing:
        raise RmvpeError(f"{p.name} has no '{missing[0]}' entry"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in want]
    if unexpected:
        raise RmvpeError(f"{p.name} has an entry '{unexpected[0]}' that an RMVPE model does not have")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise RmvpeError(f"{p.name}: '{k}' has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    net.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()}, assign=True)
    log.info("rmvpe %s (%s) on %s%s", p.name, hp, device, " half" if half else "")
    return Rmvpe(net, path=p, device=device, half=half)


__all__ = ["Rmvpe", "RmvpeError", "RmvpeNet", "decode_salience", "load_rmvpe", "rmvpe_hparams"]
