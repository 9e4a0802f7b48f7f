"""Song-cover audio pipeline: a plain library (numpy, torch, audio libraries; no Django, no Redis).

>>> from inference import Pipeline, PipelineConfig
>>> result = Pipeline(PipelineConfig(pitch_shift=2)).run("song.mp3", "ref.wav", "work/")
>>> result.cover
"""
__version__ = "0.1.0"

from .config import Limits, MixOptions, OutputOptions, PipelineConfig  # noqa: E402
from .context import STAGES, PipelineEvent, StageContext  # noqa: E402
from .errors import Canceled, InputError, PipelineError  # noqa: E402
from .pipeline import Pipeline, PipelineResult  # noqa: E402

__all__ = ["Pipeline", "PipelineConfig", "PipelineResult", "PipelineEvent", "StageContext", "Limits",
           "MixOptions", "OutputOptions", "PipelineError", "InputError", "Canceled", "STAGES", "__version__"]
