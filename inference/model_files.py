"""What a model file is, read from the file itself (never from what a user typed).

:func:`inspect_model_file` opens a file the way its format needs, without running any code in
it (``torch.load(weights_only=True)`` for pickles, a YAML safe loader, ONNX protobuf, faiss'
reader), and returns :class:`ModelFacts`: the kind (``rvc``, ``uvr-vr``, ``mdx``, ``mdxc``,
``roformer``, ``demucs``, ``gpt-sovits``, plus the helper files ``content-encoder``, ``rmvpe``,
``index``), the engine that runs it, sample rate, version, sha256 and what else it needs.

A file that is not what it claims to be raises :class:`ModelFileError` naming what is missing.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# kind -> (engine that runs it, role)
KINDS: dict[str, tuple[str | None, str]] = {
    "rvc": ("rvc", "converter"),
    "gpt-sovits": ("gpt-sovits-api", "converter"),
    "uvr-vr": ("uvr", "separator"),
    "mdx": ("uvr", "separator"),
    "mdxc": ("uvr", "separator"),
    "roformer": ("uvr", "separator"),
    "demucs": ("demucs", "separator"),
    "content-encoder": (None, "content-encoder"),
    "rmvpe": (None, "pitch"),
    "index": (None, "index"),
}
SEPARATOR_KINDS = tuple(k for k, (_, role) in KINDS.items() if role == "separator")
CONVERTER_KINDS = tuple(k for k, (_, role) in KINDS.items() if role == "converter")


class ModelFileError(ValueError):
    """The file is not a usable model of the kind it claims (the message says what is missing)."""


@dataclass(frozen=True)
class ModelFacts:
    kind: str
    engine: str | None
    role: str
    sha256: str
    size: int
    sample_rate: int | None = None
    version: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()       # other files this model needs, in words

    def as_dict(self) -> dict:
        d = asdict(self)
        d["needs"] = list(self.needs)
        return d


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` that refuses any pickle needing more than tensors and plain containers."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("Unsupported") or "GLOBAL" in ln), lines[0] if lines else "")
        raise ModelFileError(f"{Path(path).name} was refused: loading it would run code or build objects other "
                             f"than tensors ({why[:200]})") from None
    except Exception as exc:
        raise ModelFileError(f"{Path(path).name} is not a readable PyTorch weights file "
                             f"({exc.__class__.__name__}: {str(exc)[:200]})") from None


def _is_zip(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _facts(kind: str, path: Path, sha: str, **kw) -> ModelFacts:
    engine, role = KINDS[kind]
    return ModelFacts(kind=kind, engine=engine, role=role, sha256=sha, size=path.stat().st_size, **kw)


def inspect_model_file(path: str | Path, *, config: str | Path | None = None) -> ModelFacts:
    """Facts about ``path`` (a file, or a transformers folder for a content encoder).

    ``config`` is the YAML that goes with an MDXC/Roformer checkpoint, when the user gave one.
    """
    p = Path(path)
    if p.is_dir():
        return _inspect_folder(p)
    if not p.is_file():
        raise ModelFileError(f"{p} does not exist")
    sha = sha256_of(p)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return _inspect_onnx(p, sha)
    if suffix == ".index":
        return _inspect_index(p, sha)
    if suffix in (".yaml", ".yml"):
        return _inspect_yaml(p, sha)
    if suffix in (".pth", ".pt", ".ckpt", ".th", ".bin"):
        return _inspect_pickle(p, sha, config=config)
    raise ModelFileError(f"{p.name}: unknown model file type {suffix or '(no extension)'}; expected .pth, .pt, "
                         ".ckpt, .th, .onnx, .yaml or .index")


# --------------------------------------------------------------------------------------------
def _inspect_pickle(p: Path, sha: str, *, config=None) -> ModelFacts:
    if p.suffix.lower() == ".th":
        return _inspect_demucs(p, sha)
    try:
        obj = safe_torch_load(p)
    except ModelFileError as refused:
        if "would run code" not in str(refused):
            raise
        # fairseq's hubert_base.pt carries an argparse.Namespace: the content encoder's own
        # restricted reader (which allows exactly that) decides.
        try:
            return _inspect_content_encoder(p, sha)
        except ModelFileError:
            raise refused from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{p.name} holds a {type(obj).__name__}, not a dict of weights")
    keys = set(obj)
    if "weight" in keys and isinstance(obj.get("config"), (list, tuple)):
        from .engines.rvc.checkpoint import inspect_rvc_checkpoint

        try:
            info = inspect_rvc_checkpoint(p)
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
        info = dict(info)
        sr = info.pop("sr", None)
        version = str(info.pop("version", ""))
        info.pop("sha256", None)
        return _facts("rvc", p, sha, sample_rate=int(sr) if sr else None, version=version, details=info,
                      needs=("a content encoder (HuBERT-base / ContentVec: COVER_RVC_CONTENT_ENCODER)",
                             "optional: the voice's .index file (feature retrieval)",
                             "optional: rmvpe.pt (COVER_RVC_RMVPE) for pitch"))
    if "weight" in keys and isinstance(obj.get("config"), dict):
        what = "GPT (text-to-semantic)" if p.suffix.lower() == ".ckpt" else "SoVITS"
        return _facts("gpt-sovits", p, sha, version=str(obj.get("info", ""))[:60],
                      details={"part": what}, needs=("its GPT .ckpt and SoVITS .pth pair",))
    if "model" in keys and isinstance(obj.get("model"), dict) and ("args" in keys or "cfg" in keys):
        if "optimizer" in keys and not any(k.startswith("encoder.") for k in obj["model"]):
            raise ModelFileError(f"{p.name} is a training checkpoint, not an inference model")
        return _inspect_content_encoder(p, sha)
    if "model" in keys and "optimizer" in keys:
        raise ModelFileError(f"{p.name} is a training checkpoint (model + optimizer), not an inference model: "
                             "export the small inference model (for RVC: the .pth under weights/)")
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    names = [k for k in state if isinstance(k, str)]
    if any(k.startswith(("stg1_", "stg2_", "stg3_")) for k in names):
        return _facts("uvr-vr", p, sha, sample_rate=None, details={"tensors": len(names)},
                      needs=("the VR model data (vr_model_data.json in the UVR model folder, matched by the "
                             "file's hash) or a registered model_data entry",))
    if any(k.startswith("unet.") for k in names) and any(k.startswith("fc.") for k in names):
        return _facts("rmvpe", p, sha, sample_rate=16000, details={"tensors": len(names)})
    if any(k.startswith(("layers.", "band_split", "mask_estimators", "final_norm", "stft_window")) for k in names) \
            or "mask_estimators.0.to_freqs.0.0.0.weight" in names:
        return _inspect_ckpt_with_yaml(p, sha, "roformer", config, names)
    if any(k.startswith(("encoder_blocks", "decoder_blocks", "first_conv", "final_conv", "bottleneck_block"))
           for k in names):
        return _inspect_ckpt_with_yaml(p, sha, "mdxc", config, names)
    raise ModelFileError(f"{p.name} is a weights file of no known kind: it is not an RVC voice (needs "
                         "'weight' and a 'config' list), a GPT-SoVITS model, a UVR VR model (stg1_* tensors), "
                         "a Roformer/MDX23C checkpoint, a HuBERT/ContentVec encoder or RMVPE")


def _inspect_content_encoder(p: Path, sha: str) -> ModelFacts:
    from .engines.rvc.content import inspect_content_encoder

    try:
        info = dict(inspect_content_encoder(p))
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    info.pop("sha256", None)
    return _facts("content-encoder", p, sha, sample_rate=16000, version=str(info.get("format", "")), details=info)


def _inspect_folder(p: Path) -> ModelFacts:
    if not (p / "config.json").is_file():
        raise ModelFileError(f"{p.name}/ is a folder without config.json: a content encoder folder must be in "
                             "transformers format (config.json + model.safetensors)")
    from .engines.rvc.content import inspect_content_encoder

    try:
        info = dict(inspect_content_encoder(p))
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    h = hashlib.sha256()
    size = 0
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.name.encode())
        h.update(sha256_of(f).encode())
        size += f.stat().st_size
    info.pop("sha256", None)
    return ModelFacts(kind="content-encoder", engine=None, role="content-encoder", sha256=h.hexdigest(), size=size,
                      sample_rate=16000, version="transformers", details=info)


def sibling_config(path: str | Path) -> Path | None:
    """The YAML beside a checkpoint with the same stem (how UVR keeps Roformer/MDX23C configs)."""
    p = Path(path)
    for suffix in (".yaml", ".yml"):
        if (cand := p.with_suffix(suffix)).is_file():
            return cand
    return None


def _inspect_ckpt_with_yaml(p: Path, sha: str, kind: str, config, names) -> ModelFacts:
    details: dict[str, Any] = {"tensors": len(names)}
    sr = None
    config = config if config is not None else sibling_config(p)
    if config is not None:
        cfg = _read_yaml(Path(config))
        arch = _yaml_arch(cfg)
        if arch and arch != kind:
            kind = arch
        sr = _yaml_sample_rate(cfg)
        details["config"] = Path(config).name
    return _facts(kind, p, sha, sample_rate=sr, details=details,
                  needs=("its YAML config (same name as the checkpoint, .yaml, in the UVR model folder)",))


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ModelFileError(f"the YAML config {path.name} does not exist")
    class Loader(yaml.SafeLoader):
        """Safe YAML plus the ``!!python/tuple`` tag the published Roformer configs use."""

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda ld, node: tuple(ld.construct_sequence(node)))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 (a SafeLoader)
    except Exception as exc:
        raise ModelFileError(f"{path.name} is not valid YAML ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path.name} must hold a YAML mapping")
    return data


def _yaml_arch(cfg: dict) -> str | None:
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if "freqs_per_bands" in model or "num_bands" in model or ("dim" in model and "depth" in model):
        return "roformer"
    if "num_subbands" in model or "num_scales" in model:
        return "mdxc"
    return None


def _yaml_sample_rate(cfg: dict) -> int | None:
    audio = cfg.get("audio") if isinstance(cfg.get("audio"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    sr = audio.get("sample_rate") or model.get("sample_rate")
    try:
        return int(sr) if sr else None
    except (TypeError, ValueError):
        return None


def _inspect_yaml(p: Path, sha: str) -> ModelFacts:
    cfg = _read_yaml(p)
    if isinstance(cfg.get("models"), list):   # a demucs bag of models
        sigs = [str(m) for m in cfg["models"]]
        return _facts("demucs", p, sha, sample_rate=44100, details={"models": sigs},
                      needs=tuple(f"{s}.th (or {s}-<hash>.th) beside the YAML" for s in sigs))
    arch = _yaml_arch(cfg)
    if arch:
        raise ModelFileError(f"{p.name} is the config of a {arch} model: register the .ckpt checkpoint and give "
                             "this YAML as its config file")
    raise ModelFileError(f"{p.name} is neither a demucs bag (a 'models' list) nor a Roformer/MDX23C config")


def demucs_name(path: str | Path) -> str:
    """The model name demucs looks a file up by: ``NAME-<sha8>.th`` / ``NAME.th`` / ``NAME.yaml``."""
    p = Path(path)
    return p.stem.rsplit("-", 1)[0] if p.suffix == ".th" and "-" in p.stem else p.stem


def _inspect_demucs(p: Path, sha: str) -> ModelFacts:
    from .engines.demucs_engine import _allowed_demucs_classes
    from .safe_pickle import restricted_torch_load

    obj = restricted_torch_load(p, "demucs model package", allow=_allowed_demucs_classes(), error=ModelFileError)
    if not isinstance(obj, dict) or "klass" not in obj or "state" not in obj:
        raise ModelFileError(f"{p.name} is not a demucs model package (needs 'klass', 'args', 'kwargs', 'state')")
    kwargs = obj.get("kwargs") or {}
    return _facts("demucs", p, sha, sample_rate=int(kwargs.get("samplerate", 44100)),
                  details={"sources": list(kwargs.get("sources", []))})


def _inspect_onnx(p: Path, sha: str) -> ModelFacts:
    try:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{p.name} is not a readable ONNX model ({exc.__class__.__name__})") from None
    if not model.graph.input:
        raise ModelFileError(f"{p.name}: the ONNX graph has no input")
    dims = [d.dim_value or (d.dim_param or None) for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 4:
        raise ModelFileError(f"{p.name}: an MDX-Net model takes a [batch, 4, dim_f, dim_t] spectrogram; this one "
                             f"takes {dims}")
    return _facts("mdx", p, sha, sample_rate=44100, details={"dim_f": dims[2], "dim_t": dims[3]},
                  needs=("the MDX model data (mdx_model_data.json in the UVR model folder, matched by the "
                         "file's hash) for its n_fft and compensation",))


def _inspect_index(p: Path, sha: str) -> ModelFacts:
    try:
        import faiss

        index = faiss.read_index(str(p))
    except Exception as exc:
        raise ModelFileError(f"{p.name} is not a readable FAISS index ({str(exc)[:200]})") from None
    dim = int(index.d)
    if dim not in (256, 768):
        raise ModelFileError(f"{p.name}: an RVC index holds 256- (v1) or 768-dim (v2) features; this one holds {dim}")
    return _facts("index", p, sha, version="v1" if dim == 256 else "v2",
                  details={"dim": dim, "vectors": int(index.ntotal)})
