"""The voice-model registry: rules for VoiceModel rows (files, safe weights, one default), the
model a job uses, and the "test load" RQ job.

A job's ``model_id`` resolves in this order:

1. a registered VoiceModel: it must be enabled; its engine becomes the job's converter (unless
   the client chose one) and its defaults fill the parameters the client left out;
2. not registered: the rules inherited from the old system
   (:func:`inference.models.resolve_gpt_sovits_model` under GPT_SOVITS_PROJECT_ROOT:
   ``weight.json``, ``trained/<model_id>``, newest ``GPT_weights*`` + ``SoVITS_weights*``);
3. otherwise the request is a 400 naming ``model_id``.

No ``model_id`` means the default model (when one is registered).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .errors import InvalidParameter
from .models import VoiceModel

log = logging.getLogger(__name__)

E = VoiceModel.Engine
GPT_SOVITS_ENGINES = (E.GPT_SOVITS_COMMAND, E.GPT_SOVITS_API)
FILE_FIELDS = ("gpt_weights", "sovits_weights", "reference_audio")
TEST_JOB_FUNC = "covers.voice_models.run_voice_model_test"
TEST_JOB_TIMEOUT = 600


class ModelInvalid(InvalidParameter):
    """Registry validation failed; ``errors`` maps form field -> message (``field`` is the first)."""

    def __init__(self, errors: dict[str, str]):
        first = next(iter(errors))
        super().__init__(errors[first], field=first, code="invalid_model")
        self.errors = errors


# --------------------------------------------------------------------------------------------
# paths and weights
# --------------------------------------------------------------------------------------------
def models_root() -> Path:
    return Path(settings.COVER_MODELS_ROOT).expanduser().resolve()


def allowed_roots() -> list[Path]:
    roots = [models_root()]
    extra = list(getattr(settings, "COVER_MODELS_ALLOWED_ROOTS", []) or [])
    if settings.GPT_SOVITS_PROJECT_ROOT:
        extra.append(settings.GPT_SOVITS_PROJECT_ROOT)
    for r in extra:
        p = Path(r).expanduser().resolve()
        if p not in roots:
            roots.append(p)
    return roots


def resolve_model_path(value: str, *, what: str = "file") -> Path:
    """The real path of ``value`` (relative: under COVER_MODELS_ROOT) if it is an existing file
    inside an allowed root; ValueError with a readable message otherwise. Symlinks are followed
    before the check, so a link cannot point outside the roots."""
    raw = (value or "").strip()
    if not raw:
        raise ValueError(f"no {what} given")
    if "\x00" in raw:
        raise ValueError(f"{what} path contains a NUL byte")
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = models_root() / p
    real = p.resolve()
    roots = allowed_roots()
    if not any(real.is_relative_to(r) for r in roots):
        raise ValueError(f"{what} {raw} is outside the allowed model folders "
                         f"({', '.join(str(r) for r in roots)})")
    if not real.is_file():
        raise ValueError(f"{what} {raw} does not exist (looked for {real})")
    return real


def check_weights_safe(path: Path) -> None:
    """Load ``path`` with ``torch.load(weights_only=True)``: tensors and plain containers only, so
    a pickle that would run code is refused. GPT-SoVITS v3+ SoVITS files carry a changed 2-byte
    zip header (its ``load_sovits_new``); that is restored in memory first. ValueError if unsafe
    or unreadable."""
    import pickle

    import torch

    with open(path, "rb") as fh:
        head = fh.read(4)
    try:
        if len(head) == 4 and head[:2] != b"PK" and head[2:4] == b"\x03\x04":
            data = bytearray(path.read_bytes())
            data[:2] = b"PK"
            torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        else:
            torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("Unsupported")), None)
        if why is None:
            why = next((ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in lines
                        if "WeightsUnpickler error:" in ln), "") or (lines[0] if lines else exc.__class__.__name__)
        why = why.split(". Please use")[0]
        raise ValueError(f"{path.name} is not a plain weights file and was refused: loading it would run "
                         f"code or build arbitrary objects ({why[:300]})") from None
    except Exception as exc:
        raise ValueError(f"{path.name} could not be loaded as weights ({exc.__class__.__name__}: "
                         f"{str(exc)[:300]})") from None


RVC_PARAM_RANGES = {"index_rate": (0.0, 1.0), "protect": (0.0, 0.5), "rms_mix_rate": (0.0, 1.0),
                    "filter_radius": (0, 7)}
F0_METHODS = ("rmvpe", "crepe")
FILE_ENGINES = (E.RVC, E.UVR, E.DEMUCS)


def check_engine_params(params: dict, *, field_name: str = "engine_defaults") -> dict:
    """RVC per-job parameters (index_rate, protect, rms_mix_rate, filter_radius, f0_method): a clean
    copy, or InvalidParameter naming the parameter."""
    if not isinstance(params, dict):
        raise InvalidParameter(f"{field_name} must be a JSON object", field=field_name)
    out = {}
    for name, value in params.items():
        if name == "f0_method":
            if value not in F0_METHODS:
                raise InvalidParameter(f"{field_name}: f0_method must be one of {', '.join(F0_METHODS)}",
                                       field=field_name)
            out[name] = value
            continue
        if name not in RVC_PARAM_RANGES:
            raise InvalidParameter(f"{field_name}: unknown parameter {name!r} (known: "
                                   f"{', '.join([*RVC_PARAM_RANGES, 'f0_method'])})", field=field_name)
        lo, hi = RVC_PARAM_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise InvalidParameter(f"{field_name}: {name} must be a number within {lo}..{hi}", field=field_name)
        out[name] = int(value) if name == "filter_radius" else float(value)
    return out


def _read_facts(model: VoiceModel, paths: dict[str, Path], errors: dict[str, str]) -> None:
    """Fill kind / engine / sample_rate / version / sha256 / facts from the files themselves."""
    from inference.model_files import CONVERTER_KINDS, SEPARATOR_KINDS, ModelFileError, inspect_model_file

    try:
        facts = inspect_model_file(paths["model_file"], config=paths.get("config_file"))
    except ModelFileError as exc:
        errors["model_file"] = str(exc)
        return
    if facts.kind in ("content-encoder", "rmvpe", "index"):
        where = {"content-encoder": "COVER_RVC_CONTENT_ENCODER", "rmvpe": "COVER_RVC_RMVPE",
                 "index": "the index_file of an RVC voice"}[facts.kind]
        errors["model_file"] = (f"{paths['model_file'].name} is a {facts.kind} file, not a voice or separator "
                                f"model: it belongs in {where}")
        return
    if facts.kind == "gpt-sovits":
        errors["model_file"] = (f"{paths['model_file'].name} is a GPT-SoVITS file: register it with the "
                                "gpt-sovits engines (GPT weights + SoVITS weights)")
        return
    model.kind, model.sha256 = facts.kind, facts.sha256
    model.sample_rate, model.version = facts.sample_rate, facts.version[:64]
    model.facts = {**facts.as_dict(), "file": paths["model_file"].name}
    model.engine = facts.engine
    if facts.kind in CONVERTER_KINDS:
        if model.step != VoiceModel.Step.VOICE:
            errors["step"] = "a voice model's step is 'voice'"
    elif facts.kind in SEPARATOR_KINDS:
        if model.step == VoiceModel.Step.VOICE:
            model.step = VoiceModel.Step.SEPARATE
        if model.is_default:
            errors["is_default"] = "only a voice model can be the default model"
        if facts.kind in ("roformer", "mdxc") and "config_file" not in paths:
            from inference.model_files import sibling_config

            beside = sibling_config(paths["model_file"])
            if beside is not None:
                paths["config_file"] = beside
                model.config_file = str(beside)
            else:
                errors["config_file"] = (f"a {facts.kind} checkpoint needs its YAML config: name it as config_file "
                                         f"or put {paths['model_file'].stem}.yaml beside the checkpoint")
    if "index_file" in paths:
        if facts.kind != "rvc":
            errors["index_file"] = "only RVC voices take an .index file"
        else:
            try:
                index = inspect_model_file(paths["index_file"])
            except ModelFileError as exc:
                errors["index_file"] = str(exc)
            else:
                if index.kind != "index":
                    errors["index_file"] = f"{paths['index_file'].name} is not a FAISS .index file"
                elif index.details.get("dim") != facts.details.get("feature_dim"):
                    errors["index_file"] = (f"the index holds {index.details.get('dim')}-dim features but the "
                                            f"voice is RVC {facts.version} ({facts.details.get('feature_dim')}-dim)")
                else:
                    model.facts["index"] = {"file": paths["index_file"].name, "sha256": index.sha256,
                                            **index.details}


def voice_model_validate(*, model: VoiceModel, load_weights: bool = True) -> dict[str, Path]:
    """Check the row's engine, parameters and files. Returns the resolved paths; raises
    :class:`ModelInvalid` with every problem found (field -> message).

    RVC and UVR-family models name a ``model_file``: what it is (kind, engine, rate, version,
    sha256) is read from the file when ``load_weights`` (never executing code in it)."""
    errors: dict[str, str] = {}
    paths: dict[str, Path] = {}
    if model.engine not in E.values:
        errors["engine"] = f"unknown engine; one of {', '.join(E.values)}"
    if not -24 <= float(model.default_pitch_shift) <= 24:
        errors["default_pitch_shift"] = "pitch shift must be within -24..24 semitones"
    if not 0 <= float(model.default_reverb) <= 1:
        errors["default_reverb"] = "reverb must be within 0..1"
    if model.is_default and not model.enabled:
        errors["is_default"] = "the default model must be enabled"
    try:
        model.engine_defaults = check_engine_params(model.engine_defaults or {})
    except InvalidParameter as exc:
        errors["engine_defaults"] = exc.message
    uses_file = model.engine in FILE_ENGINES or bool((model.model_file or "").strip())
    needs_weights = model.engine in GPT_SOVITS_ENGINES and not uses_file
    for name, what in (("gpt_weights", "GPT weights"), ("sovits_weights", "SoVITS weights"),
                       ("reference_audio", "reference clip"), ("model_file", "model file"),
                       ("index_file", "index file"), ("config_file", "config file")):
        value = (getattr(model, name) or "").strip()
        if not value:
            if needs_weights and name in ("gpt_weights", "sovits_weights"):
                errors[name] = f"{what} are required for the {model.engine} engine"
            if uses_file and name == "model_file":
                errors[name] = "a model file is required for RVC and UVR-family models (a path or an upload)"
            continue
        try:
            paths[name] = resolve_model_path(value, what=what)
        except ValueError as exc:
            errors[name] = str(exc)
    if uses_file and "model_file" in paths and load_weights:
        _read_facts(model, paths, errors)
    if load_weights and not uses_file:
        for name in ("gpt_weights", "sovits_weights"):
            if name in paths and name not in errors:
                try:
                    check_weights_safe(paths[name])
                except ValueError as exc:
                    errors[name] = str(exc)
    if errors:
        raise ModelInvalid(errors)
    return paths


def voice_model_store_upload(*, model_id: str, upload, what: str = "file") -> str:
    """Write an uploaded model file to COVER_MODELS_ROOT/uploads/<model_id>/ and return that path
    relative to the models root (what the row stores). The name is reduced to a safe base name."""
    import re

    from django.utils.text import get_valid_filename

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", model_id or ""):
        raise ModelInvalid({"model_id": "set a valid model_id before uploading files"})
    name = get_valid_filename(Path(upload.name or what).name) or what
    folder = models_root() / "uploads" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.part"
    with open(tmp, "wb") as fh:
        for chunk in upload.chunks():
            fh.write(chunk)
    tmp.replace(target)
    return str(target.relative_to(models_root()))


# --------------------------------------------------------------------------------------------
# writes: save with the one-default rule, delete, test load
# --------------------------------------------------------------------------------------------
def voice_model_save(*, model: VoiceModel, load_weights: bool = True) -> VoiceModel:
    """Validate and save. Exactly one default among the models: the first model saved becomes the
    default; making one the default clears the others (in one transaction, rows locked); the
    default cannot be un-defaulted or disabled directly (make another the default instead)."""
    voice_model_validate(model=model, load_weights=load_weights)
    with transaction.atomic():
        others = VoiceModel.objects.select_for_update().exclude(pk=model.pk)
        current_default = others.filter(is_default=True).first()
        voice_model_check_default_change(model=model)
        if current_default is None and model.enabled and model.step == VoiceModel.Step.VOICE:
            model.is_default = True
        if model.is_default:
            others.filter(is_default=True).update(is_default=False)
        model.save()
    return model


def voice_model_check_default_change(*, model: VoiceModel) -> None:
    """The current default stays the default until another model is made the default."""
    if model.pk is None or model.is_default:
        return
    if VoiceModel.objects.filter(pk=model.pk, is_default=True).exists():
        raise ModelInvalid({"is_default": "this is the default model; make another model the default "
                                          "instead (it cannot be unset or disabled directly)"})


def voice_model_set_default(*, model: VoiceModel) -> VoiceModel:
    if not model.enabled:
        raise ModelInvalid({"is_default": f"{model.model_id} is disabled; enable it first"})
    with transaction.atomic():
        list(VoiceModel.objects.select_for_update().all())
        VoiceModel.objects.exclude(pk=model.pk).filter(is_default=True).update(is_default=False)
        VoiceModel.objects.filter(pk=model.pk).update(is_default=True, updated_at=timezone.now())
    model.is_default = True
    return model


def voice_model_delete(*, model: VoiceModel) -> None:
    """Delete; when it was the default, the first remaining enabled model becomes the default."""
    with transaction.atomic():
        list(VoiceModel.objects.select_for_update().all())
        was_default = VoiceModel.objects.filter(pk=model.pk, is_default=True).exists()
        VoiceModel.objects.filter(pk=model.pk).delete()
        if was_default:
            nxt = VoiceModel.objects.filter(enabled=True, step=VoiceModel.Step.VOICE).order_by("model_id").first()
            if nxt is not None:
                VoiceModel.objects.filter(pk=nxt.pk).update(is_default=True)


def voice_model_test_enqueue(*, model: VoiceModel) -> str:
    """Queue a small RQ job that loads the model in a worker (result on the row)."""
    from .queue import cover_queue

    VoiceModel.objects.filter(pk=model.pk).update(last_test_ok=None, last_test_at=None,
                                                  last_test_message="queued: waiting for a worker", last_test_seconds=None)
    job = cover_queue().enqueue_call(func=TEST_JOB_FUNC, args=(model.pk,), timeout=TEST_JOB_TIMEOUT,
                                     result_ttl=3600, failure_ttl=86400,
                                     description=f"test load of voice model {model.model_id}")
    return job.id


def voice_model_test_load(*, model: VoiceModel) -> tuple[str, float | None]:
    """Load the model the way a job would and, for RVC and UVR-family models, run a real
    1-second inference with it; returns a one-line description and the inference's seconds
    (None when no inference ran), raises on failure."""
    if model.engine == E.WORLD:
        from inference.registry import get_engine

        engine = get_engine("converter", "world")
        return f"built the {getattr(engine, 'name', 'world')} converter", None
    paths = voice_model_validate(model=model, load_weights=model.engine in FILE_ENGINES)
    if model.engine in FILE_ENGINES:
        return _test_inference(model, paths)
    loaded = []
    for name in ("gpt_weights", "sovits_weights"):
        check_weights_safe(paths[name])
        loaded.append(f"{paths[name].name} ({paths[name].stat().st_size / 1e6:.1f} MB)")
    return "loaded " + " and ".join(loaded) + " with torch.load(weights_only=True)", None


def _test_signal(sr: int, seconds: float = 1.0, channels: int = 1):
    """A sung-like test tone: 220 Hz with vibrato and harmonics, a little noise."""
    import numpy as np

    t = np.arange(int(sr * seconds)) / sr
    f0 = 220.0 * 2 ** (0.3 * np.sin(2 * np.pi * 5 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))
    x = x + 0.003 * np.random.default_rng(0).standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x] * channels) if channels > 1 else x


def _test_inference(model: VoiceModel, paths: dict[str, Path]) -> tuple[str, float]:
    import tempfile
    import time

    from inference.context import StageContext
    from inference.registry import get_engine

    sr = 44100
    with tempfile.TemporaryDirectory(prefix="cover-model-test-") as tmp:
        if model.engine == E.RVC:
            from inference.engines.base import ConversionParams

            t0 = time.perf_counter()
            engine = get_engine("converter", "rvc", **rvc_engine_options())
            t1 = time.perf_counter()
            voice = _test_signal(sr)
            params = ConversionParams(model_files=rvc_model_files(paths),
                                      engine_params=dict(model.engine_defaults or {}))
            out = engine.convert(voice, sr, voice, sr, params, StageContext(stage="infer", workdir=Path(tmp)))
            t2 = time.perf_counter()
            what = f"converted 1 s of a test tone with {paths['model_file'].name}"
        else:
            t0 = time.perf_counter()
            engine = get_engine("separator", model.engine, **separator_engine_options(model, paths))
            t1 = time.perf_counter()
            song = _test_signal(sr, channels=2)
            out = engine.separate(song, sr, StageContext(stage="separate", workdir=Path(tmp)))[0]
            t2 = time.perf_counter()
            what = f"separated 1 s of a test tone with {paths['model_file'].name}"
    import numpy as np

    if not np.all(np.isfinite(np.asarray(out))):
        raise ValueError(f"{paths['model_file'].name} produced invalid samples (NaN/inf)")
    device = getattr(engine, "device", "cpu")
    return (f"{what} in {t2 - t1:.2f} s on {device} (engine ready in {t1 - t0:.2f} s); "
            f"{model.kind or model.engine} {model.version} {model.sample_rate or ''}".strip()), t2 - t1


def rvc_engine_options() -> dict:
    """The worker-wide resources of the rvc converter (settings): the content encoder, RMVPE when
    its file exists, the LRU size."""
    enc = Path(settings.COVER_RVC_CONTENT_ENCODER).expanduser() if settings.COVER_RVC_CONTENT_ENCODER else None
    rmvpe = Path(settings.COVER_RVC_RMVPE).expanduser() if settings.COVER_RVC_RMVPE else None
    return {"content_encoder": str(enc) if enc else "", "rmvpe": str(rmvpe) if rmvpe and rmvpe.exists() else None,
            "cache_size": int(settings.COVER_RVC_CACHE_SIZE), "device": settings.COVER_DEVICE or None}


def rvc_model_files(paths: dict[str, Path]) -> dict:
    files = {"model": str(paths["model_file"])}
    if "index_file" in paths:
        files["index"] = str(paths["index_file"])
    return files


def separator_engine_options(model: VoiceModel, paths: dict[str, Path]) -> dict:
    """Constructor options of the engine that runs a registered separator model."""
    if model.engine == E.DEMUCS:
        from inference.model_files import demucs_name

        opts = {"repo": str(paths["model_file"].parent), "name": demucs_name(paths["model_file"])}
        if settings.COVER_DEVICE:
            opts["device"] = settings.COVER_DEVICE
        return opts
    return uvr_engine_options(model, paths)


def uvr_engine_options(model: VoiceModel | None = None, paths: dict[str, Path] | None = None) -> dict:
    """Constructor options of the uvr separator for a registered model (its resolved ``paths``), or
    for the inherited COVER_UVR_MODEL in COVER_UVR_MODEL_DIR when ``model`` is None."""
    opts = {"model_dir": str(Path(settings.COVER_UVR_MODEL_DIR).expanduser())}
    if settings.COVER_DEVICE:
        opts["device"] = settings.COVER_DEVICE
    if model is None:
        opts["model"] = settings.COVER_UVR_MODEL or ""
        return opts
    opts["model"] = str(paths["model_file"])
    if "config_file" in paths:
        opts["config"] = str(paths["config_file"])
    return opts


def run_voice_model_test(model_pk: int) -> str:
    """RQ job: record success or the error on the row (last_test_at/ok/message)."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        model = VoiceModel.objects.filter(pk=model_pk).first()
        if model is None:
            return "deleted"
        seconds = None
        try:
            (message, seconds), ok = voice_model_test_load(model=model), True
        except ModelInvalid as exc:
            message, ok = "; ".join(f"{k}: {v}" for k, v in exc.errors.items()), False
        except Exception as exc:
            log.warning("test load of %s failed: %s", model.model_id, exc)
            message, ok = f"{exc.__class__.__name__}: {str(exc)[:500]}", False
        VoiceModel.objects.filter(pk=model_pk).update(last_test_at=timezone.now(), last_test_ok=ok,
                                                      last_test_message=message[:2000],
                                                      last_test_seconds=seconds)
        return "ok" if ok else "failed"
    finally:
        close_old_connections()


