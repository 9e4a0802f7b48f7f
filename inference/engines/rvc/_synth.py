"""The inference half of RVC's synthesizers, written for this project (no upstream code).

Four models exist in the wild: v1 (256-dim content features) and v2 (768-dim), each with pitch
guidance (an NSF HiFi-GAN decoder driven by a harmonic sine source) or without (a plain HiFi-GAN
decoder). All share a prior encoder (a transformer with relative-position attention over the
content features, plus a pitch embedding when pitch-guided), a speaker embedding and a reversible
residual-coupling flow made of WaveNet layers. Only the inference path is here: no posterior
encoder, no training forward, no dropout.

Attribute names follow the checkpoints' state-dict keys (``enc_p.encoder.attn_layers.0.conv_q``,
``dec.ups.1``, ``flow.flows.2.enc.in_layers.0`` ...) so a user's ``.pth`` loads with
``load_state_dict(strict=True)`` once its weight-norm pairs are folded (see ``checkpoint.py``).

Random numbers are drawn exactly where, in the order and with the shapes the reference inference
draws them (prior noise ``randn`` of the prior's shape; then the sine source's initial-phase
``rand`` of shape (batch, harmonics) and its noise ``randn`` of shape (batch, samples, harmonics)),
so with the same ``torch.manual_seed`` the outputs agree with the reference implementation.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

LRELU_SLOPE = 0.1
DEFAULT_NOISE_SCALE = 0.66666  # the reference inference scales the prior's noise by this
WINDOW = 10  # relative-attention window of RVC's prior encoder
FLOW_KERNEL, FLOW_DILATION, FLOW_WN_LAYERS, FLOW_STEPS = 5, 1, 3, 4


@dataclass(frozen=True)
class SynthConfig:
    """The 18 hyper-parameters of an RVC checkpoint's ``config`` list, in the file's order."""

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple
    resblock_dilation_sizes: tuple
    upsample_rates: tuple
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple
    spk_embed_dim: int
    gin_channels: int
    sr: int

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_list(cls, values: Sequence) -> "SynthConfig":
        """From a checkpoint's ``config`` list (nested lists become tuples)."""

        def deep(v):
            return tuple(deep(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(*deep(list(values)))


def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of a (batch, channels, time) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.gamma, self.beta, self.eps)
        return y.transpose(1, 2)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative-position keys and values.

    One table of 2*WINDOW+1 embeddings (shared by all heads) for offsets -WINDOW..WINDOW; offsets
    farther away contribute nothing. Implemented with gathers over the band rather than the
    pad-and-reshape trick, which gives the same sums.
    """

    def __init__(self, channels: int, n_heads: int, window: int = WINDOW):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"hidden_channels {channels} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t) -> (b, h, t, d)
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.head_dim, t).transpose(2, 3)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        w = self.window
        q = self._heads(self.conv_q(x)) / math.sqrt(self.head_dim)
        k = self._heads(self.conv_k(x))
        v = self._heads(self.conv_v(x))

        pos = torch.arange(t, device=x.device)
        # (t, t): column j of row i holds the table index of offset j - i.
        rel_index = pos[None, :] - pos[:, None] + w
        in_band = (rel_index >= 0) & (rel_index <= 2 * w)
        rel_index = rel_index.clamp(0, 2 * w)

        scores = torch.matmul(q, k.transpose(-2, -1))  # (b, h, t, t)
        rel_logits = torch.matmul(q, self.emb_rel_k.transpose(1, 2).unsqueeze(0))  # (b, h, t, 2w+1)
        local = torch.gather(rel_logits, 3, rel_index.expand(b, self.n_heads, t, t))
        scores = scores + local.masked_fill(~in_band, 0.0)
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = torch.softmax(scores, dim=-1)

        out = torch.matmul(p, v)
        # (t, 2w+1): the key position at each offset from each query, and whether it exists.
        key_at = pos[:, None] + torch.arange(-w, w + 1, device=x.device)[None, :]
        exists = (key_at >= 0) & (key_at < t)
        p_rel = torch.gather(p, 3, key_at.clamp(0, t - 1).expand(b, self.n_heads, t, 2 * w + 1))
        p_rel = p_rel.masked_fill(~exists, 0.0)
        out = out + torch.matmul(p_rel, self.emb_rel_v.unsqueeze(0))
        out = out.transpose(2, 3).reshape(b, c, t)
        return self.conv_o(out)


class FeedForward(nn.Module):
    """Two 'same'-padded convolutions with a ReLU between, masked before each."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * mask, self.pad)))
        return self.conv_2(F.pad(x * mask, self.pad)) * mask


class TransformerEncoder(nn.Module):
    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int):
        super().__init__()
        self.attn_layers = nn.ModuleList(RelativeSelfAttention(hidden, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(hidden, filter_channels, kernel_size) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # (b, 1, t, t)
        x = x * mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2
        ):
            x = norm1(x + attn(x, attn_mask))
            x = norm2(x + ffn(x, mask))
        return x * mask


class PriorEncoder(nn.Module):
    """Content features (+ coarse pitch) -> mean and log-scale of the prior, per frame."""

    def __init__(self, feature_dim: int, cfg: SynthConfig, f0: bool):
        super().__init__()
        self.hidden = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.emb_phone = nn.Linear(feature_dim, cfg.hidden_channels)
        if f0:
            self.emb_pitch = nn.Embedding(256, cfg.hidden_channels)
        self.encoder = TransformerEncoder(
            cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size
        )
        self.proj = nn.Conv1d(cfg.hidden_channels, 2 * cfg.inter_channels, 1)

    def forward(self, phone, pitch, lengths, skip_head: int = 0):
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden), LRELU_SLOPE).transpose(1, 2)
        t = x.shape[2]
        mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * mask, mask)
        if skip_head:
            x, mask = x[:, :, skip_head:], mask[:, :, skip_head:]
        stats = self.proj(x) * mask
        m, logs = stats.split(self.out_channels, dim=1)
        return m, logs, mask


