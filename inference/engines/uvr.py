"""Separator ``uvr``: UVR-family models users bring, run by python-audio-separator in-process.

Architectures (chosen from the file, or the ``arch`` option):

- VR (``.pth``): the library's VR nets; parameters from the model-data JSON entry keyed by the
  file's hash (``vr_model_data.json``: ``vr_model_param``, ``primary_stem``, ``nout``...).
- MDX-Net (``.onnx``): parameters from ``mdx_model_data.json`` (``mdx_dim_f_set``, ...).
- MDXC: MDX23C, BS-Roformer, MelBand-Roformer (``.ckpt``, or any file with ``config``): the
  YAML config the model was trained with.

Files (all local; nothing is ever downloaded): the model file, in ``model_dir`` or as an absolute
path; for VR/MDX the model-data JSON (UVR's ``vr_model_data/model_data_new.json`` and
``mdx_model_data/model_data_new.json`` saved as ``vr_model_data.json`` / ``mdx_model_data.json``
in ``model_dir``; python-audio-separator's own bundled entries count too) unless the
``model_data`` option gives the entry; for MDXC the YAML (``config``, else the name UVR's
``download_checks.json`` or the library's model list gives it, else ``<model stem>.yaml``).
A missing file is a ``PipelineError(code="model_missing")`` naming it and its folder, raised
before the library is touched. The library's download function is replaced by one that raises,
so a path we did not foresee still never reaches the network.

Safety: a ``.pth``/``.ckpt`` must load with ``torch.load(weights_only=True)`` (tensors and plain
containers) before the library opens it; a YAML must parse with a safe loader (tuples allowed).
Demucs bags (``.yaml`` + ``.th``) are refused: the library unpickles those with
``weights_only=False``; use the ``demucs`` separator for them.

Options: ``model`` (file name in ``model_dir``, with or without extension, or an absolute path),
``model_dir``, ``config`` (MDXC YAML), ``model_data`` (the VR/MDX entry, instead of the JSON),
``arch`` (``vr``/``mdx``/``mdxc``; else from the file), ``vocal_stem`` (the output to keep: the
vocal for the separator, the lead for a karaoke step, the dry one for de-reverb), ``residual``,
``device``, ``half``; per architecture ``segment_size``, ``overlap`` (MDX: fraction, MDXC: count),
``batch_size``, ``hop_length``/``enable_denoise``/``mdx_runtime`` (MDX), ``window_size``/
``aggression``/``enable_tta``/``high_end_process``/``post_process`` (VR). Unset ones keep the
library's defaults (MDX segment = the model's dim_t; MDXC: the YAML's).

Loaded once per engine instance (the registry keeps one per option set): the library's
``Separator`` with its architecture object, whose weights are loaded eagerly in ``__init__``.
``separate`` writes the song to ``ctx.tmpdir`` (the library reads files), takes the stems from
the library in memory (nothing is written back), reports progress per chunk through the
library's tqdm loops and polls cancel there. Stems come back at the song's rate, channels and
length. The vocal stem is found by name per architecture (``Vocals``, ``Instrumental``, ``No
Vocals``, ``other``...; ``vocal_stem`` overrides); by default the instrumental is the song minus
the vocal (``residual=True``), so the two always sum back to the song.

Device: ``device`` (None: :func:`inference.device.default_device`) overrides the library's own
choice. ``half`` (None: on CUDA only) runs Roformers in native float16 and the other torch
models under autocast; ONNX models run in onnxruntime when it has a provider for the device
(CUDAExecutionProvider needs onnxruntime-gpu), else through onnx2torch on the torch device.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import resample
from ..context import StageContext
from ..device import default_device, use_half
from ..errors import Canceled, PipelineError
from ..registry import register

log = logging.getLogger("inference.uvr")

STAGE = "separate"
ARCHS = ("VR", "MDX", "MDXC")
MODEL_EXTS = (".pth", ".onnx", ".ckpt")
VR_DATA = "vr_model_data.json"
MDX_DATA = "mdx_model_data.json"
DOWNLOAD_CHECKS = "download_checks.json"
# The library picks a VR net by the model file's size in KiB (nearest of these; VR 5.1 nets are
# 56817 and 218409). We estimate it from the float32 size of the weights, so a float16 copy of a
# model (e.g. RVC's HP2_all_vocals.pth) gets the net its weights were trained in.
VR_ARCH_SIZES = (31191, 33966, 56817, 123821, 123812, 129605, 218409, 537238, 537227)

_LOCK = threading.RLock()  # the library's objects and our tqdm hook are not re-entrant


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# Which library output is the one we keep, per role. Names seen in UVR/audio-separator models.
_KEEP = {
    "vocals": {"vocals", "vocal", "voice", "voices", "leadvocals", "lead", "leadonly", "withleadvocals", "singing"},
    "lead": {"vocals", "vocal", "leadvocals", "lead", "leadonly", "withleadvocals", "mainvocals", "main"},
    "dry": {"dry", "noreverb", "noecho", "noreverbnoecho", "nonoise", "dereverb", "deecho", "nodelay",
            "vocals", "vocal"},
}
_REST = {
    "vocals": {"instrumental", "inst", "novocals", "novocal", "other", "karaoke", "accompaniment", "music",
               "noleadvocals", "instrumentals", "bleed"},
    "lead": {"instrumental", "inst", "backingvocals", "backing", "backingonly", "withbackingvocals", "karaoke",
             "other", "novocals", "noleadvocals", "bv"},
    "dry": {"reverb", "echo", "nodry", "wet", "noise", "other", "instrumental", "delay"},
}


def pick_stem(names: list[str], role: str, override: str | None = None, model: str = "") -> str:
    """The library output to keep for ``role`` (``vocals``, ``lead`` or ``dry``)."""
    if override:
        for n in names:
            if _norm(n) == _norm(override):
                return n
        raise PipelineError(STAGE, f"the uvr model {model} has no output stem {override!r} "
                                   f"(its stems: {', '.join(names)})", code="model_invalid")
    keep = [n for n in names if _norm(n) in _KEEP[role]]
    if len(keep) == 1:
        return keep[0]
    rest = [n for n in names if _norm(n) in _REST[role]]
    others = [n for n in names if n not in rest]
    if len(others) == 1 and rest:
        return others[0]
    if role == "dry":  # "No <wet thing>"
        no = [n for n in names if _norm(n).startswith("no") and _norm(n)[2:] in _REST["dry"]]
        if len(no) == 1:
            return no[0]
    raise PipelineError(STAGE, f"cannot tell which output of the uvr model {model} is the {role} stem "
                               f"(its stems: {', '.join(names)}); name it with the engine option 'vocal_stem'",
                        code="model_invalid")


def _missing(file: Path | str, folder: Path | str, why: str) -> PipelineError:
    name = Path(file).name
    return PipelineError(STAGE, f"{name} is missing: put it in {folder} ({why})", code="model_missing")


class DownloadRefused(RuntimeError):
    """Raised by the library's download function inside this engine: nothing is downloaded."""


