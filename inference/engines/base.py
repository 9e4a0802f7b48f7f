"""What an engine looks like. Engines are plain classes registered in :mod:`inference.registry`.

Audio arrays are float32 numpy arrays shaped ``(channels, samples)`` for songs and stems,
and ``(samples,)`` for mono voices. Engines never touch Django, Redis or job state: they
get a :class:`~inference.context.StageContext` for progress, cancel checks and scratch space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from ..context import StageContext


class Separator(Protocol):
    name: str
    version: str

    def separate(self, song: np.ndarray, sr: int, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        """``song`` (channels, samples) -> ``(vocals, instrumental)``, same shape and rate."""


@dataclass(frozen=True)
class ConversionParams:
    pitch_shift: float = 0.0          # semitones, applied to the melody
    auto_pitch: bool = False          # move the melody by octaves toward the reference's range
    model_id: str | None = None
    reference_text: str | None = None
    target_text: str | None = None
    # The job's own model files, e.g. ``{"model": "/models/voice.pth", "index": "/models/voice.index"}``
    # (the ``rvc`` converter loads the voice model from here; ``None`` for engines without one).
    model_files: Mapping[str, str] | None = None
    # Per-job engine settings (``rvc``: index_rate, protect, rms_mix_rate, filter_radius, f0_method, ...).
    engine_params: Mapping[str, Any] | None = None


class Converter(Protocol):
    name: str
    version: str

    def convert(self, vocal: np.ndarray, sr: int, reference: np.ndarray, ref_sr: int,
                params: ConversionParams, ctx: StageContext) -> np.ndarray:
        """Mono ``vocal`` at ``sr`` -> the same melody sung in ``reference``'s timbre,
        mono, at ``sr``, same length as ``vocal``."""
