"""Frozen option objects for the pipeline (whisper-style: options are dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Any


@dataclass(frozen=True)
class Limits:
    max_song_seconds: float = 600.0
    min_reference_seconds: float = 3.0
    max_reference_seconds: float = 60.0
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    max_channels: int = 2


@dataclass(frozen=True)
class MixOptions:
    target_lufs: float = -14.0
    true_peak_dbtp: float = -1.0
    vocal_gain_db: float = 0.0
    instrumental_gain_db: float = 0.0
    reverb: float = 0.0          # 0..1 wet amount (pedalboard Reverb)
    compression: bool = False    # gentle vocal compression (pedalboard Compressor)


@dataclass(frozen=True)
class OutputOptions:
    bit_depth: int = 16                      # 16 or 24 (PCM WAV)
    extra_formats: tuple[str, ...] = ()      # "flac", "mp3"
    sample_rate: int | None = None           # None: the song's own rate
    channels: int | None = None              # None: the song's own channel count


@dataclass(frozen=True)
class PipelineConfig:
    separator: str = "spectral"
    converter: str = "world"
    pitch_shift: float = 0.0
    auto_pitch: bool = False
    model_id: str | None = None
    reference_text: str | None = None
    target_text: str | None = None
    work_sample_rate: int = 44100
    limits: Limits = field(default_factory=Limits)
    mix: MixOptions = field(default_factory=MixOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    # Constructor options per engine name, e.g. {"demucs": {"repo": "/models/demucs", "name": "htdemucs"}}.
    # They are part of the engine cache key.
    engine_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str | None = None                # None: CUDA when present, else CPU
    # Steps after the main separation (inference.stages.separate): {"karaoke": {"engine": "uvr",
    # "options": {...}}, "dereverb": {...}, "convert_backing": False}. Karaoke splits the vocal into
    # lead and backing; the backing goes to the instrumental unless convert_backing; de-reverb runs
    # on the lead. Empty: the separator alone.
    separation_chain: dict[str, Any] = field(default_factory=dict)
    # The job's model files for the converter (``rvc``: {"model": ".pth", "index": ".index"}) and its
    # per-job settings (``rvc``: index_rate, protect, ...); not part of the engine cache key.
    model_files: dict[str, str] = field(default_factory=dict)
    converter_params: dict[str, Any] = field(default_factory=dict)
    # Measure the converted vocal after ``infer`` (pitch accuracy, speaker similarity;
    # inference.quality) into report["quality"] and PipelineResult.quality.
    quality_report: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
