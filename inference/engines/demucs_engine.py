"""Separator ``demucs``: a user-brought Demucs checkpoint (e.g. htdemucs) from a local folder.

Options: ``repo`` (folder holding ``NAME-<sha8>.th`` files or a bag ``NAME.yaml``, as
``demucs.pretrained.get_model(name, repo=Path)`` expects), ``name`` (default ``htdemucs``),
``segment_seconds`` (None: the model's own), ``overlap`` (0.25), ``shifts`` (0), ``device``
(None: :func:`inference.device.default_device`) and ``half`` (float16, honoured on CUDA only).
Nothing is downloaded: without ``repo`` the engine refuses to load.

The model is loaded once (the registry keeps the instance) and run through demucs'
own ``apply_model`` (chunks with overlap and cross-fade), whose per-chunk callback reports
progress and lets a cancel request stop between chunks.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..audio import resample
from ..context import StageContext
from ..device import default_device, use_half
from ..errors import PipelineError
from ..registry import register
from ..safe_pickle import RefusedModelFile, restricted_torch_load

log = logging.getLogger("inference.demucs")


@register("separator", "demucs")
class DemucsSeparator:
    name = "demucs"

    def __init__(self, repo: str | Path | None = None, name: str = "htdemucs",
                 segment_seconds: float | None = None, overlap: float = 0.25, shifts: int = 0,
                 device: str | None = None, half: bool = False):
        if not repo:
            raise PipelineError("separate", "the demucs separator needs a local model folder "
                                "(engine option 'repo'); nothing is downloaded", code="model_missing")
        self.repo = Path(repo)
        self.model_name = name
        self.overlap = float(overlap)
        self.shifts = int(shifts)
        self.device = device or default_device()
        if not self.repo.is_dir():
            raise PipelineError("separate", f"demucs model folder {self.repo} does not exist",
                                code="model_missing")
        try:
            from demucs.repo import ModelLoadingError
        except ImportError as exc:  # pragma: no cover - demucs is a requirement
            raise PipelineError("separate", f"demucs is not installed ({exc})", code="engine_missing") from None
        try:
            model = load_demucs_safely(self.repo, name)
        except RefusedModelFile as exc:
            raise PipelineError("separate", f"demucs model {name!r} in {self.repo} was refused: {exc}",
                                code="model_unsafe") from None
        except ModelLoadingError as exc:
            raise PipelineError("separate", f"demucs model {name!r} not usable from {self.repo}: {exc}",
                                code="model_missing") from None
        except SystemExit:  # demucs' fatal() exits on a bad repo
            raise PipelineError("separate", f"demucs could not open model folder {self.repo}",
                                code="model_missing") from None
        except Exception as exc:
            raise PipelineError("separate", f"demucs model {name!r} in {self.repo} is invalid "
                                f"({exc.__class__.__name__}: {str(exc)[:200]})", code="model_invalid") from None
        if "vocals" not in list(model.sources):
            raise PipelineError("separate", f"demucs model {name!r} has no 'vocals' source "
                                f"(sources: {', '.join(model.sources)})", code="model_invalid")
        model.eval()
        self.half = bool(half) and use_half(self.device)  # half precision only ever on CUDA
        model.to(self.device)
        if self.half:
            model.half()
        self.model = model
        self.samplerate = int(model.samplerate)
        self.channels = int(model.audio_channels)
        self.vocal_index = list(model.sources).index("vocals")
        seg = segment_seconds
        model_seg = _model_segment(model)
        if seg is not None and model_seg is not None:
            seg = min(float(seg), model_seg)  # HTDemucs cannot run past its training length
        self.segment = seg
        self.version = f"demucs-{name}"

    def separate(self, song: np.ndarray, sr: int, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from demucs.apply import BagOfModels, apply_model

        song = np.asarray(song, dtype=np.float32)
        if song.ndim == 1:
            song = song[None, :]
        ch, n = song.shape
        ctx.info.update(engine=self.name, model=self.model_name, device=self.device, half=self.half,
                        samplerate=self.samplerate, segment_seconds=self.segment or _model_segment(self.model),
                        overlap=self.overlap, shifts=self.shifts)
        if n == 0 or not np.any(song):
            ctx.progress(1.0)
            return np.zeros_like(song), song.copy()
        x = resample(song, sr, self.samplerate)
        if ch < self.channels:
            x = np.repeat(x.mean(axis=0, keepdims=True), self.channels, axis=0)
        elif ch > self.channels:
            x = x[: self.channels] if self.channels > 1 else x.mean(axis=0, keepdims=True)
        length = x.shape[1]
        wav = torch.from_numpy(np.ascontiguousarray(x))
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        wav = (wav - mean) / std  # demucs normalizes the same way in its own CLI/api

        seg = self.segment or _model_segment(self.model) or 10.0
        stride = max(1, int((1 - self.overlap) * int(seg * self.samplerate)))
        models = len(self.model.models) if isinstance(self.model, BagOfModels) else 1
        total = models * max(1, self.shifts) * max(1, -(-length // stride))
        done = [0]

        def callback(d: dict) -> None:
            if d.get("state") == "end":
                done[0] += 1
            ctx.progress(min(0.99, done[0] / total))

        ctx.progress(0.0)
        dtype = torch.float16 if self.half else torch.float32
        with torch.no_grad():
            out = apply_model(self.model, wav[None].to(dtype), shifts=self.shifts, split=True,
                              overlap=self.overlap, device=self.device, segment=self.segment,
                              callback=callback)
        voc = out[0, self.vocal_index].float() * std + mean
        voc = voc.cpu().numpy()
        # back to the song's layout: channels, then rate, then exact length
        if ch == 1:
            voc = voc.mean(axis=0, keepdims=True)
        elif voc.shape[0] < ch:
            voc = np.repeat(voc, ch, axis=0)
        voc = resample(voc, self.samplerate, sr)
        if voc.shape[1] < n:
            voc = np.pad(voc, ((0, 0), (0, n - voc.shape[1])))
        vocals = np.ascontiguousarray(voc[:, :n], dtype=np.float32)
        vocals = np.nan_to_num(vocals, nan=0.0, posinf=0.0, neginf=0.0)
        ctx.progress(1.0)
        return vocals, (song - vocals).astype(np.float32)


# The classes a demucs model package may name (its ``klass`` and a Fraction segment); demucs'
# own loader unpickles with weights_only=False, which would run whatever a file names.
_DEMUCS_CLASSES = {
    "demucs.htdemucs.HTDemucs": ("demucs.htdemucs", "HTDemucs"),
    "demucs.hdemucs.HDemucs": ("demucs.hdemucs", "HDemucs"),
    "demucs.demucs.Demucs": ("demucs.demucs", "Demucs"),
    "fractions.Fraction": ("fractions", "Fraction"),
}


def _allowed_demucs_classes() -> dict[str, type]:
    import importlib

    out = {}
    for full, (module, name) in _DEMUCS_CLASSES.items():
        try:
            out[full] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return out


def load_demucs_safely(repo: Path, name: str):
    """demucs' ``get_model(name, repo=...)`` (a single ``NAME[-sha8].th`` or a ``NAME.yaml`` bag),
    with every ``.th`` read by :func:`inference.safe_pickle.restricted_torch_load`: tensors,
    plain config and demucs' own model classes only, checksum checked as demucs does."""
    from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo, check_checksum
    from demucs.states import load_model

    allow = _allowed_demucs_classes()

    class SafeLocalRepo(LocalRepo):
        def get_model(self, sig: str):
            from demucs.repo import ModelLoadingError

            try:
                file = self._models[sig]
            except KeyError:
                raise ModelLoadingError(f"Could not find pre-trained model with signature {sig}.") from None
            if sig in self._checksums:
                check_checksum(file, self._checksums[sig])
            package = restricted_torch_load(Path(file), "demucs model package", allow=allow)
            if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
                raise RefusedModelFile(f"{Path(file).name} is not a demucs model package "
                                       "(needs klass, args, kwargs, state)")
            if package["klass"] not in allow.values():
                raise RefusedModelFile(f"{Path(file).name}: its model class is not a demucs model")
            return load_model(package)

    model_repo = SafeLocalRepo(repo)
    model = AnyModelRepo(model_repo, BagOnlyRepo(repo, model_repo)).get_model(name)
    model.eval()
    return model


def _model_segment(model) -> float | None:
    from demucs.apply import BagOfModels
    if isinstance(model, BagOfModels):
        segs = [float(m.segment) for m in model.models if getattr(m, "segment", None)]
        return min(segs) if segs else None
    seg = getattr(model, "segment", None)
    return float(seg) if seg else None
