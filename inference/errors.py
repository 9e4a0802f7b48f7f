"""Error types raised by the pipeline.

Every failure inside a stage surfaces as :class:`PipelineError` (or its subclass
:class:`InputError` when the user's files are at fault), carrying the stage name and a
message a user can act on. Cancellation is not a failure: it raises :class:`Canceled`.
"""
from __future__ import annotations


class PipelineError(Exception):
    """A stage failed. ``stage`` names it; ``message`` says what to do about it.

    ``code`` is a short machine-readable reason (``timeout``, ``engine_error``,
    ``no_space``, ...); ``transient`` marks errors worth one retry (CUDA OOM, ...).
    """

    def __init__(self, stage: str | None, message: str, *, code: str = "error",
                 transient: bool = False, field: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.code = code
        self.transient = transient
        self.field = field

    def __str__(self) -> str:  # "separate: the command timed out after 600 s"
        return f"{self.stage}: {self.message}" if self.stage else self.message


class InputError(PipelineError):
    """The user's input is unusable (not audio, too long, silent, no voice, ...).

    ``field`` names the input (``song`` or ``reference_voice``).
    """

    def __init__(self, field: str, message: str, *, code: str = "invalid_audio",
                 stage: str | None = "preprocess"):
        super().__init__(stage, message, code=code, field=field)


class Canceled(Exception):
    """Raised from a progress/cancel check when the caller asked to stop."""

    def __init__(self, stage: str | None = None):
        super().__init__(f"canceled during {stage}" if stage else "canceled")
        self.stage = stage
