"""A tiny RVC feature index, written the way RVC's training writes one (test helper).

RVC's ``train_index`` stacks the training set's content features (float32, ``dim`` columns),
builds ``faiss.index_factory(dim, f"IVF{n_ivf},Flat")`` with
``n_ivf = min(int(16 * sqrt(n)), n // 39)``, sets ``nprobe = 1``, trains on the features, adds
them and saves the result with ``faiss.write_index`` (the ``added_IVF..._Flat_nprobe_1_....index``
file users ship beside their ``.pth``). This does the same on ``n`` random vectors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_index(path, dim: int, n: int = 200, seed: int = 0) -> Path:
    """Write an IVF-Flat faiss index of ``n`` random ``dim``-dim vectors to ``path``; returns it."""
    import faiss

    rng = np.random.default_rng(seed)
    # features of a (fake) voice: a few clusters, like content features of one speaker
    centres = rng.standard_normal((8, dim)).astype(np.float32)
    vecs = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n_ivf = max(1, min(int(16 * np.sqrt(n)), n // 39))
    index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(vecs)
    for s in range(0, n, 8192):
        index.add(vecs[s:s + 8192])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path