class WaveNet(nn.Module):
    """Gated dilated convolutions with residual and skip outputs, conditioned on the speaker."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        if gin_channels:
            self.cond_layer = nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            d = dilation_rate**i
            self.in_layers.append(
                nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            )
            self.res_skip_layers.append(nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1))

    def forward(self, x, mask, g=None):
        out = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None
        h = self.hidden
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = in_layer(x)
            if cond is not None:
                a = a + cond[:, 2 * h * i : 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = res_skip(acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


class MeanOnlyCoupling(nn.Module):
    """Affine coupling with a unit scale: the second half is shifted by a function of the first."""

    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WaveNet(hidden, FLOW_KERNEL, FLOW_DILATION, FLOW_WN_LAYERS, gin_channels)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def reverse(self, x, mask, g):
        x0, x1 = x.split(self.half, dim=1)
        h = self.enc(self.pre(x0) * mask, mask, g)
        shift = self.post(h) * mask
        return torch.cat([x0, (x1 - shift) * mask], dim=1)


class ChannelFlip(nn.Module):
    def reverse(self, x, mask, g):
        return torch.flip(x, [1])


class CouplingFlow(nn.Module):
    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(FLOW_STEPS):
            layers += [MeanOnlyCoupling(channels, hidden, gin_channels), ChannelFlip()]
        self.flows = nn.ModuleList(layers)

    def reverse(self, z, mask, g):
        for layer in reversed(self.flows):
            z = layer.reverse(z, mask, g)
        return z


class ResBlock1(nn.Module):
    def __init__(self, ch: int, k: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=_same_padding(k, d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, padding=_same_padding(k)) for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    def __init__(self, ch: int, k: int, dilations: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=_same_padding(k, d)) for d in dilations)

    def forward(self, x):
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HarmonicSource(nn.Module):
    """NSF excitation: a sine at f0 (noise where unvoiced) mixed by one linear unit and tanh.

    Always computed in float32 (phase accumulation over hundreds of thousands of samples loses
    too much in half precision); the result is cast to the decoder's dtype by the caller.
    """

    SINE_AMP, NOISE_STD = 0.1, 0.003

    def __init__(self, sr: int):
        super().__init__()
        self.sr = sr
        self.l_linear = nn.Linear(1, 1)  # one harmonic (the fundamental) -> one excitation

    def forward(self, f0: torch.Tensor, upp: int) -> torch.Tensor:
        """f0: (batch, frames) Hz, 0 = unvoiced -> excitation (batch, 1, frames * upp) float32."""
        f0 = f0.float().unsqueeze(-1)  # (b, t, 1)
        b = f0.shape[0]
        # Per-frame phase increment in cycles; the reference adds a random initial phase here
        # for the overtones only (the fundamental starts at 0), but draws it for all of them.
        step = torch.remainder(f0 / self.sr, 1.0)
        initial = torch.rand(b, 1, device=f0.device)
        initial[:, 0] = 0.0
        step[:, 0, :] = step[:, 0, :] + initial
        # Where the frame-rate phase, linearly interpolated to the sample rate, wraps past a whole
        # cycle, subtract one cycle from the sample-rate running sum: keeps the sum small.
        frame_phase = torch.cumsum(step, dim=1) * upp
        frame_phase = F.interpolate(
            frame_phase.transpose(1, 2), scale_factor=float(upp), mode="linear", align_corners=True
        ).transpose(1, 2)
        step_up = F.interpolate(step.transpose(1, 2), scale_factor=float(upp), mode="nearest").transpose(1, 2)
        frame_phase = torch.remainder(frame_phase, 1.0)
        wraps = torch.zeros_like(step_up)
        wraps[:, 1:, :] = -((frame_phase[:, 1:, :] - frame_phase[:, :-1, :]) < 0).to(step_up.dtype)
        sine = torch.sin(torch.cumsum(step_up + wraps, dim=1) * (2 * math.pi)) * self.SINE_AMP
        voiced = (f0 > 0).to(torch.float32)
        voiced = F.interpolate(voiced.transpose(1, 2), scale_factor=float(upp), mode="nearest").transpose(1, 2)
        noise_amp = voiced * self.NOISE_STD + (1 - voiced) * (self.SINE_AMP / 3)
        excitation = sine * voiced + noise_amp * torch.randn_like(sine)
        merged = torch.tanh(F.linear(excitation, self.l_linear.weight.float(), self.l_linear.bias.float()))
        return merged.transpose(1, 2)


class HifiGanDecoder(nn.Module):
    """HiFi-GAN generator; with ``nsf`` the harmonic source is added after each upsampling."""

    def __init__(self, cfg: SynthConfig, nsf: bool):
        super().__init__()
        self.nsf = nsf
        self.upp = cfg.hop
        self.n_kernels = len(cfg.resblock_kernel_sizes)
        ch0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch0, 7, padding=3)
        if nsf:
            self.m_source = HarmonicSource(cfg.sr)
            self.noise_convs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = ResBlock1 if str(cfg.resblock) == "1" else ResBlock2
        rates = list(cfg.upsample_rates)
        ch = ch0
        for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes)):
            ch = ch0 // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(ch0 // (2**i), ch, k, u, padding=(k - u) // 2))
            if nsf:
                rest = math.prod(rates[i + 1 :])
                if i + 1 < len(rates):
                    self.noise_convs.append(nn.Conv1d(1, ch, rest * 2, stride=rest, padding=rest // 2))
                else:
                    self.noise_convs.append(nn.Conv1d(1, ch, 1))
            for k_rb, d_rb in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(block(ch, k_rb, d_rb))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=False)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, ch0, 1)

    def forward(self, x, g=None, f0=None):
        source = None
        if self.nsf:
            source = self.m_source(f0, self.upp).to(x.dtype)
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if source is not None:
                x = x + self.noise_convs[i](source)
            blocks = self.resblocks[i * self.n_kernels : (i + 1) * self.n_kernels]
            acc = blocks[0](x)
            for rb in blocks[1:]:
                acc = acc + rb(x)
            x = acc / self.n_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope here, as trained
        return torch.tanh(x)


class RvcSynthesizer(nn.Module):
    """Prior encoder + speaker embedding + reverse flow + (NSF) HiFi-GAN: features -> waveform."""

    def __init__(self, cfg: SynthConfig, *, version: str, f0: bool, n_speakers: int):
        super().__init__()
        self.cfg = cfg
        self.version = version
        self.f0 = bool(f0)
        self.sr = int(cfg.sr)
        self.feature_dim = 768 if version == "v2" else 256
        self.enc_p = PriorEncoder(self.feature_dim, cfg, self.f0)
        self.dec = HifiGanDecoder(cfg, nsf=self.f0)
        self.flow = CouplingFlow(cfg.inter_channels, cfg.hidden_channels, cfg.gin_channels)
        self.emb_g = nn.Embedding(n_speakers, cfg.gin_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.emb_g.weight.dtype

    @torch.inference_mode()
    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        nsff0: torch.Tensor | None = None,
        sid: torch.Tensor | None = None,
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        skip_head: int | None = None,
        return_length: int | None = None,
    ) -> torch.Tensor:
        """(1, T, feature_dim) features at 100 frames/s -> (1, 1, T * sr // 100) audio.

        ``pitch`` (1, T) long coarse pitch 1..255 and ``nsff0`` (1, T) float Hz are required for
        pitch-guided models and ignored otherwise. ``skip_head``/``return_length`` (frames)
        synthesize only frames [skip_head, skip_head + return_length) while the encoder and the
        flow still see up to 24 frames of left context, as the reference's streaming path does.
        """
        device = self.emb_g.weight.device
        if sid is None:
            sid = torch.zeros(1, dtype=torch.long, device=device)
        phone = phone.to(device=device, dtype=self.dtype)
        phone_lengths = phone_lengths.to(device)
        if self.f0:
            if pitch is None or nsff0 is None:
                raise ValueError("this RVC model is pitch-guided: pitch and nsff0 are required")
            pitch = pitch.to(device=device, dtype=torch.long)
            nsff0 = nsff0.to(device=device, dtype=torch.float32)
        else:
            pitch = nsff0 = None
        g = self.emb_g(sid.to(device)).unsqueeze(-1)
        if skip_head is not None and return_length is not None:
            head, length = int(skip_head), int(return_length)
            flow_head = max(head - 24, 0)
            dec_head = head - flow_head
            m, logs, mask = self.enc_p(phone, pitch, phone_lengths, flow_head)
            z_p = (m + torch.exp(logs) * torch.randn_like(m) * noise_scale) * mask
            z = self.flow.reverse(z_p, mask, g)
            z = z[:, :, dec_head : dec_head + length]
            mask = mask[:, :, dec_head : dec_head + length]
            if nsff0 is not None:
                nsff0 = nsff0[:, head : head + length]
        else:
            m, logs, mask = self.enc_p(phone, pitch, phone_lengths)
            z_p = (m + torch.exp(logs) * torch.randn_like(m) * noise_scale) * mask
            z = self.flow.reverse(z_p, mask, g)
        return self.dec(z * mask, g=g, f0=nsff0)


# Modules stored with weight normalisation in RVC checkpoints (``weight_g``/``weight_v`` pairs).
_WEIGHT_NORM_MODULES = re.compile(
    r"^(dec\.ups\.\d+"
    r"|dec\.resblocks\.\d+\.convs[12]?\.\d+"
    r"|flow\.flows\.\d+\.enc\.(in_layers|res_skip_layers)\.\d+"
    r"|flow\.flows\.\d+\.enc\.cond_layer)$"
)


def weight_normed_modules(model: nn.Module) -> Iterator[str]:
    """Names of the modules whose weights RVC checkpoints store as ``weight_g``/``weight_v``."""
    for name, _ in model.named_modules():
        if _WEIGHT_NORM_MODULES.match(name):
            yield name
