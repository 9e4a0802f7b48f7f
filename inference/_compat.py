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
