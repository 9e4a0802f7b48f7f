"""Import torchcrepe without torchaudio.

torchcrepe imports torchaudio at import time, only for its own file loader
(``torchcrepe.load.audio``), which we never call. Installing torchaudio would pull another
torch build, so we register a minimal stand-in module before importing torchcrepe.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types


def import_torchcrepe():
    if "torchaudio" not in sys.modules:
        try:
            importlib.import_module("torchaudio")
        except Exception:
            stub = types.ModuleType("torchaudio")

            def _unavailable(*_a, **_k):
                raise RuntimeError("torchaudio is not installed; decode audio with inference.audio instead")

            stub.load = _unavailable
            stub.__stub__ = True
            # Libraries probing for torchaudio (importlib.util.find_spec) need a spec.
            stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
            sys.modules["torchaudio"] = stub
    return importlib.import_module("torchcrepe")


def _install_torchvision_stub() -> None:
    """onnx2torch imports torchvision at import time, only for its NMS and RoIAlign converters,
    which no separation model uses. PyPI's torchvision would pull another torch build, so when
    the real one does not import we register a stand-in whose ops raise if ever called."""
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
        return
    except Exception:
        pass

    def _unavailable(name):
        def op(*_a, **_k):
            raise RuntimeError(f"torchvision.ops.{name} is not available (torchvision is not installed); "
                               "this model needs an ONNX operator the separators do not support")
        op.__name__ = name
        return op

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "box_convert", "roi_align"):
        setattr(ops, name, _unavailable(name))
    tv.ops = ops
    tv.__stub__ = True
    tv.__version__ = "0+stub"
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    tv.__path__ = []
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops


def import_audio_separator():
    """``audio_separator.separator`` (python-audio-separator) with onnx2torch importable
    without torchvision (see :func:`_install_torchvision_stub`).

    The stand-in is registered only while they import (onnx2torch keeps its own references):
    left in ``sys.modules`` it would make other libraries (transformers) believe torchvision is
    installed and import parts of it that do not exist."""
    added = "torchvision" not in sys.modules
    _install_torchvision_stub()
    try:
        importlib.import_module("onnx2torch")
        return importlib.import_module("audio_separator.separator")
    finally:
        if added and getattr(sys.modules.get("torchvision"), "__stub__", False):
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