def check_safe_torch_file(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, else refused."""
    import torch
    try:
        try:  # memory-mapped when the file is a zip checkpoint (no second copy of a 600 MB model)
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        why = next((ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in text.splitlines()
                    if "WeightsUnpickler error:" in ln), "") or text.splitlines()[0][:200] if text else exc.__class__.__name__
        raise PipelineError(STAGE, f"{path.name} was refused: it is not a plain weights file that loads with "
                                   f"torch.load(weights_only=True) ({why})", code="model_unsafe") from None
    if not isinstance(obj, dict):
        raise PipelineError(STAGE, f"{path.name} is not a state dict (found {type(obj).__name__})",
                            code="model_invalid")
    return obj


def load_yaml_safely(path: Path) -> dict:
    """A model YAML with the safe loader plus ``!!python/tuple`` (what published configs use)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda ld, node: tuple(ld.construct_sequence(node)))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.YAMLError as exc:
        raise PipelineError(STAGE, f"{path.name} was refused: not a plain YAML config "
                                   f"({str(exc).splitlines()[0][:200]})", code="model_unsafe") from None
    if not isinstance(data, dict) or "training" not in data or "model" not in data:
        raise PipelineError(STAGE, f"{path.name} is not a model config (needs 'model' and 'training' sections)",
                            code="model_invalid")
    return data


def _vr_arch_size(state: dict) -> int:
    import torch
    nbytes = sum(v.numel() * 4 for v in state.values() if isinstance(v, torch.Tensor))
    kib = math.ceil(nbytes / 1024)
    return min(VR_ARCH_SIZES, key=lambda s: abs(s - kib))


