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


def voice_model_validate(*, model: VoiceModel, load_weights: bool = True) -> dict[str, Path]:
    """Check the row's engine, parameters and files. Returns the resolved paths; raises
    :class:`ModelInvalid` with every problem found (field -> message)."""
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
    needs_weights = model.engine in GPT_SOVITS_ENGINES
    for name, what in (("gpt_weights", "GPT weights"), ("sovits_weights", "SoVITS weights"),
                       ("reference_audio", "reference clip")):
        value = (getattr(model, name) or "").strip()
        if not value:
            if needs_weights and name != "reference_audio":
                errors[name] = f"{what} are required for the {model.engine} engine"
            continue
        try:
            paths[name] = resolve_model_path(value, what=what)
        except ValueError as exc:
            errors[name] = str(exc)
    if load_weights:
        for name in ("gpt_weights", "sovits_weights"):
            if name in paths and name not in errors:
                try:
                    check_weights_safe(paths[name])
                except ValueError as exc:
                    errors[name] = str(exc)
    if errors:
        raise ModelInvalid(errors)
    return paths


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
        if current_default is None and model.enabled:
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
            nxt = VoiceModel.objects.filter(enabled=True).order_by("model_id").first()
            if nxt is not None:
                VoiceModel.objects.filter(pk=nxt.pk).update(is_default=True)


def voice_model_test_enqueue(*, model: VoiceModel) -> str:
    """Queue a small RQ job that loads the model in a worker (result on the row)."""
    from .queue import cover_queue

    VoiceModel.objects.filter(pk=model.pk).update(last_test_ok=None, last_test_at=None,
                                                  last_test_message="queued: waiting for a worker")
    job = cover_queue().enqueue_call(func=TEST_JOB_FUNC, args=(model.pk,), timeout=TEST_JOB_TIMEOUT,
                                     result_ttl=3600, failure_ttl=86400,
                                     description=f"test load of voice model {model.model_id}")
    return job.id


def voice_model_test_load(*, model: VoiceModel) -> str:
    """Load the model the way a job would; returns a one-line description, raises on failure."""
    if model.engine == E.WORLD:
        from inference.registry import get_engine

        engine = get_engine("converter", "world")
        return f"built the {getattr(engine, 'name', 'world')} converter"
    paths = voice_model_validate(model=model, load_weights=False)
    loaded = []
    for name in ("gpt_weights", "sovits_weights"):
        check_weights_safe(paths[name])
        loaded.append(f"{paths[name].name} ({paths[name].stat().st_size / 1e6:.1f} MB)")
    return "loaded " + " and ".join(loaded) + " with torch.load(weights_only=True)"


def run_voice_model_test(model_pk: int) -> str:
    """RQ job: record success or the error on the row (last_test_at/ok/message)."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        model = VoiceModel.objects.filter(pk=model_pk).first()
        if model is None:
            return "deleted"
        try:
            message, ok = voice_model_test_load(model=model), True
        except ModelInvalid as exc:
            message, ok = "; ".join(f"{k}: {v}" for k, v in exc.errors.items()), False
        except Exception as exc:
            log.warning("test load of %s failed: %s", model.model_id, exc)
            message, ok = f"{exc.__class__.__name__}: {str(exc)[:500]}", False
        VoiceModel.objects.filter(pk=model_pk).update(last_test_at=timezone.now(), last_test_ok=ok,
                                                      last_test_message=message[:2000])
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
        "reverb": float(model.default_reverb)})


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