# --------------------------------------------------------------------------------------------
# reads: the model a job uses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobModel:
    """What a job's model_id decided: the id stored on the job, the converter it implies (None:
    keep the client's / the setting's), and defaults for parameters the client left out."""

    model_id: str | None
    engine: str | None = None
    registered: bool = False
    defaults: dict = field(default_factory=dict)


def voice_model_list_enabled():
    return VoiceModel.objects.filter(enabled=True).order_by("-is_default", "model_id")


def voice_model_for_request(model_id: str | None) -> JobModel:
    """The model a new job uses, or InvalidParameter(field="model_id") (-> 400)."""
    mid = (model_id or "").strip() or None
    if mid is None:
        default = VoiceModel.objects.filter(is_default=True, enabled=True).first()
        return _job_model(default) if default is not None else JobModel(model_id=None)
    model = VoiceModel.objects.filter(model_id=mid).first()
    if model is not None:
        if not model.enabled:
            raise InvalidParameter(f"model_id: the model {mid!r} is disabled", field="model_id",
                                   code="model_disabled")
        if model.step != VoiceModel.Step.VOICE:
            raise InvalidParameter(f"model_id: {mid!r} is a separator model ({model.kind}, step {model.step}); "
                                   f"name it as {_STEP_FIELD[model.step]}", field="model_id", code="wrong_model_kind")
        return _job_model(model)
    root = settings.GPT_SOVITS_PROJECT_ROOT
    if root:
        from inference.errors import PipelineError
        from inference.models import resolve_gpt_sovits_model

        try:
            resolve_gpt_sovits_model(root, mid)
            return JobModel(model_id=mid)
        except PipelineError:
            pass
    available = ", ".join(voice_model_list_enabled().values_list("model_id", flat=True)[:20]) or "none registered"
    raise InvalidParameter(f"model_id: unknown model {mid!r} (available: {available})", field="model_id",
                           code="unknown_model")