class _Progress:
    """Stands in for ``tqdm`` in the library's architecture modules during one separation:
    reports each loop's share of the work and checks cancel once per chunk."""

    def __init__(self, ctx: StageContext, weights: list[float], start: float = 0.02, end: float = 0.95):
        self.ctx, self.weights, self.start, self.end = ctx, weights, start, end
        self.loop = -1
        self.done = 0.0
        self.last = 0.0
        self.reported = start

    def __call__(self, iterable=None, *_a, **_k):
        self.loop += 1
        w = self.weights[self.loop] if self.loop < len(self.weights) else 0.0
        items = list(iterable) if iterable is not None else []
        n = max(1, len(items))
        base = self.done
        for i, item in enumerate(items):
            self.ctx.check_cancel()
            yield item
            self._report(base + w * (i + 1) / n)
        self.done = base + w

    def _report(self, frac: float) -> None:
        value = self.start + (self.end - self.start) * min(1.0, frac)
        now = time.monotonic()
        if value > self.reported and (now - self.last >= 0.2 or value >= self.end):
            self.reported, self.last = value, now
            self.ctx.progress(value)
        else:
            self.ctx.check_cancel()


_LOOP_WEIGHTS = {
    "MDX": [0.93, 0.07],             # demix, then the cheap match-mix pass
    "VR": [0.05, 0.02, 0.93],        # band spectrograms, windows, model batches
    "VR_TTA": [0.04, 0.01, 0.47, 0.01, 0.47],
    "MDXC": [1.0],
}


@contextlib.contextmanager
def _hook_tqdm(module, progress):
    old = module.tqdm
    module.tqdm = progress
    try:
        yield
    finally:
        module.tqdm = old


def _offline_separator_class():
    from .._compat import import_audio_separator

    Separator = import_audio_separator().Separator

    class OfflineSeparator(Separator):
        """The library's Separator with model discovery done locally (by the engine) and every
        download refused."""

        uvr_resolved: tuple | None = None
        uvr_model_data: dict | None = None

        def download_file_if_not_exists(self, url, output_path):
            if os.path.isfile(output_path):
                return
            raise DownloadRefused(f"{os.path.basename(output_path)} is missing in {os.path.dirname(output_path)} "
                                  f"and nothing is downloaded (the library wanted {url})")

        def check_ffmpeg_installed(self):
            """Stems come back in memory (never through pydub/ffmpeg): no ffmpeg needed."""

        def list_supported_model_files(self):
            raise DownloadRefused("the online model list is never read")

        def download_model_files(self, model_filename):
            if self.uvr_resolved is None:
                raise DownloadRefused(f"{model_filename} was not resolved locally")
            return self.uvr_resolved

        def load_model_data_using_hash(self, model_path):
            if self.uvr_model_data is None:
                raise DownloadRefused(f"no model data resolved for {model_path}")
            return dict(self.uvr_model_data)

    return OfflineSeparator


