"""RVC (Retrieval-based Voice Conversion) v1/v2 inference, written from the public pipeline.

- :mod:`.checkpoint`: the voice model (``.pth``) reader and synthesizer;
- :mod:`.content`: the HuBERT/ContentVec content encoder (fairseq ``.pt`` or transformers folder);
- :mod:`.rmvpe`: the RMVPE pitch tracker (``rmvpe.pt``);
- :mod:`.engine`: the converter registered as ``rvc`` (windows, pitch, retrieval, LRU of voice models).

Importing this package registers the converter; torch, faiss and the models load only when the
engine is built.
"""
from .engine import RvcConverter  # noqa: F401  converter "rvc"