def _job_model(model: VoiceModel) -> JobModel:
    return JobModel(model_id=model.model_id, engine=model.engine, registered=True, defaults={
        "pitch_shift": float(model.default_pitch_shift), "auto_pitch": bool(model.default_auto_pitch),
        "reverb": float(model.default_reverb), "engine_params": dict(model.engine_defaults or {})})


_STEP_FIELD = {"separate": "separator_model", "karaoke": "karaoke_model", "dereverb": "dereverb_model",
               "voice": "model_id"}


def separator_model_for_request(model_id: str | None, *, step: str) -> VoiceModel | None:
    """A job's separator_model / karaoke_model / dereverb_model: the enabled, registered UVR-family
    or Demucs model serving ``step``; None when not given; InvalidParameter naming the field otherwise."""
    mid = (model_id or "").strip() or None
    if mid is None:
        return None
    field_name = _STEP_FIELD[step]
    model = VoiceModel.objects.filter(model_id=mid).first()
    if model is None or model.engine not in (E.UVR, E.DEMUCS):
        names = ", ".join(VoiceModel.objects.filter(enabled=True, step=step).values_list("model_id", flat=True)[:20])
        raise InvalidParameter(f"{field_name}: no registered separator model {mid!r} "
                               f"(available for {step}: {names or 'none registered'})", field=field_name,
                               code="unknown_model")
    if not model.enabled:
        raise InvalidParameter(f"{field_name}: the model {mid!r} is disabled", field=field_name,
                               code="model_disabled")
    if model.step != step:
        raise InvalidParameter(f"{field_name}: {mid!r} is registered for step {model.step!r}, not {step!r}",
                               field=field_name, code="wrong_model_kind")
    return model


