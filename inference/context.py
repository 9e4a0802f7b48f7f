"""Progress reporting and cooperative cancellation for stages and engines."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import Canceled

STAGES: tuple[str, ...] = ("preprocess", "separate", "infer", "mix", "finalize")

# Share of the whole job each stage roughly takes (used for the overall 0..1 figure).
STAGE_WEIGHTS: dict[str, float] = {
    "preprocess": 0.05, "separate": 0.35, "infer": 0.45, "mix": 0.10, "finalize": 0.05,
}


@dataclass(frozen=True)
class PipelineEvent:
    """One thing the pipeline reports.

    ``type``: ``stage_started`` | ``progress`` | ``stage_finished``.
    ``progress``: 0..1 within the stage; ``overall``: 0..1 over the whole job.
    """

    type: str
    stage: str
    progress: float
    overall: float
    message: str = ""
    seconds: float | None = None  # wall time of the stage, on stage_finished
    cached: bool = False


EventCallback = Callable[[PipelineEvent], None]
CancelCheck = Callable[[], bool]


def overall_fraction(stage: str, within: float) -> float:
    done = 0.0
    for s in STAGES:
        if s == stage:
            return min(1.0, done + STAGE_WEIGHTS[s] * max(0.0, min(1.0, within)))
        done += STAGE_WEIGHTS[s]
    return min(1.0, done)


@dataclass
class StageContext:
    """Handed to a stage and to the engines it calls.

    Engines call :meth:`progress` between chunks of work (at least every ~0.5 s); it
    reports the fraction done and raises :class:`Canceled` when the caller wants to stop.
    ``workdir`` is the job's folder (engines may put scratch files in ``workdir/tmp``).
    """

    stage: str
    workdir: Path
    device: str = "cpu"
    on_event: EventCallback | None = None
    should_cancel: CancelCheck | None = None
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # engine facts for report.json
    _last: float = 0.0

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Canceled(self.stage)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) of this stage done, then check for cancel."""
        fraction = max(0.0, min(1.0, float(fraction)))
        if self.on_event is not None:
            self.on_event(PipelineEvent("progress", self.stage, fraction,
                                        overall_fraction(self.stage, fraction), message))
        self._last = time.monotonic()
        self.check_cancel()

    def sub(self, start: float, end: float) -> "SubProgress":
        """A view mapping 0..1 onto ``start..end`` of this stage's progress."""
        return SubProgress(self, start, end)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def tmpdir(self) -> Path:
        p = self.workdir / "tmp"
        p.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class SubProgress:
    ctx: StageContext
    start: float
    end: float

    def __call__(self, fraction: float, message: str = "") -> None:
        self.ctx.progress(self.start + (self.end - self.start) * max(0.0, min(1.0, fraction)), message)

    def check_cancel(self) -> None:
        self.ctx.check_cancel()
