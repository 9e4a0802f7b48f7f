"""Finding a GPT-SoVITS model's weights inside a GPT-SoVITS project folder.

:func:`resolve_gpt_sovits_model` tries, in order:

1. ``weight.json`` in ``project_root``. Two shapes are understood:

   - GPT-SoVITS' own file: ``{"GPT": {"v2": "GPT_weights_v2/x-e15.ckpt", ...},
     "SoVITS": {"v2": "SoVITS_weights_v2/x_e8_s200.pth", ...}}`` (a value may be a list; its
     first item counts). ``model_id`` selects a version key (``v1``, ``v2``, ``v2Pro``, ...);
     with no ``model_id`` it is used only when exactly one version is in both maps.
   - a per-model map: ``{"<model_id>": {"gpt_weights": ..., "sovits_weights": ...,
     "ref_audio": ..., "ref_text": ...}}`` (``gpt``/``GPT``/``sovits``/``SoVITS`` also accepted).
2. ``trained/<model_id>/``: the newest ``*.ckpt`` (GPT) and ``*.pth`` (SoVITS) in it, plus an
   optional reference clip (``ref.wav`` or the only ``*.wav``) and its text (``ref.txt`` or a
   ``.txt``/``.lab`` beside the clip).
3. The newest ``GPT_weights*/*.ckpt`` and ``SoVITS_weights*/*.pth`` whose names start with
   ``model_id`` (GPT-SoVITS names them ``<experiment>-e<epoch>.ckpt`` and
   ``<experiment>_e<epoch>_s<step>.pth``); with no ``model_id`` (or ``latest``), the newest of all.

Every path must stay inside ``project_root``; ``model_id`` must be a plain name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError

STAGE = "infer"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GPT_KEYS = ("gpt_weights", "gpt", "GPT", "gpt_path")
_SOVITS_KEYS = ("sovits_weights", "sovits", "SoVITS", "sovits_path")


@dataclass(frozen=True)
class GptSovitsModel:
    gpt_weights: Path
    sovits_weights: Path
    ref_audio: Path | None = None
    ref_text: str | None = None
    source: str = ""  # which rule found it (for report.json)


def _err(message: str, code: str = "model_not_found") -> PipelineError:
    return PipelineError(STAGE, message, code=code)


def _inside(root: Path, value: str | Path, what: str) -> Path:
    p = Path(value).expanduser()
    p = (p if p.is_absolute() else root / p).resolve()
    if not p.is_relative_to(root):
        raise _err(f"{what} {value} is outside the GPT-SoVITS project folder {root}", code="invalid_model")
    return p


def _existing(root: Path, value: str | Path, what: str) -> Path:
    p = _inside(root, value, what)
    if not p.is_file():
        raise _err(f"{what} {value} does not exist")
    return p


def _first(v):
    if isinstance(v, list):
        return v[0] if v else None
    return v


def _pick(d: dict, keys: tuple[str, ...]):
    for k in keys:
        if d.get(k):
            return _first(d[k])
    return None


def _newest(paths) -> Path | None:
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name)) if paths else None


def _from_weight_json(root: Path, model_id: str | None) -> GptSovitsModel | None:
    f = root / "weight.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _err(f"{f} is not valid JSON ({exc})", code="invalid_model") from None
    if not isinstance(data, dict):
        raise _err(f"{f} must hold a JSON object", code="invalid_model")
    # Per-model map.
    entry = data.get(model_id) if model_id else None
    if isinstance(entry, dict):
        gpt, sovits = _pick(entry, _GPT_KEYS), _pick(entry, _SOVITS_KEYS)
        if not gpt or not sovits:
            raise _err(f"weight.json entry {model_id!r} needs both gpt_weights and sovits_weights",
                       code="invalid_model")
        ref = entry.get("ref_audio")
        return GptSovitsModel(_existing(root, gpt, "GPT weights"), _existing(root, sovits, "SoVITS weights"),
                              _existing(root, ref, "reference audio") if ref else None,
                              entry.get("ref_text") or None, source="weight.json")
    # GPT-SoVITS' own shape: {"GPT": {version: path}, "SoVITS": {version: path}}.
    gmap, smap = data.get("GPT"), data.get("SoVITS")
    if isinstance(gmap, dict) and isinstance(smap, dict):
        common = [k for k in gmap if k in smap and _first(gmap[k]) and _first(smap[k])]
        key = model_id if model_id in common else (common[0] if not model_id and len(common) == 1 else None)
        if key is not None:
            return GptSovitsModel(_existing(root, _first(gmap[key]), "GPT weights"),
                                  _existing(root, _first(smap[key]), "SoVITS weights"),
                                  source=f"weight.json:{key}")
    return None


def _ref_from_folder(folder: Path) -> tuple[Path | None, str | None]:
    wav = folder / "ref.wav"
    if not wav.is_file():
        wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac") and p.is_file())
        wav = wavs[0] if len(wavs) == 1 else None
    text = None
    for cand in ([folder / "ref.txt"] + ([wav.with_suffix(".txt"), wav.with_suffix(".lab")] if wav else [])):
        if cand.is_file():
            text = cand.read_text(encoding="utf-8", errors="replace").strip() or None
            break
    return wav, text


def _from_trained(root: Path, model_id: str) -> GptSovitsModel | None:
    folder = root / "trained" / model_id
    if not folder.is_dir():
        return None
    folder = _inside(root, folder, "model folder")
    gpt = _newest(folder.rglob("*.ckpt"))
    sovits = _newest(folder.rglob("*.pth"))
    if gpt is None or sovits is None:
        missing = " and ".join(n for n, p in (("a GPT *.ckpt", gpt), ("a SoVITS *.pth", sovits)) if p is None)
        raise _err(f"model folder trained/{model_id} has no {missing} file")
    ref, text = _ref_from_folder(folder)
    return GptSovitsModel(_inside(root, gpt, "GPT weights"), _inside(root, sovits, "SoVITS weights"),
                          _inside(root, ref, "reference audio") if ref else None, text, source="trained")


def _from_weight_folders(root: Path, model_id: str | None) -> GptSovitsModel | None:
    def match(p: Path) -> bool:
        if not model_id:
            return True
        stem = p.stem
        return stem == model_id or stem.startswith(model_id + "-") or stem.startswith(model_id + "_")

    gpts = [p for d in root.glob("GPT_weights*") if d.is_dir() for p in d.glob("*.ckpt") if match(p)]
    sovits = [p for d in root.glob("SoVITS_weights*") if d.is_dir() for p in d.glob("*.pth") if match(p)]
    g, s = _newest(gpts), _newest(sovits)
    if g is None or s is None:
        return None
    return GptSovitsModel(_inside(root, g, "GPT weights"), _inside(root, s, "SoVITS weights"),
                          source="weight folders")


def resolve_gpt_sovits_model(project_root: str | Path, model_id: str | None = None) -> GptSovitsModel:
    """Find ``model_id``'s GPT and SoVITS weights under ``project_root`` (rules in the module doc).

    Raises :class:`PipelineError` (stage ``infer``, code ``model_not_found`` or ``invalid_model``).
    """
    if not project_root:
        raise _err("no GPT-SoVITS project folder configured (project_root)", code="invalid_model")
    root = Path(project_root).expanduser().resolve()
    if not root.is_dir():
        raise _err(f"GPT-SoVITS project folder {root} does not exist")
    mid = (model_id or "").strip() or None
    if mid in ("latest", "default"):
        mid = None
    if mid is not None and not _MODEL_ID.match(mid):
        raise _err(f"model id {model_id!r} is not a plain name (letters, digits, . _ -)", code="invalid_model")
    found = (_from_weight_json(root, mid)
             or (_from_trained(root, mid) if mid else None)
             or _from_weight_folders(root, mid))
    if found is None:
        if mid:
            raise _err(f"no GPT-SoVITS model {mid!r} in {root}: not in weight.json, no trained/{mid}/ folder, "
                       f"and no GPT_weights*/{mid}*.ckpt with SoVITS_weights*/{mid}*.pth")
        raise _err(f"no GPT-SoVITS weights in {root}: expected weight.json or GPT_weights*/*.ckpt "
                   "with SoVITS_weights*/*.pth")
    return found