@register("separator", "uvr")
class UvrSeparator:
    name = "uvr"

    def __init__(self, model: str = "", model_dir: str | Path | None = None, device: str | None = None,
                 half: bool | None = None, config: str | Path | None = None, model_data: dict | None = None,
                 arch: str | None = None, vocal_stem: str | None = None, residual: bool = True,
                 segment_size: int | None = None, overlap: float | None = None, batch_size: int | None = None,
                 hop_length: int = 1024, enable_denoise: bool = False, mdx_runtime: str | None = None,
                 window_size: int = 512, aggression: int = 5, enable_tta: bool = False,
                 high_end_process: bool = False, post_process: bool = False):
        if not model:
            raise PipelineError(STAGE, "the uvr separator needs a model file (engine option 'model', "
                                       "e.g. COVER_UVR_MODEL=HP2_all_vocals.pth)", code="model_missing")
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.model_path = self._find_model(str(model))
        self.model_label = self.model_path.name
        self.vocal_stem = vocal_stem
        self.residual = bool(residual)
        self.arch = self._arch(arch, config)
        self.device = device or default_device()
        self.half = use_half(self.device) if half is None else (bool(half) and use_half(self.device))
        self.config_path: Path | None = None
        state = None

        # 1. every file present and safe, before the library is touched
        if self.arch == "MDXC":
            self.config_path = self._find_config(config)
            yaml_data = load_yaml_safely(self.config_path)
            model_cfg = yaml_data.get("model") or {}
            self.is_roformer = "freqs_per_bands" in model_cfg or "num_bands" in model_cfg
            self.lib_sr = int((yaml_data.get("audio") or {}).get("sample_rate") or 44100)
        else:
            self.is_roformer = False
            self.lib_sr = 44100
        if self.model_path.suffix.lower() != ".onnx":
            state = check_safe_torch_file(self.model_path)
        if self.arch in ("VR", "MDX"):
            self.model_data = dict(model_data) if model_data else self._model_data_by_hash()
            self._check_model_data()
        else:
            self.model_data = None

        # 2. the library, with downloads refused
        self._load(state, segment_size=segment_size, overlap=overlap, batch_size=batch_size, hop_length=hop_length,
                   enable_denoise=enable_denoise, mdx_runtime=mdx_runtime, window_size=window_size,
                   aggression=aggression, enable_tta=enable_tta, high_end_process=high_end_process,
                   post_process=post_process)
        del state
        inst = self.library.model_instance
        self.primary_stem = str(inst.primary_stem_name)
        self.secondary_stem = str(inst.secondary_stem_name)
        from importlib.metadata import version as _v
        self.version = f"audio-separator-{_v('audio-separator')}-{self.arch.lower()}-{self.model_path.stem}"
        self.loads = 1

    # ---- files -------------------------------------------------------------------------
    def _find_model(self, model: str) -> Path:
        p = Path(model).expanduser()
        folder = self.model_dir
        if p.is_absolute():
            if p.is_file():
                return p
            raise _missing(p, p.parent, "the uvr model file")
        if folder is None:
            raise PipelineError(STAGE, f"the uvr model {model} is a bare name but no model folder is set "
                                       "(engine option 'model_dir', e.g. COVER_MODELS_ROOT/uvr)", code="model_missing")
        if p.suffix.lower() in MODEL_EXTS or p.suffix.lower() == ".yaml":
            cand = folder / p
            if cand.is_file():
                return cand
            raise _missing(cand, folder, "the uvr model file; nothing is downloaded")
        for ext in MODEL_EXTS:  # COVER_UVR_MODEL=HP2_all_vocals (the inherited name has no extension)
            cand = folder / f"{model}{ext}"
            if cand.is_file():
                return cand
        raise PipelineError(STAGE, f"{model}.pth / .onnx / .ckpt is missing: put the model file in {folder} "
                                   "(the uvr model file; nothing is downloaded)", code="model_missing")

    def _arch(self, arch: str | None, config) -> str:
        ext = self.model_path.suffix.lower()
        if ext in (".yaml", ".th"):
            raise PipelineError(STAGE, f"{self.model_path.name} is a Demucs model: use the 'demucs' separator "
                                       "(the uvr engine does not unpickle Demucs packages)", code="model_unsupported")
        if arch:
            a = {"vr": "VR", "mdx": "MDX", "mdxc": "MDXC", "roformer": "MDXC", "mdx23c": "MDXC"}.get(str(arch).lower())
            if a is None:
                raise PipelineError(STAGE, f"unknown uvr arch {arch!r} (vr, mdx, mdxc, roformer)", code="invalid_option")
            return a
        if config or ext == ".ckpt":
            return "MDXC"
        if ext == ".onnx":
            return "MDX"
        if ext == ".pth":
            return "VR"
        raise PipelineError(STAGE, f"{self.model_path.name}: unknown uvr model format (.pth VR, .onnx MDX-Net, "
                                   ".ckpt + YAML MDX23C/Roformer)", code="model_unsupported")

    def _data_dirs(self) -> list[Path]:
        dirs = [d for d in (self.model_dir, self.model_path.parent) if d is not None]
        return list(dict.fromkeys(dirs))

    def _find_config(self, config) -> Path:
        folder = self.model_dir or self.model_path.parent
        if config:
            p = Path(config).expanduser()
            p = p if p.is_absolute() else folder / p
            if not p.is_file():
                raise _missing(p, p.parent, f"the YAML config of {self.model_label}")
            return p
        names = []
        for d in self._data_dirs():
            checks = d / DOWNLOAD_CHECKS
            if checks.is_file():
                try:
                    names += _yaml_names(json.loads(checks.read_text(encoding="utf-8")), self.model_label)
                except (ValueError, OSError):
                    log.warning("%s is not valid JSON; ignored", checks)
        try:
            with resources.files("audio_separator").joinpath("models.json").open(encoding="utf-8") as f:
                names += _yaml_names(json.load(f), self.model_label)
        except Exception:  # pragma: no cover - the file ships in the package
            pass
        names.append(self.model_path.stem + ".yaml")
        names = list(dict.fromkeys(names))
        for name in names:
            for d in self._data_dirs():
                if (d / name).is_file():
                    return d / name
        raise _missing(names[0], folder, f"the YAML config {self.model_label} was trained with; or name it with "
                                         "the engine option 'config'")

    def _model_data_by_hash(self) -> dict:
        from .._compat import import_audio_separator
        import_audio_separator()
        json_name = VR_DATA if self.arch == "VR" else MDX_DATA
        section = "vr_model_data" if self.arch == "VR" else "mdx_model_data"
        source = ("UVR's vr_model_data/model_data_new.json" if self.arch == "VR"
                  else "UVR's mdx_model_data/model_data_new.json")
        files = [d / json_name for d in self._data_dirs() if (d / json_name).is_file()]
        try:
            with resources.files("audio_separator").joinpath("model-data.json").open(encoding="utf-8") as f:
                bundled = json.load(f).get(section, {})
        except Exception:  # pragma: no cover
            bundled = {}
        h = _library_hash(self.model_path)
        self.model_hash = h
        if not files:
            if h in bundled:
                return dict(bundled[h])
            folder = self.model_dir or self.model_path.parent
            raise _missing(json_name, folder, f"the {self.arch} model data the library looks {self.model_label}'s "
                                              f"hash up in: {source}, saved under this name; or give the entry "
                                              "with the engine option 'model_data'")
        table: dict = {}
        for p in files:
            try:
                table.update(json.loads(p.read_text(encoding="utf-8")))
            except (ValueError, OSError) as exc:
                raise PipelineError(STAGE, f"{p} is not valid JSON ({exc})", code="model_invalid") from None
        table.update(bundled)  # the library's own entries take precedence, as in the library
        if h not in table:
            raise PipelineError(STAGE, f"{self.model_label} (hash {h}) has no entry in {files[0]}: add its "
                                       f"parameters under that hash, or give them with the engine option "
                                       "'model_data'", code="model_unknown")
        return dict(table[h])

    def _check_model_data(self) -> None:
        need = ["vr_model_param"] if self.arch == "VR" else [
            "compensate", "mdx_dim_f_set", "mdx_dim_t_set", "mdx_n_fft_scale_set"]
        lacking = [k for k in need if k not in self.model_data]
        if lacking:
            raise PipelineError(STAGE, f"the model data of {self.model_label} lacks {', '.join(lacking)}",
                                code="model_invalid")
        if self.arch == "VR":
            from .._compat import import_audio_separator
            pkg = Path(import_audio_separator().__file__).parent
            param = pkg / "uvr_lib_v5" / "vr_network" / "modelparams" / f"{self.model_data['vr_model_param']}.json"
            if not param.is_file():
                raise PipelineError(STAGE, f"the model data of {self.model_label} names the VR parameters "
                                           f"{self.model_data['vr_model_param']!r}, which audio-separator does not have",
                                    code="model_invalid")

    # ---- loading -----------------------------------------------------------------------
    def _load(self, state, *, segment_size, overlap, batch_size, hop_length, enable_denoise, mdx_runtime,
              window_size, aggression, enable_tta, high_end_process, post_process) -> None:
        import torch
        import onnxruntime as ort

        cls = _offline_separator_class()
        roformer = self.is_roformer  # native float16 is verified for Roformers only; MDX23C gets autocast
        mdx_params = {"hop_length": int(hop_length), "segment_size": segment_size or 0,
                      "overlap": 0.25 if overlap is None else float(overlap), "batch_size": batch_size or 1,
                      "enable_denoise": bool(enable_denoise)}
        if self.arch == "MDX":
            dim_t = 2 ** int(self.model_data["mdx_dim_t_set"])
            mdx_params["segment_size"] = int(segment_size or dim_t)
        vr_params = {"batch_size": batch_size or 1, "window_size": int(window_size), "aggression": int(aggression),
                     "enable_tta": bool(enable_tta), "enable_post_process": bool(post_process),
                     "post_process_threshold": 0.2, "high_end_process": bool(high_end_process)}
        mdxc_params = {"segment_size": int(segment_size or 256), "override_model_segment_size": bool(segment_size),
                       "batch_size": batch_size, "overlap": None if overlap is None else int(overlap),
                       "pitch_shift": 0}
        self.enable_tta = bool(enable_tta)
        kw: dict[str, Any] = {}
        if self.half:
            kw["use_native_fp16" if roformer else "use_autocast"] = True
        try:
            with warnings.catch_warnings():  # the library sets a process-wide "ignore" filter
                lib = cls(log_level=logging.WARNING, model_file_dir=str(self.model_dir or self.model_path.parent),
                          output_dir=None, sample_rate=self.lib_sr, normalization_threshold=1.0,
                          amplification_threshold=0.0, mdx_params=mdx_params, vr_params=vr_params,
                          mdxc_params=mdxc_params, **kw)
        except Exception as exc:
            raise PipelineError(STAGE, f"audio-separator could not start ({exc.__class__.__name__}: "
                                       f"{str(exc)[:200]})", code="engine_error") from None
        lib.model_file_dir = str(self.model_dir or self.model_path.parent)
        dev = torch.device(self.device)
        lib.torch_device, lib.torch_device_cpu, lib.torch_device_mps = dev, torch.device("cpu"), None
        providers = ort.get_available_providers()
        cuda_ep = dev.type == "cuda" and "CUDAExecutionProvider" in providers
        lib.onnx_execution_provider = ["CUDAExecutionProvider"] if cuda_ep else ["CPUExecutionProvider"]
        self.mdx_runtime = mdx_runtime or ("torch" if dev.type == "cuda" and not cuda_ep else "onnxruntime")
        lib.uvr_resolved = (self.model_label, self.arch, self.model_path.stem, str(self.model_path),
                            str(self.config_path) if self.config_path else None)
        lib.uvr_model_data = self.model_data
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lib.load_model(self.model_label)
                inst = lib.model_instance
                if self.arch == "VR":
                    inst._ensure_model_loaded(_vr_arch_size(state))
                elif self.arch == "MDX" and self.mdx_runtime == "torch" and not isinstance(inst.model_run, torch.nn.Module):
                    import onnx2torch
                    inst.model_run = onnx2torch.convert(str(self.model_path)).to(dev).eval()
                    inst.uses_pytorch_inference = True
                    inst.resolve_execution_policy("mdx")  # autocast applies now that torch runs it
        except DownloadRefused as exc:
            raise PipelineError(STAGE, f"audio-separator wanted to download a file: {exc}",
                                code="model_missing") from None
        except SystemExit:  # the library exits on a checkpoint its MDXC loader cannot read
            raise PipelineError(STAGE, f"{self.model_label} does not load as a {self.arch} model with "
                                       f"{self.config_path.name if self.config_path else 'its model data'} "
                                       "(corrupt, or the config does not match the weights)",
                                code="model_invalid") from None
        except PipelineError:
            raise
        except Exception as exc:
            log.warning("uvr model %s did not load", self.model_path, exc_info=True)
            raise PipelineError(STAGE, f"{self.model_label} does not load as a {self.arch} model "
                                       f"({exc.__class__.__name__}: {str(exc)[:300]})", code="model_invalid") from None
        self.library = lib
        self.precision = str(getattr(lib, "effective_precision", "fp32"))

    # ---- separation --------------------------------------------------------------------
    def stems(self, song: np.ndarray, sr: int, ctx: StageContext) -> dict[str, np.ndarray]:
        """Every output stem of the model, by the library's stem name, at the song's rate,
        channels and length (float32, ``(channels, samples)``)."""
        import soundfile as sf
        from audio_separator.separator.architectures import mdx_separator, mdxc_separator, vr_separator

        song = np.asarray(song, dtype=np.float32)
        if song.ndim == 1:
            song = song[None, :]
        ch, n = song.shape
        x = song if ch == 2 else (np.repeat(song, 2, axis=0) if ch == 1 else song[:2])
        x = resample(x, sr, self.lib_sr)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if n == 0 or peak <= 1e-9:
            return {self.primary_stem: np.zeros_like(song), self.secondary_stem: song.copy()}
        gain = 1.0 / peak  # full scale in: the library's own normalisation then leaves it alone
        module = {"VR": vr_separator, "MDX": mdx_separator, "MDXC": mdxc_separator}[self.arch]
        weights = _LOOP_WEIGHTS["VR_TTA" if self.arch == "VR" and self.enable_tta else self.arch]
        captured: dict[str, np.ndarray] = {}
        tmp = ctx.tmpdir / f"uvr-{os.getpid()}-{threading.get_ident()}.wav"
        sf.write(str(tmp), np.ascontiguousarray((x * gain).T), self.lib_sr, subtype="FLOAT")
        del x
        ctx.progress(0.02)
        try:
            with _LOCK:
                inst = self.library.model_instance

                def final_process(stem_path, source, stem_name):
                    captured[str(stem_name)] = np.asarray(source, dtype=np.float32)
                    return {stem_name: source}

                inst.final_process = final_process
                try:
                    with _hook_tqdm(module, _Progress(ctx, weights)), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self.library.separate(str(tmp))
                finally:
                    del inst.final_process
        except (Canceled, PipelineError):
            raise
        except DownloadRefused as exc:
            raise PipelineError(STAGE, f"audio-separator wanted to download a file: {exc}", code="model_missing") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if not captured:
            raise PipelineError(STAGE, f"the uvr model {self.model_label} returned no stems", code="engine_error")
        out = {}
        for name, src in captured.items():
            y = np.asarray(src, dtype=np.float32)
            y = y.T if y.ndim == 2 and y.shape[0] != 2 and y.shape[1] <= 2 else y
            y = y[None, :] if y.ndim == 1 else y
            y = resample(y / gain, self.lib_sr, sr)
            if ch == 1:
                y = y.mean(axis=0, keepdims=True)
            elif y.shape[0] < ch:
                y = np.repeat(y[:1], ch, axis=0)
            if y.shape[1] < n:
                y = np.pad(y, ((0, 0), (0, n - y.shape[1])))
            out[name] = np.nan_to_num(np.ascontiguousarray(y[:ch, :n], dtype=np.float32), nan=0.0, posinf=0.0,
                                      neginf=0.0)
        return out

    def split(self, audio: np.ndarray, sr: int, ctx: StageContext, role: str = "vocals",
              residual: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(kept, rest)`` for ``role``: ``vocals`` (vocal / instrumental), ``lead`` (karaoke
        model on a vocal: lead / backing) or ``dry`` (de-reverb/de-echo: dry / removed part).
        With ``residual`` (default: the engine's), ``rest`` is the input minus ``kept``."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        stems = self.stems(audio, sr, ctx)
        names = list(stems)
        keep = pick_stem(names, role, self.vocal_stem, self.model_label)
        kept = stems[keep]
        if self.residual if residual is None else residual:
            rest = (audio - kept).astype(np.float32)
        else:
            others = [stems[k] for k in names if k != keep]
            rest = np.sum(others, axis=0).astype(np.float32) if others else np.zeros_like(kept)
        ctx.info.update(engine=self.name, model=self.model_label, arch=self.arch, device=self.device,
                        precision=self.precision, stems=names, kept_stem=keep, role=role,
                        residual=bool(self.residual if residual is None else residual))
        ctx.progress(1.0)
        return kept, rest

    def separate(self, song: np.ndarray, sr: int, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        return self.split(song, sr, ctx, "vocals")


def _library_hash(path: Path) -> str:
    """The MD5 audio-separator keys model data by (its own function, called without a Separator)."""
    from .._compat import import_audio_separator
    Separator = import_audio_separator().Separator
    fake = Separator.__new__(Separator)
    fake.logger = log
    return Separator.get_model_hash(fake, str(path))


def _yaml_names(listing: dict, model_file: str) -> list[str]:
    names = []
    for key, group in (listing or {}).items():
        if not isinstance(group, dict) or not key.endswith("_list"):
            continue
        for files in group.values():
            if isinstance(files, dict) and model_file in files and str(files[model_file]).endswith(".yaml"):
                names.append(str(files[model_file]))
    return names
