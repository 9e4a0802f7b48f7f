"""Built-in engines. Importing this package registers them in :mod:`inference.registry`.

Heavy libraries (torch, demucs, faster-whisper, pyworld) are imported inside the engines'
constructors, so listing engines stays cheap.
"""
from . import spectral  # noqa: F401  separator "spectral" (default, no weights)
from . import demucs_engine  # noqa: F401  separator "demucs" (user-brought checkpoint)
from . import command  # noqa: F401  separator "command", converter "gpt-sovits-command"
from . import world  # noqa: F401  converter "world" (default, no downloaded weights)
from . import gpt_sovits_api  # noqa: F401  converter "gpt-sovits-api"
from . import asr  # noqa: F401  asr "faster-whisper"
from . import uvr  # noqa: F401  separator "uvr" (python-audio-separator: VR, MDX-Net, MDX23C/Roformer)
from . import rvc  # noqa: F401  converter "rvc" (RVC v1/v2 voice models; content encoder, RMVPE, faiss index)
