"""Pick the torch device once: CUDA when present, else CPU. Half precision only on CUDA."""
from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=None)
def default_device() -> str:
    """``COVER_DEVICE`` overrides (``cpu``, ``cuda``, ``cuda:1``); else CUDA if available."""
    forced = os.environ.get("COVER_DEVICE", "").strip()
    if forced:
        return forced
    try:
        import torch
        if torch.cuda.is_available():
            return "cuda"
    except Exception:  # torch missing or broken CUDA: fall back to CPU
        pass
    return "cpu"


def use_half(device: str) -> bool:
    return device.startswith("cuda")


def cpu_threads() -> int:
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("COVER_CPU_THREADS", "0") or 0) or (os.cpu_count() or 1)))
