"""RVC voice-model files (``.pth``): read safely, validate, build the synthesizer.

An exported RVC model is a ``torch.save``d dict::

    weight   state dict of the synthesizer without its training-only posterior encoder (float16)
    config   18 hyper-parameters in the synthesizer constructor's order, ending with the sample rate
    info     free text ("300epoch")
    sr       "32k" | "40k" | "48k" (or an int)
    f0       1 = pitch-guided (NSF decoder), 0 = not
    version  "v1" (256-dim content features) | "v2" (768-dim); absent means v1

Files are read with ``torch.load(weights_only=True)`` only, so a file can never run code; one that
needs anything beyond tensors and plain containers is refused. Every refusal is an
:class:`RvcFormatError` whose message names the file and what is missing or wrong.
"""
from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ._synth import RvcSynthesizer, SynthConfig

log = logging.getLogger(__name__)

FEATURE_DIMS = {"v1": 256, "v2": 768}
SR_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}
CONFIG_FIELDS = (
    "spec_channels", "segment_size", "inter_channels", "hidden_channels", "filter_channels",
    "n_heads", "n_layers", "kernel_size", "p_dropout", "resblock", "resblock_kernel_sizes",
    "resblock_dilation_sizes", "upsample_rates", "upsample_initial_channel",
    "upsample_kernel_sizes", "spk_embed_dim", "gin_channels", "sr",
)
KEY_GROUPS = ("enc_p.", "dec.", "flow.", "emb_g.")


class RvcFormatError(ValueError):
    """The file is not a usable RVC voice model; the message says what is missing or wrong."""


@dataclass(frozen=True)
class RvcCheckpoint:
    path: Path
    version: str
    f0: bool
    sr: int
    feature_dim: int
    config: tuple
    n_speakers: int
    info: str
    sha256: str

    @property
    def synth_config(self) -> SynthConfig:
        return SynthConfig(*self.config)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _deep_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_deep_tuple(v) for v in value)
    return value


