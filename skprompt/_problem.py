"""The estimator's side of the learner protocol: candidates z -> backend queries.

:class:`PromptProblem` is the only place where a learner's candidate vectors
meet texts and a backend. It maps ``Z`` to soft prompts with the projection,
asks the backend (in ``n_jobs`` concurrent requests if asked), counts every
(prompt, text) pair it requests, and refuses a request that would exceed the
budget *before* sending it.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from .inference.base import BudgetExhausted
from .losses import compute_loss

__all__ = ["PromptProblem"]


class PromptProblem:
    """Evaluate candidate prompt vectors on the fit data.

    Parameters
    ----------
    backend : PromptBackend
    projection : RandomProjection
    classes : ndarray
        Class labels, in column order.
    splits : dict
        ``{"train": (texts, y_idx), "val": (texts, y_idx)}``; ``"val"`` may be absent.
    loss_name : str
    labels_only : bool
        Query labels (``predict_labels``) instead of scores.
    budget : int or None
    n_jobs : int or None
        Concurrent backend requests (for remote or function backends).
    progress : tqdm-like or None
    """

    def __init__(self, backend, projection, classes, splits, loss_name, labels_only, budget=None,
                 n_jobs=None, progress=None):
        self.backend = backend
        self.projection = projection
        self.classes = list(classes)
        self.splits = splits
        self.loss_name = loss_name
        self.labels_only = labels_only
        self.budget = budget
        self.n_jobs = n_jobs
        self.progress = progress
        self.queries = 0
        self.requests = 0
        self._lock = threading.Lock()

    # -- protocol ---------------------------------------------------------
    @property
    def dim(self):
        return self.projection.intrinsic_dim

    @property
    def n_classes(self):
        return len(self.classes)

    @property
    def remaining(self):
        return math.inf if self.budget is None else self.budget - self.queries

    def has_split(self, split):
        return split in self.splits and len(self.splits[split][0]) > 0

    def n_texts(self, split):
        return len(self.splits[split][0])

    def y(self, split):
        return self.splits[split][1]

    def outputs(self, Z, split="train"):
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        texts = self.splits[split][0]
        cost = Z.shape[0] * len(texts)
        with self._lock:
            if cost > self.remaining:
                raise BudgetExhausted(
                    f"{cost} queries requested with {self.remaining} left of budget={self.budget}."
                )
            self.queries += cost
            self.requests += 1
        return self.query(self.projection(Z), texts)

    def loss(self, Z, split="train"):
        return compute_loss(self.loss_name, self.outputs(Z, split), self.y(split))

    def report(self, **info):
        if self.progress is not None:
            self.progress.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                                      refresh=False)
            self.progress.update(1)

    # -- backend access -----------------------------------------------------
    def query(self, prompts, texts):
        """Scores (or labels) of prompts on texts, split over ``n_jobs`` requests."""
        call = self.backend.predict_labels if self.labels_only else self.backend.score
        n_chunks = min(effective_n_jobs(self.n_jobs), len(prompts))
        if n_chunks <= 1:
            return call(prompts, texts, self.classes)
        chunks = np.array_split(np.arange(len(prompts)), n_chunks)
        parts = Parallel(n_jobs=n_chunks, prefer="threads")(
            delayed(call)(prompts[idx], texts, self.classes) for idx in chunks
        )
        return np.concatenate(parts, axis=0)