def model_needs(model: VoiceModel) -> list[dict]:
    """What else a registered model needs at run time, and whether it is in place (GET models)."""
    out = []
    if model.engine == E.RVC:
        enc = settings.COVER_RVC_CONTENT_ENCODER
        out.append({"what": "content encoder (HuBERT-base / ContentVec)", "setting": "COVER_RVC_CONTENT_ENCODER",
                    "required": True, "present": bool(enc) and Path(enc).expanduser().exists()})
        rmvpe = settings.COVER_RVC_RMVPE
        out.append({"what": "RMVPE pitch model (else the bundled tracker)", "setting": "COVER_RVC_RMVPE",
                    "required": False, "present": bool(rmvpe) and Path(rmvpe).expanduser().exists()})
        out.append({"what": "feature index (.index)", "setting": "index_file", "required": False,
                    "present": bool(model.index_file)})
    elif model.engine == E.UVR:
        if model.kind in ("uvr-vr", "mdx"):
            name = "vr_model_data.json" if model.kind == "uvr-vr" else "mdx_model_data.json"
            folders = [Path(settings.COVER_UVR_MODEL_DIR).expanduser()]
            try:
                folders.append(resolve_model_path(model.model_file, what="model file").parent)
            except ValueError:
                pass
            out.append({"what": f"model data ({name}, matched by the file's hash; in COVER_UVR_MODEL_DIR or "
                                f"beside the model)", "setting": "COVER_UVR_MODEL_DIR", "required": True,
                        "present": any((f / name).is_file() for f in folders)})
        if model.kind in ("roformer", "mdxc"):
            out.append({"what": "YAML config", "setting": "config_file", "required": True,
                        "present": bool(model.config_file)})
    elif model.engine in GPT_SOVITS_ENGINES:
        out.append({"what": "GPT weights + SoVITS weights", "setting": "gpt_weights/sovits_weights",
                    "required": True, "present": bool(model.gpt_weights and model.sovits_weights)})
        if model.engine == E.GPT_SOVITS_API:
            out.append({"what": "a running GPT-SoVITS api_v2 server", "setting": "GPT_SOVITS_API_URL",
                        "required": True, "present": bool(settings.GPT_SOVITS_API_URL)})
    return out