def _load_plain(path: Path) -> Any:
    name = path.name
    if not path.is_file():
        raise RvcFormatError(f"{name}: no such file ({path})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found is None:  # not a pickle torch can read at all (text, random bytes, truncated)
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            reason = detail.group(1).strip() if detail else text.splitlines()[0]
            raise RvcFormatError(f"{name} is not a readable PyTorch file ({reason})") from None
        raise RvcFormatError(
            f"{name} needs '{found.group(1)}' to load; a voice model file must hold only tensors, "
            "numbers, strings, lists and dicts, so it is refused (it could run code)"
        ) from None
    except Exception as exc:  # not a torch file at all, truncated, ...
        raise RvcFormatError(f"{name} is not a readable PyTorch file ({type(exc).__name__}: {exc})") from None


def _parse_config(name: str, raw: Any) -> tuple:
    if not isinstance(raw, (list, tuple)):
        raise RvcFormatError(f"{name}: 'config' must be a list of {len(CONFIG_FIELDS)} hyper-parameters, got {type(raw).__name__}")
    if len(raw) != len(CONFIG_FIELDS):
        raise RvcFormatError(
            f"{name}: 'config' has {len(raw)} entries, an RVC model has {len(CONFIG_FIELDS)} "
            f"({', '.join(CONFIG_FIELDS)})"
        )
    cfg = list(_deep_tuple(raw))
    if isinstance(cfg[-1], str):
        if cfg[-1] not in SR_NAMES:
            raise RvcFormatError(f"{name}: unknown sample rate {cfg[-1]!r} in 'config'")
        cfg[-1] = SR_NAMES[cfg[-1]]
    ints = ("spec_channels", "segment_size", "inter_channels", "hidden_channels", "filter_channels",
            "n_heads", "n_layers", "kernel_size", "upsample_initial_channel", "spk_embed_dim",
            "gin_channels", "sr")
    for field, value in zip(CONFIG_FIELDS, cfg):
        if field in ints and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise RvcFormatError(f"{name}: config entry {field} must be a non-negative integer, got {value!r}")
    cfg[9] = str(cfg[9])
    if cfg[9] not in ("1", "2"):
        raise RvcFormatError(f"{name}: config entry resblock must be '1' or '2', got {cfg[9]!r}")
    rates, kernels = cfg[12], cfg[14]
    if not rates or len(rates) != len(kernels) or not all(isinstance(r, int) and r > 0 for r in rates):
        raise RvcFormatError(f"{name}: config upsample_rates {rates!r} / upsample_kernel_sizes {kernels!r} do not pair up")
    if math.prod(rates) * 100 != cfg[-1]:
        raise RvcFormatError(
            f"{name}: upsample rates {rates!r} give {math.prod(rates)} samples per frame, but the "
            f"sample rate {cfg[-1]} needs {cfg[-1] // 100} (100 frames per second)"
        )
    if len(cfg[10]) != len(cfg[11]):
        raise RvcFormatError(f"{name}: config resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    if cfg[3] % max(cfg[5], 1) or cfg[5] == 0:
        raise RvcFormatError(f"{name}: hidden_channels {cfg[3]} is not divisible by n_heads {cfg[5]}")
    return tuple(cfg)


def fold_weight_norm(weights: Mapping[str, torch.Tensor], name: str = "model") -> dict[str, torch.Tensor]:
    """float32 state dict with every weight-norm pair (``weight_g``/``weight_v``, or the
    ``parametrizations.weight.original0/1`` spelling) replaced by the plain ``weight`` it stands for.
    Training-only ``enc_q`` entries are dropped."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise RvcFormatError(f"{name}: weight entry {key!r} is not a tensor")
        if key.startswith("enc_q."):
            continue
        m = _G_OR_V.match(key)
        if m:
            role = "g" if m.group(2) in ("weight_g", "parametrizations.weight.original0") else "v"
            pairs.setdefault(m.group(1), {})[role] = value
        else:
            out[key] = value.float()
    for base, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            missing = "weight_g" if "g" not in pair else "weight_v"
            raise RvcFormatError(f"{name}: {base}.{missing} is missing (weight-norm pair incomplete)")
        g, v = pair["g"].float(), pair["v"].float()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[base + ".weight"] = v * (g / norm)
    return out


def _expected_shapes(cfg: tuple, version: str, f0: bool, n_speakers: int) -> dict[str, tuple]:
    with torch.device("meta"):
        model = RvcSynthesizer(SynthConfig(*cfg), version=version, f0=f0, n_speakers=n_speakers)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_G_OR_V = re.compile(r"^(.*)\.(weight_g|weight_v|parametrizations\.weight\.original[01])$")


def _folded_shapes(name: str, weights: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """Shapes the state dict will have once weight norm is folded; checks the pairs are whole."""
    shapes, halves = {}, {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise RvcFormatError(f"{name}: weight entry {key!r} is not a tensor")
        if key.startswith("enc_q."):
            continue
        m = _G_OR_V.match(key)
        if m is None:
            shapes[key] = tuple(value.shape)
            continue
        role = "weight_g" if m.group(2) in ("weight_g", "parametrizations.weight.original0") else "weight_v"
        halves.setdefault(m.group(1), set()).add(role)
        if role == "weight_v":
            shapes[m.group(1) + ".weight"] = tuple(value.shape)
    for base, roles in halves.items():
        if len(roles) != 2:
            lacking = ({"weight_g", "weight_v"} - roles).pop()
            raise RvcFormatError(f"{name}: {base}.{lacking} is missing (weight-norm pair incomplete)")
    return shapes


def _summarise(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:6])
    return shown + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def read_rvc_checkpoint(path) -> tuple[RvcCheckpoint, dict]:
    """Load and validate an RVC ``.pth``; returns the facts and the raw state dict (as stored)."""
    path = Path(path)
    name = path.name
    data = _load_plain(path)
    if not isinstance(data, dict):
        raise RvcFormatError(f"{name} holds a {type(data).__name__}, not an RVC model dict ('weight', 'config', ...)")
    if "weight" not in data:
        if "model" in data and ("optimizer" in data or "iteration" in data):
            raise RvcFormatError(
                f"{name} is an RVC training checkpoint (G_*.pth/D_*.pth with 'model' and 'optimizer'), "
                "not an inference model: export the small model (RVC WebUI: ckpt processing -> "
                "extract small model, or the .pth from assets/weights) and register that"
            )
        raise RvcFormatError(f"{name} has no 'weight' entry (the synthesizer's state dict); keys: {_summarise(map(str, data))}")
    if "config" not in data:
        raise RvcFormatError(f"{name} has no 'config' entry (the synthesizer's {len(CONFIG_FIELDS)} hyper-parameters)")
    weights = data["weight"]
    if not isinstance(weights, dict) or not weights:
        raise RvcFormatError(f"{name}: 'weight' must be a non-empty state dict")
    cfg = _parse_config(name, data["config"])

    version = data.get("version", "v1")
    if version not in FEATURE_DIMS:
        raise RvcFormatError(f"{name}: unknown version {version!r} (expected 'v1' or 'v2')")
    f0_flag = data.get("f0", 1)
    if f0_flag not in (0, 1, True, False):
        raise RvcFormatError(f"{name}: 'f0' must be 1 or 0, got {f0_flag!r}")
    f0 = bool(f0_flag)
    vocoder = data.get("vocoder")
    if vocoder not in (None, "HiFi-GAN"):
        raise RvcFormatError(f"{name} uses the {vocoder!r} vocoder; only RVC's HiFi-GAN decoder is supported")

    missing_groups = [g.rstrip(".") for g in KEY_GROUPS if not any(str(k).startswith(g) for k in weights)]
    if missing_groups:
        raise RvcFormatError(f"{name}: the state dict has no {', '.join(missing_groups)} weights")
    if "emb_g.weight" not in weights:
        raise RvcFormatError(f"{name}: the state dict has no emb_g.weight (speaker embedding)")
    phone = weights.get("enc_p.emb_phone.weight")
    if phone is None:
        raise RvcFormatError(f"{name}: the state dict has no enc_p.emb_phone.weight (content-feature input layer)")
    feature_dim = int(phone.shape[-1])
    if feature_dim != FEATURE_DIMS[version]:
        other = "v2" if version == "v1" else "v1"
        hint = f" (that is a {other} model's size: is 'version' wrong?)" if feature_dim == FEATURE_DIMS[other] else ""
        raise RvcFormatError(
            f"{name}: version {version} expects {FEATURE_DIMS[version]}-dim content features, but "
            f"enc_p.emb_phone.weight takes {feature_dim}{hint}"
        )
    has_pitch = "enc_p.emb_pitch.weight" in weights
    has_source = any(str(k).startswith("dec.m_source.") for k in weights)
    if f0 and not (has_pitch and has_source):
        lacking = [k for k, ok in (("enc_p.emb_pitch", has_pitch), ("dec.m_source", has_source)) if not ok]
        raise RvcFormatError(f"{name}: f0=1 (pitch-guided) but the state dict has no {' and no '.join(lacking)} weights")
    if not f0 and (has_pitch or has_source):
        raise RvcFormatError(f"{name}: f0=0 (no pitch guidance) but the state dict has pitch weights (enc_p.emb_pitch / dec.m_source)")

    n_speakers = int(weights["emb_g.weight"].shape[0])
    cfg = cfg[:15] + (n_speakers,) + cfg[16:]  # the embedding decides, as the reference loader does
    expected = _expected_shapes(cfg, version, f0, n_speakers)
    found = _folded_shapes(name, weights)
    missing = set(expected) - set(found)
    if missing:
        raise RvcFormatError(f"{name}: the state dict lacks {len(missing)} entries the config calls for: {_summarise(missing)}")
    wrong = [k for k in expected if found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise RvcFormatError(
            f"{name}: {len(wrong)} weights do not match the config, e.g. {k} is {list(found[k])}, expected {list(expected[k])}"
        )
    extra = set(found) - set(expected)
    if extra:
        log.debug("%s: ignoring %d entries the synthesizer does not use: %s", name, len(extra), _summarise(extra))

    sr = int(cfg[-1])
    stored_sr = data.get("sr")
    if isinstance(stored_sr, str):
        stored_sr = SR_NAMES.get(stored_sr, stored_sr)
    if stored_sr not in (None, sr):
        log.warning("%s: 'sr' says %r but the config's sample rate is %d; using the config", name, data.get("sr"), sr)

    ckpt = RvcCheckpoint(
        path=path, version=version, f0=f0, sr=sr, feature_dim=feature_dim, config=cfg,
        n_speakers=n_speakers, info=str(data.get("info", "")), sha256=_sha256(path),
    )
    return ckpt, weights


def inspect_rvc_checkpoint(path) -> dict:
    """Facts for the model registry, read from the file (validated like a real load)."""
    ckpt, weights = read_rvc_checkpoint(path)
    params = sum(int(v.numel()) for k, v in fold_weight_norm(weights, ckpt.path.name).items() if not k.startswith("enc_q."))
    return {
        "kind": "rvc",
        "version": ckpt.version,
        "f0": ckpt.f0,
        "sr": ckpt.sr,
        "feature_dim": ckpt.feature_dim,
        "n_speakers": ckpt.n_speakers,
        "info": ckpt.info,
        "sha256": ckpt.sha256,
        "params": params,
    }


def build_synthesizer(ckpt: RvcCheckpoint, state: Mapping[str, torch.Tensor], device="cpu", half: bool = False) -> RvcSynthesizer:
    """The synthesizer in eval mode on ``device`` with weight norm folded.

    ``half`` applies on CUDA only (on CPU it is ignored: float32); the harmonic source stays
    float32 either way.
    """
    device = torch.device(device)
    if half and device.type != "cuda":
        log.debug("half precision ignored on %s: using float32", device)
        half = False
    model = RvcSynthesizer(ckpt.synth_config, version=ckpt.version, f0=ckpt.f0, n_speakers=ckpt.n_speakers)
    folded = fold_weight_norm(state, ckpt.path.name)
    expected = set(model.state_dict())
    try:
        model.load_state_dict({k: v for k, v in folded.items() if k in expected}, strict=True)
    except RuntimeError as exc:
        raise RvcFormatError(f"{ckpt.path.name}: weights do not fit the synthesizer: {exc}") from None
    model.eval().requires_grad_(False).to(device)
    if half:
        model.half()
        if model.f0:
            model.dec.m_source.float()
    return model
