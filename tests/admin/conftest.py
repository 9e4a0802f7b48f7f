"""Fixtures for the admin tests: the service tests' real Redis (flushed per test) and temporary
media folder, plus a models root with weights files."""
from __future__ import annotations

import pickle

import pytest

from tests.service.conftest import _media, _redis_flushed, ref_bytes, song_bytes  # noqa: F401  (fixtures)


@pytest.fixture
def models_root(settings, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    settings.COVER_MODELS_ROOT = root
    settings.COVER_MODELS_ALLOWED_ROOTS = []
    settings.GPT_SOVITS_PROJECT_ROOT = ""
    return root


def save_safe_weights(path, seed: float = 0.0):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": {"layer.w": torch.full((4, 4), seed)}, "config": {"data": {"sampling_rate": 32000}},
                "info": "e8"}, str(path))
    return path


class _Evil:
    """Unpickling this runs code (writes a marker file): a weights file must never do that."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def save_malicious_pickle(path, marker, *, zip_format: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    if zip_format:
        import torch
        torch.save({"weight": {}, "payload": _Evil(marker)}, str(path))
    else:
        with open(path, "wb") as fh:
            pickle.dump({"weight": {}, "payload": _Evil(marker)}, fh)
    return path