def job_model_setup(parameters: dict) -> dict:
    """For covers.jobs: the PipelineConfig pieces a job's registered models imply (read at run
    time, so a model's files are resolved by the worker): ``engine_options``, ``model_files``,
    ``converter_params``, ``separator``, ``separation_chain``. Raises PipelineError when a model
    the job names has gone or its files are missing."""
    from inference.errors import PipelineError

    out: dict = {"engine_options": {}, "model_files": {}, "converter_params": dict(parameters.get("engine_params") or {})}

    def row(mid: str, stage: str) -> tuple[VoiceModel, dict[str, Path]]:
        model = VoiceModel.objects.filter(model_id=mid).first()
        if model is None:
            raise PipelineError(stage, f"the model {mid!r} is no longer registered", code="model_not_found")
        try:
            return model, voice_model_validate(model=model, load_weights=False)
        except ModelInvalid as exc:
            raise PipelineError(stage, f"model {mid}: " + "; ".join(exc.errors.values()),
                                code="model_not_found") from None

    converter = parameters.get("converter")
    mid = parameters.get("model_id")
    if converter == E.RVC:
        if not mid:
            raise PipelineError("infer", "the rvc converter needs a registered RVC voice (model_id)",
                                code="model_not_found")
        model, paths = row(mid, "infer")
        if model.engine != E.RVC:
            raise PipelineError("infer", f"model {mid} is not an RVC voice ({model.kind or model.engine})",
                                code="invalid_model")
        out["engine_options"]["rvc"] = rvc_engine_options()
        out["model_files"] = rvc_model_files(paths)
    if parameters.get("stems"):   # the client's own stems: nothing is separated
        return out
    sep_mid = parameters.get("separator_model")
    if sep_mid:
        model, paths = row(sep_mid, "separate")
        out["separator"] = model.engine
        out["engine_options"][model.engine] = separator_engine_options(model, paths)
    elif parameters.get("separator") == "uvr":
        out["engine_options"]["uvr"] = uvr_engine_options(None)
    chain: dict = {}
    for step in ("karaoke", "dereverb"):
        step_mid = parameters.get(f"{step}_model")
        if step_mid:
            model, paths = row(step_mid, "separate")
            chain[step] = {"engine": model.engine, "options": separator_engine_options(model, paths)}
    if chain:
        chain["convert_backing"] = bool(parameters.get("convert_backing"))
        out["separation_chain"] = chain
    return out


def voice_model_engine_options(*, model_id: str | None, converter: str) -> dict:
    """Constructor options that point ``converter`` at a registered model's files (merged into
    PipelineConfig.engine_options[converter] by covers.jobs); {} when not registered."""
    if not model_id or converter not in GPT_SOVITS_ENGINES:
        return {}
    model = VoiceModel.objects.filter(model_id=model_id).first()
    if model is None or model.engine not in GPT_SOVITS_ENGINES:
        return {}
    entry = {}
    for name, key in (("gpt_weights", "gpt_weights"), ("sovits_weights", "sovits_weights"),
                      ("reference_audio", "ref_audio")):
        value = getattr(model, name)
        if value:
            try:
                entry[key] = str(resolve_model_path(value, what=name))
            except ValueError as exc:
                from inference.errors import PipelineError
                raise PipelineError("infer", f"model {model_id}: {exc}", code="model_not_found") from None
    if model.reference_text:
        entry["ref_text"] = model.reference_text
    return {"models": {model_id: entry}}
