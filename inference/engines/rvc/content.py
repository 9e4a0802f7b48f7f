"""Content encoder for RVC: HuBERT-base / ContentVec features from 16 kHz audio.

Two file formats are read, neither needs fairseq:

- a fairseq-format checkpoint (the community's ``hubert_base.pt``): a pickled dict with
  ``model`` (the state dict) and ``args`` (an ``argparse.Namespace``) and/or ``cfg`` (a dict,
  sometimes holding omegaconf containers or enum members). It is read with
  ``torch.load(weights_only=True)`` plus an explicit allow-list in which those config classes
  are replaced by inert stand-ins (nothing of fairseq or omegaconf is imported or run); any
  other class is refused with a message naming it. The network is our own implementation of
  fairseq's HuBERT in eval mode (:class:`FairseqHubert`).
- a transformers folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
  run by ``transformers.HubertModel``, with the ``final_proj`` layer RVC's converted
  checkpoints carry (needed for v1 features).

``ContentEncoder.extract(wav16k, version)`` returns what RVC feeds its synthesizer: v1 = the
output of transformer layer 9 through ``final_proj`` (256-dim), v2 = the output of layer 12
(768-dim); layers clamp to the model's depth. No input normalisation and no masking, as
fairseq's ``extract_features(output_layer=N)`` in eval mode with an all-False padding mask.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("inference.rvc.content")

#: transformer layer whose output RVC uses, per feature version
VERSION_LAYER = {"v1": 9, "v2": 12}


class ContentEncoderError(ValueError):
    """A content-encoder file that is missing, malformed or not allowed; the message names what."""


# --------------------------------------------------------------------------------------------
# Restricted loading of fairseq checkpoints
# --------------------------------------------------------------------------------------------


from ...safe_pickle import plain as _plain  # noqa: E402
from ...safe_pickle import restricted_torch_load as _restricted_torch_load  # noqa: E402


def restricted_torch_load(path: Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with the config stand-ins fairseq files need (see
    :mod:`inference.safe_pickle`); anything else refused with :class:`ContentEncoderError`."""
    return _restricted_torch_load(path, what, mmap, error=ContentEncoderError)


