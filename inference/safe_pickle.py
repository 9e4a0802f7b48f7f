"""Reading pickled model files without running code in them.

:func:`restricted_torch_load` is ``torch.load(weights_only=True)`` plus an explicit allow-list:

- config objects some formats carry (``argparse.Namespace``; omegaconf containers, fairseq
  dataclasses and enum members) are replaced by inert stand-ins that only hold their values
  (nothing of fairseq or omegaconf is imported or run);
- ``allow`` names extra real classes a format needs (e.g. demucs' model classes, whose
  constructors the loader calls itself afterwards with the pickled arguments).

Every other global the pickle refers to is refused before anything is unpickled, with a message
naming it. :func:`plain` turns the stand-ins back into dicts and lists.
"""
from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch


class RefusedModelFile(ValueError):
    """A model file that is unreadable or would need a class outside the allow-list."""


class _Namespace:
    """Stand-in for ``argparse.Namespace`` in a pickle: only holds the attributes."""


class _Opaque:
    """Stand-in for omegaconf containers/nodes and config enums: records args and state only."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args, **kwargs):  # called by REDUCE; __new__ already kept the args
        pass

    def __setstate__(self, state):
        self._state = state


_OPAQUE_MODULES = ("omegaconf", "fairseq", "enum")
_OPAQUE_NAMES = {"typing.Any"}


def _stand_in(full_name: str):
    """Our stand-in for a pickled global, or None when the global is not on our allow-list."""
    if full_name == "argparse.Namespace":
        return _Namespace
    module = full_name.rsplit(".", 1)[0]
    if full_name in _OPAQUE_NAMES or module.split(".")[0] in _OPAQUE_MODULES:
        return _Opaque
    return None


def pickled_globals(path: Path) -> set[str]:
    """Names of the globals a torch file's pickle refers to, read without unpickling anything."""
    names: set[str] = set()

    def scan(stream) -> bool:
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    module, _, name = str(arg).partition(" ")
                    names.add(f"{module}.{name}")
                elif op.name == "STACK_GLOBAL":
                    names.add("<a protocol-4 STACK_GLOBAL reference>")
            return True
        except Exception:  # truncated / not a pickle: stop scanning this stream
            return False

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith("data.pkl"):
                    with zf.open(info) as fh:
                        scan(fh)
    else:  # legacy format: magic number, protocol, sys info, then the object, each a pickle
        with open(path, "rb") as fh:
            for _ in range(4):
                if not scan(fh):
                    break
    return names


def _default_allowed_globals() -> set[str]:
    try:
        from torch import _weights_only_unpickler as wou
        return set(wou._get_allowed_globals().keys())
    except Exception:  # private API moved: rely on torch's own refusal
        return set()


def restricted_torch_load(path: Path, what: str = "checkpoint", mmap: bool = False, *,
                          allow: Mapping[str, type] | None = None, error: type[Exception] = RefusedModelFile) -> Any:
    """``torch.load(weights_only=True)`` with our config stand-ins and ``allow`` (full name ->
    class) allowed; anything else refused with ``error``.

    ``mmap`` maps a zip-format file instead of reading it (for reading shapes only)."""
    allow = dict(allow or {})
    names = pickled_globals(path)
    allowed = _default_allowed_globals()
    extra: list[tuple[type, str]] = []
    for full in sorted(names):
        if full in allowed:
            continue
        cls = allow.get(full) or _stand_in(full)
        if cls is None:
            if allowed or full.startswith("<"):
                raise error(
                    f"{path.name}: refused: the {what} needs class {full}, which is not on the "
                    "allow-list (a model file may hold tensors and plain config only)")
            continue
        extra.append((cls, full))
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        m = re.search(r"GLOBAL (\S+)", msg) or re.search(r"function (\S+)", msg)
        if m is None:
            first = msg.splitlines()[0][:200] if msg else type(exc).__name__
            raise error(f"{path.name}: not a readable torch {what}: {first}") from None
        raise error(f"{path.name}: refused: the {what} needs class {m.group(1)}, "
                                  "which is not on the allow-list") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise error(f"{path.name}: not a readable torch {what}: {exc}"[:400]) from None


def plain(obj: Any, depth: int = 0) -> Any:
    """Stand-ins -> plain dicts/lists/values (omegaconf containers lose their metadata)."""
    if depth > 50:
        return None
    if isinstance(obj, _Namespace):
        return {k: plain(v, depth + 1) for k, v in vars(obj).items()}
    if isinstance(obj, _Opaque):
        st = obj._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict):
            if "_content" in st:
                return plain(st["_content"], depth + 1)
            if "_val" in st:
                return plain(st["_val"], depth + 1)
            if "_value_" in st:
                return plain(st["_value_"], depth + 1)
        if len(obj._args) == 1:  # an enum member pickled as EnumClass(value)
            return plain(obj._args[0], depth + 1)
        return None
    if isinstance(obj, dict):
        return {k: plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    return obj
