"""The search space: a low-dimensional z mapped to a soft prompt.

Black-Box Tuning (Sun et al., 2022) optimises z in R^d and maps it to the
``n_prompt_tokens x embedding_dim`` soft prompt with a fixed random matrix A.
A is drawn from N(0, s^2) with ``s = embedding_std / (sqrt(d) * sigma0)``, so
that a draw ``z ~ N(0, sigma0^2 I)`` yields prompt entries whose spread matches
the model's own input embeddings. The prompt is centred on the mean embedding
vector, so ``z = 0`` is an "average token" rather than an all-zero input, or
on a given initial prompt (e.g. the embeddings of real template tokens).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["RandomProjection"]


class RandomProjection:
    """Fixed random linear map from z in R^d to soft-prompt embeddings.

    Parameters
    ----------
    n_prompt_tokens : int
        Number of soft-prompt vectors (may be 0: no prompt).
    embedding_dim : int
        Width of each vector.
    intrinsic_dim : int
        Dimension d of the search space.
    embedding_mean : float or array-like of shape (embedding_dim,) or (n_prompt_tokens, embedding_dim), default=0.0
        The prompt that ``z = 0`` maps to: one centre for every vector (the
        mean input embedding), or one per prompt token (an initial prompt).
    embedding_std : float, default=1.0
        Standard deviation of the model's input embedding entries.
    sigma0 : float, default=1.0
        Scale of z the matrix is normalised for: ``z ~ N(0, sigma0**2 I)``
        maps to prompt entries with spread ``embedding_std``. The estimators
        leave it at 1, so that ``z ~ N(0, I)`` gives perturbations with the
        embeddings' own spread and their ``sigma0`` (CMA-ES's initial step
        size, the prior scale of the Bayesian methods) is a perturbation in
        units of that spread; the map itself never sees their ``sigma0``.
    random_state : int, RandomState instance or None, default=None
        Seeds A.

    Examples
    --------
    >>> import numpy as np
    >>> proj = RandomProjection(2, 8, 5, random_state=0)
    >>> proj(np.zeros((3, 5))).shape
    (3, 2, 8)
    """

    def __init__(self, n_prompt_tokens, embedding_dim, intrinsic_dim, *, embedding_mean=0.0,
                 embedding_std=1.0, sigma0=1.0, random_state=None):
        self.n_prompt_tokens = int(n_prompt_tokens)
        self.embedding_dim = int(embedding_dim)
        self.intrinsic_dim = int(intrinsic_dim)
        rng = check_random_state(random_state)
        scale = float(embedding_std) / (np.sqrt(max(self.intrinsic_dim, 1)) * float(sigma0))
        size = self.n_prompt_tokens * self.embedding_dim
        # Stored in float32: the map is applied to every candidate and the
        # backends take float32 embeddings anyway.
        self.matrix = (rng.standard_normal((size, self.intrinsic_dim)) * scale).astype(np.float32)
        mean = np.asarray(embedding_mean, dtype=np.float32)
        shape = (self.n_prompt_tokens, self.embedding_dim)
        if mean.ndim == 2 and mean.shape != shape:
            raise ValueError(f"embedding_mean must have shape {shape} when 2-D; got {mean.shape}.")
        self.offset = np.broadcast_to(mean, shape).reshape(-1).astype(np.float32)

    def __call__(self, Z):
        """Map candidates ``Z`` of shape (n, d) to prompts (n, n_prompt_tokens, embedding_dim)."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float32))
        if Z.shape[1] != self.intrinsic_dim:
            raise ValueError(f"Z must have {self.intrinsic_dim} columns; got shape {Z.shape}.")
        # One float64 matrix-vector product per row, rounded to float32 at the end:
        # a batched product's summation order depends on how many rows it holds,
        # so a prompt mapped inside a population would differ in its last bits
        # from the same z mapped alone, and the backends' caches, keyed by the
        # prompt's bytes, would ask the model again for a prompt already scored.
        matrix, offset = self.matrix.astype(np.float64), self.offset.astype(np.float64)
        flat = np.empty((Z.shape[0], matrix.shape[0]), dtype=np.float32)
        for i, z in enumerate(Z.astype(np.float64)):
            flat[i] = matrix @ z + offset
        return flat.reshape(Z.shape[0], self.n_prompt_tokens, self.embedding_dim)