def _literal_layers(text: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` ("[(512,10,5)] + [(512,3,2)] * 4 + ...") safely."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError("unsupported expression")

    try:
        layers = ev(ast.parse(str(text), mode="eval"))
        out = [tuple(int(v) for v in t) for t in layers]
        if not out or any(len(t) != 3 for t in out):
            raise ValueError("not (dim, kernel, stride) triples")
        return out
    except (ValueError, TypeError, SyntaxError) as exc:
        raise ContentEncoderError(f"conv_feature_layers {text!r} is not a list of (dim, kernel, "
                                  f"stride): {exc}") from None


# --------------------------------------------------------------------------------------------
# Our fairseq HuBERT (eval mode)
# --------------------------------------------------------------------------------------------


class _Layer(nn.Module):
    def __init__(self, dim: int, ffn: int, heads: int, norm_first: bool):
        super().__init__()
        self.heads, self.norm_first = heads, norm_first
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                           split(self.v_proj(x)))
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self._attend(self.attn_norm(x))
            return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))
        x = self.attn_norm(x + self._attend(x))
        return self.ffn_norm(x + self.fc2(F.gelu(self.fc1(x))))


class FairseqHubert(nn.Module):
    """HuBERT / wav2vec 2.0 encoder as fairseq computes it in eval mode (no masking, no dropout)."""

    def __init__(self, *, conv_layers: list[tuple[int, int, int]], extractor_mode: str,
                 conv_bias: bool, dim: int, ffn: int, layers: int, heads: int, conv_pos: int,
                 conv_pos_groups: int, layer_norm_first: bool, has_proj: bool,
                 final_proj_dim: int | None):
        super().__init__()
        self.extractor_mode, self.layer_norm_first = extractor_mode, layer_norm_first
        self.strides = [s for _, _, s in conv_layers]
        self.convs = nn.ModuleList()
        self.conv_norms = nn.ModuleList()
        c_in = 1
        for i, (c, k, s) in enumerate(conv_layers):
            self.convs.append(nn.Conv1d(c_in, c, k, stride=s, bias=conv_bias))
            if extractor_mode == "layer_norm":
                self.conv_norms.append(nn.LayerNorm(c))
            elif i == 0:
                self.conv_norms.append(nn.GroupNorm(c, c))
            else:
                self.conv_norms.append(nn.Identity())
            c_in = c
        self.feat_norm = nn.LayerNorm(c_in)
        self.proj = nn.Linear(c_in, dim) if has_proj else None
        self.pos_conv = nn.Conv1d(dim, dim, conv_pos, padding=conv_pos // 2, groups=conv_pos_groups)
        self.enc_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(_Layer(dim, ffn, heads, layer_norm_first) for _ in range(layers))
        self.final_proj = nn.Linear(dim, final_proj_dim) if final_proj_dim else None

    def forward(self, wav: torch.Tensor, n_layers: int) -> torch.Tensor:
        """wav (B, n) -> output of transformer layer ``n_layers`` (B, frames, dim)."""
        x = wav.unsqueeze(1)
        for conv, norm in zip(self.convs, self.conv_norms):
            x = conv(x)
            if isinstance(norm, nn.GroupNorm):  # fairseq's Fp32GroupNorm
                x = F.group_norm(x.float(), norm.num_groups, norm.weight.float(),
                                 norm.bias.float(), norm.eps).to(x.dtype)
            elif isinstance(norm, nn.LayerNorm):  # Fp32LayerNorm over channels
                x = F.layer_norm(x.transpose(1, 2).float(), norm.normalized_shape,
                                 norm.weight.float(), norm.bias.float(), norm.eps
                                 ).to(x.dtype).transpose(1, 2)
            x = F.gelu(x)
        x = self.feat_norm(x.transpose(1, 2))
        if self.proj is not None:
            x = self.proj(x)
        pos = self.pos_conv(x.transpose(1, 2))
        if self.pos_conv.kernel_size[0] % 2 == 0:  # fairseq's SamePad
            pos = pos[:, :, :-1]
        x = x + F.gelu(pos).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.enc_norm(x)
        for layer in self.layers[:n_layers]:
            x = layer(x)
        return x


def _fairseq_key_map(model: FairseqHubert, state_keys: set[str]) -> dict[str, str]:
    """Our parameter name -> the fairseq checkpoint key it comes from."""
    m: dict[str, str] = {}
    for i, conv in enumerate(model.convs):
        m[f"convs.{i}.weight"] = f"feature_extractor.conv_layers.{i}.0.weight"
        if conv.bias is not None:
            m[f"convs.{i}.bias"] = f"feature_extractor.conv_layers.{i}.0.bias"
        norm = model.conv_norms[i]
        if isinstance(norm, nn.GroupNorm):
            for p in ("weight", "bias"):
                m[f"conv_norms.{i}.{p}"] = f"feature_extractor.conv_layers.{i}.2.{p}"
        elif isinstance(norm, nn.LayerNorm):
            for p in ("weight", "bias"):
                m[f"conv_norms.{i}.{p}"] = f"feature_extractor.conv_layers.{i}.2.1.{p}"
    for p in ("weight", "bias"):
        m[f"feat_norm.{p}"] = f"layer_norm.{p}"
        if model.proj is not None:
            m[f"proj.{p}"] = f"post_extract_proj.{p}"
        m[f"enc_norm.{p}"] = f"encoder.layer_norm.{p}"
        if model.final_proj is not None:
            m[f"final_proj.{p}"] = f"final_proj.{p}"
    m["pos_conv.bias"] = "encoder.pos_conv.0.bias"
    names = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
             "out_proj": "self_attn.out_proj", "attn_norm": "self_attn_layer_norm",
             "ffn_norm": "final_layer_norm", "fc1": "fc1", "fc2": "fc2"}
    for i in range(len(model.layers)):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                m[f"layers.{i}.{ours}.{p}"] = f"encoder.layers.{i}.{theirs}.{p}"
    return m


def _pos_conv_weight(state: dict, name: str) -> torch.Tensor:
    """The positional conv's weight, folding fairseq's weight norm (dim=2) when present."""
    pre = "encoder.pos_conv.0."
    for g_key, v_key in ((pre + "weight_g", pre + "weight_v"),
                         (pre + "parametrizations.weight.original0",
                          pre + "parametrizations.weight.original1")):
        if g_key in state and v_key in state:
            g, v = state[g_key].float(), state[v_key].float()
            norm = v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
            return v * (g / norm)
    if pre + "weight" in state:
        return state[pre + "weight"].float()
    raise ContentEncoderError(f"{name} has no '{pre}weight_g'/'{pre}weight_v' entries "
                              "(the positional convolution)")


def _layer_count(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _fairseq_hparams(ckpt: dict, state: dict, name: str) -> dict:
    cfg: dict = {}
    args = _plain(ckpt.get("args"))
    if isinstance(args, dict):
        cfg.update(args)
    cfg_all = _plain(ckpt.get("cfg"))
    if isinstance(cfg_all, dict) and isinstance(cfg_all.get("model"), dict):
        cfg.update({k: v for k, v in cfg_all["model"].items() if v is not None})

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ContentEncoderError(f"{name} has no '{key}' entry in its model state dict")
        return state[key]

    n_conv = _layer_count(state, "feature_extractor.conv_layers.")
    if n_conv == 0:
        raise ContentEncoderError(f"{name} has no 'feature_extractor.conv_layers.0.0.weight' entry "
                                  "(not a HuBERT/wav2vec2 checkpoint)")
    if cfg.get("conv_feature_layers"):
        conv_layers = _literal_layers(cfg["conv_feature_layers"])
    else:
        default_stride = {10: 5, 3: 2, 2: 2}
        conv_layers = []
        for i in range(n_conv):
            w = need(f"feature_extractor.conv_layers.{i}.0.weight")
            k = int(w.shape[-1])
            if k not in default_stride:
                raise ContentEncoderError(f"{name}: conv layer {i} has kernel {k} and the file has no "
                                          "conv_feature_layers setting to give its stride")
            conv_layers.append((int(w.shape[0]), k, default_stride[k]))
    if len(conv_layers) != n_conv:
        raise ContentEncoderError(f"{name}: conv_feature_layers names {len(conv_layers)} layers but the "
                                  f"state dict has {n_conv}")
    if "feature_extractor.conv_layers.0.2.1.weight" in state:
        mode = "layer_norm"
    elif "feature_extractor.conv_layers.0.2.weight" in state:
        mode = "default"
    else:
        mode = str(cfg.get("extractor_mode") or "default")
    pos_v = state.get("encoder.pos_conv.0.weight_v",
                      state.get("encoder.pos_conv.0.parametrizations.weight.original1",
                                state.get("encoder.pos_conv.0.weight")))
    if pos_v is None:
        _pos_conv_weight(state, name)  # raises the naming error
    dim = int(need("encoder.layer_norm.weight").shape[0])
    layers = _layer_count(state, "encoder.layers.")
    ffn = int(need("encoder.layers.0.fc1.weight").shape[0]) if layers else int(cfg.get("encoder_ffn_embed_dim", 4 * dim))
    heads = int(cfg.get("encoder_attention_heads") or max(1, dim // 64))
    if dim % heads:
        raise ContentEncoderError(f"{name}: {heads} attention heads do not divide dimension {dim}")
    final = state.get("final_proj.weight")
    hp = {
        "conv_layers": conv_layers, "extractor_mode": mode,
        "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state,
        "dim": dim, "ffn": ffn, "layers": layers, "heads": heads,
        "conv_pos": int(pos_v.shape[-1]), "conv_pos_groups": dim // int(pos_v.shape[1]),
        "layer_norm_first": bool(cfg.get("layer_norm_first", False)),
        "has_proj": "post_extract_proj.weight" in state,
        "final_proj_dim": int(final.shape[0]) if final is not None else None,
    }
    for key, want in (("encoder_embed_dim", dim), ("encoder_layers", layers)):
        if cfg.get(key) is not None and int(cfg[key]) != want:
            raise ContentEncoderError(f"{name}: its config says {key}={cfg[key]} but the weights "
                                      f"have {want}")
    return hp


def _read_fairseq(path: Path, mmap: bool = False) -> tuple[dict, dict]:
    ckpt = restricted_torch_load(path, "content-encoder checkpoint", mmap=mmap)
    if not isinstance(ckpt, dict):
        raise ContentEncoderError(f"{path.name} is not a checkpoint dict (got {type(ckpt).__name__})")
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise ContentEncoderError(f"{path.name} has no 'model' entry (the fairseq state dict)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ContentEncoderError(f"{path.name}: model entry '{bad[0]}' is not a tensor")
    return ckpt, state


def _build_fairseq(path: Path) -> FairseqHubert:
    ckpt, state = _read_fairseq(path)
    hp = _fairseq_hparams(ckpt, state, path.name)
    with torch.device("meta"):  # no random init: every parameter comes from the file
        model = FairseqHubert(**hp)
    want = model.state_dict()
    ours = {"pos_conv.weight": _pos_conv_weight(state, path.name)}
    for mine, theirs in _fairseq_key_map(model, set(state)).items():
        if theirs not in state:
            raise ContentEncoderError(f"{path.name} has no '{theirs}' entry in its model state dict")
        if tuple(state[theirs].shape) != tuple(want[mine].shape):
            raise ContentEncoderError(f"{path.name}: '{theirs}' has shape {tuple(state[theirs].shape)}, "
                                      f"expected {tuple(want[mine].shape)}")
        ours[mine] = state.pop(theirs).float()  # drop the stored (often float16) copy as we go
    if tuple(ours["pos_conv.weight"].shape) != tuple(want["pos_conv.weight"].shape):
        raise ContentEncoderError(f"{path.name}: 'encoder.pos_conv.0.weight_v' has shape "
                                  f"{tuple(ours['pos_conv.weight'].shape)}, expected "
                                  f"{tuple(want['pos_conv.weight'].shape)}")
    del ckpt, state
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# transformers folders
# --------------------------------------------------------------------------------------------

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _folder_weights(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise ContentEncoderError(f"{folder.name}/ has no config.json (a transformers HuBERT folder "
                                  "needs config.json and model.safetensors or pytorch_model.bin)")
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ContentEncoderError(f"{folder.name}/ has no model.safetensors or pytorch_model.bin")


def _read_folder_state(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types
            raise ContentEncoderError(f"{weights.name} is not a readable safetensors file: {exc}") from None
    state = restricted_torch_load(weights, "weights file")
    if not isinstance(state, dict):
        raise ContentEncoderError(f"{weights.name} is not a state dict")
    return state


def _build_transformers(folder: Path):
    from transformers import HubertConfig, HubertModel

    weights = _folder_weights(folder)
    try:
        config = HubertConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (ValueError, TypeError) as exc:
        raise ContentEncoderError(f"{folder.name}/config.json is not a HuBERT config: {exc}") from None
    state = _read_folder_state(weights)
    state = {k.removeprefix("hubert."): v for k, v in state.items()}
    final = {k[len("final_proj."):]: v for k, v in state.items() if k.startswith("final_proj.")}
    body = {}
    for k, v in state.items():
        if k.startswith("final_proj."):
            continue
        k = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        k = k.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        body[k] = v
    with torch.device("meta"):  # no random init: every parameter comes from the file
        model = HubertModel(config)
    want = model.state_dict()
    missing = [k for k in want if k not in body and k != "masked_spec_embed"]
    if missing:
        raise ContentEncoderError(f"{weights.name} has no '{missing[0]}' entry"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for k, v in body.items():
        if k in want and tuple(v.shape) != tuple(want[k].shape):
            raise ContentEncoderError(f"{weights.name}: '{k}' has shape {tuple(v.shape)}, expected "
                                      f"{tuple(want[k].shape)}")
    body.setdefault("masked_spec_embed", torch.zeros(config.hidden_size))  # training-only parameter
    model.load_state_dict({k: v.float() for k, v in body.items() if k in want}, strict=True, assign=True)
    proj = None
    if final:
        if "weight" not in final:
            raise ContentEncoderError(f"{weights.name} has no 'final_proj.weight' entry")
        w = final["weight"]
        proj = nn.Linear(w.shape[1], w.shape[0], bias="bias" in final)
        proj.load_state_dict({k: v.float() for k, v in final.items()})
    return model.eval(), proj, config


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else [path / "config.json", _folder_weights(path)]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class ContentEncoder:
    """A loaded content encoder; :meth:`extract` turns 16 kHz audio into RVC features."""

    def __init__(self, *, path: Path, fmt: str, model: nn.Module, final_proj: nn.Module | None,
                 layers: int, dim: int, device: str, half: bool):
        self.path, self.format, self.layers, self.dim = path, fmt, layers, dim
        self.device = torch.device(device)
        self.half = bool(half and self.device.type == "cuda")
        self.dtype = torch.float16 if self.half else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.final_proj = final_proj.to(self.device, self.dtype).eval() if final_proj is not None else None
        self.has_final_proj = self.final_proj is not None

    def frames(self, n_samples: int) -> int:
        """Feature frames for ``n_samples`` of 16 kHz audio (the conv stack's arithmetic)."""
        return self._frames(n_samples)

    def extract(self, wav16k: torch.Tensor, version: str) -> torch.Tensor:
        """(1, n) float audio at 16 kHz -> (1, frames, 256 for v1 | 768 for v2).

        The result is on the encoder's device in its dtype (float16 when loaded with ``half`` on CUDA).
        """
        if version not in VERSION_LAYER:
            raise ValueError(f"unknown RVC feature version {version!r} (v1 or v2)")
        if version == "v1" and self.final_proj is None:
            raise ContentEncoderError(f"{self.path.name} has no final_proj layer, which RVC v1 "
                                      "(256-dim) features need")
        wav = torch.as_tensor(wav16k)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.dim() != 2:
            raise ValueError(f"expected audio of shape (1, n), got {tuple(wav.shape)}")
        if wav.shape[-1] < 400:
            raise ValueError(f"audio too short for the content encoder: {wav.shape[-1]} samples "
                             "(at least 400 at 16 kHz)")
        wav = wav.to(self.device, self.dtype)
        n = min(VERSION_LAYER[version], self.layers)
        with torch.inference_mode():
            if self.format == "fairseq":
                x = self.model(wav, n)
            else:
                out = self.model(input_values=wav, output_hidden_states=True, return_dict=True)
                x = out.hidden_states[n]
            if version == "v1":
                x = self.final_proj(x)
        return x

    def _frames(self, n: int) -> int:
        if self.format == "fairseq":
            specs = [(c.kernel_size[0], c.stride[0]) for c in self.model.convs]
        else:
            cfg = self.model.config
            specs = list(zip(cfg.conv_kernel, cfg.conv_stride))
        for k, s in specs:
            n = (n - k) // s + 1
        return max(0, n)


def _check_path(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ContentEncoderError(f"content encoder {p} does not exist")
    return p


def load_content_encoder(path, device: str = "cpu", half: bool = False) -> ContentEncoder:
    """A fairseq-format ``.pt`` file or a transformers folder -> :class:`ContentEncoder`."""
    p = _check_path(path)
    if p.is_dir():
        model, proj, config = _build_transformers(p)
        enc = ContentEncoder(path=p, fmt="transformers", model=model, final_proj=proj,
                             layers=int(config.num_hidden_layers), dim=int(config.hidden_size),
                             device=device, half=half)
    else:
        model = _build_fairseq(p)
        proj, model.final_proj = model.final_proj, None
        enc = ContentEncoder(path=p, fmt="fairseq", model=model, final_proj=proj,
                             layers=len(model.layers), dim=model.enc_norm.normalized_shape[0],
                             device=device, half=half)
    log.info("content encoder %s (%s, %d layers, dim %d, final_proj %s) on %s%s", p.name, enc.format,
             enc.layers, enc.dim, enc.has_final_proj, enc.device, " half" if enc.half else "")
    return enc


def inspect_content_encoder(path) -> dict:
    """Cheap facts for the registry: format, layers, dim, has_final_proj, sha256."""
    p = _check_path(path)
    if p.is_dir():
        weights = _folder_weights(p)
        try:
            cfg = json.loads((p / "config.json").read_text())
        except ValueError as exc:
            raise ContentEncoderError(f"{p.name}/config.json is not JSON: {exc}") from None
        if weights.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(weights), "pt") as fh:
                has_proj = any(k.removeprefix("hubert.").startswith("final_proj.") for k in fh.keys())
        else:
            has_proj = any(k.removeprefix("hubert.").startswith("final_proj.")
                           for k in _read_folder_state(weights))
        for key in ("num_hidden_layers", "hidden_size"):
            if key not in cfg:
                raise ContentEncoderError(f"{p.name}/config.json has no '{key}'")
        return {"format": "transformers", "layers": int(cfg["num_hidden_layers"]),
                "dim": int(cfg["hidden_size"]), "has_final_proj": has_proj, "sha256": _sha256(p)}
    ckpt, state = _read_fairseq(p, mmap=True)  # shapes only: nothing but the pickle is read
    hp = _fairseq_hparams(ckpt, state, p.name)
    return {"format": "fairseq", "layers": hp["layers"], "dim": hp["dim"],
            "has_final_proj": hp["final_proj_dim"] is not None, "sha256": _sha256(p)}


__all__ = ["ContentEncoder", "ContentEncoderError", "FairseqHubert", "VERSION_LAYER",
           "inspect_content_encoder", "load_content_encoder", "restricted_torch_load"]
