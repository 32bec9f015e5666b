"""A backend around any Python function: a remote API client, a simulator, a toy."""

from __future__ import annotations

import numbers

import numpy as np

from .base import BackendError, PromptBackend

__all__ = ["FunctionBackend"]


class FunctionBackend(PromptBackend):
    """Wrap a user query function as a black-box backend.

    Parameters
    ----------
    fn : callable
        ``fn(prompt_embeddings, texts)`` receives a float32 ndarray of shape
        ``(n_prompts, n_prompt_tokens, embedding_dim)`` and a list of
        ``n_texts`` str. It returns an ndarray of shape
        ``(n_prompts, n_texts, n_classes)`` of class scores (logits or
        log-probabilities; column ``k`` is the ``k``-th class of the sorted
        ``classes_`` of the estimator), or, with ``labels_only=True``, an int
        ndarray of shape ``(n_prompts, n_texts)`` of class indices.
        ``n_prompt_tokens`` is 0 when the estimator asks for the model without
        a soft prompt (``method="zero-shot"``).
    embedding_dim : int
        Width of one soft-prompt vector.
    labels_only : bool, default=False
        ``True`` if ``fn`` returns labels only; :meth:`score` then refuses
        with a clear error and only label-only methods can be fitted.
    embedding_std : float, default=None
        Standard deviation of the model's input embeddings, used to scale the
        random projection. ``None`` means 1.0.
    cache_size : int, default=100_000
        Size of the result cache (see :class:`PromptBackend`); set 0 for a
        function whose answers must never be reused (e.g. a sampling API).

    Examples
    --------
    A toy "model" whose class scores are the projections of the text's
    feature on the first prompt vector:

    >>> import numpy as np
    >>> from skprompt.backends import FunctionBackend
    >>> def fn(prompts, texts):
    ...     x = np.array([float(len(t)) for t in texts])
    ...     w = prompts[:, 0, 0] if prompts.shape[1] else np.zeros(len(prompts))
    ...     s = w[:, None] * (x[None, :] - 3.0)
    ...     return np.stack([-s, s], axis=-1)
    >>> backend = FunctionBackend(fn, embedding_dim=4)
    >>> backend.score(np.ones((1, 1, 4)), ["ab", "abcd"], classes=["short", "long"]).shape
    (1, 2, 2)
    """

    def __init__(self, fn, embedding_dim, *, labels_only=False, embedding_std=None, cache_size=100_000):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}.")
        if not isinstance(embedding_dim, numbers.Integral) or isinstance(embedding_dim, bool) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int; got {embedding_dim!r}.")
        if embedding_std is not None and not (
            isinstance(embedding_std, numbers.Real) and np.isfinite(embedding_std) and embedding_std > 0
        ):
            raise ValueError(f"embedding_std must be a positive float or None; got {embedding_std!r}.")
        super().__init__(cache_size=cache_size)
        self.fn = fn
        self._embedding_dim = int(embedding_dim)
        self.labels_only = bool(labels_only)
        self.embedding_std = embedding_std

    @property
    def embedding_dim(self):
        return self._embedding_dim

    def embedding_stats(self):
        std = 1.0 if self.embedding_std is None else float(self.embedding_std)
        return np.zeros(self._embedding_dim), std

    def _call(self, prompt_embeddings, texts):
        return self.fn(np.ascontiguousarray(prompt_embeddings, dtype=np.float32), list(texts))

    def _score(self, prompt_embeddings, texts, classes):
        if self.labels_only:
            return super()._score(prompt_embeddings, texts, classes)
        return self._call(prompt_embeddings, texts)

    def _predict_labels(self, prompt_embeddings, texts, classes):
        if self.labels_only:
            return self._call(prompt_embeddings, texts)
        return super()._predict_labels(prompt_embeddings, texts, classes)

    def _source_name(self):
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"FunctionBackend's function {name!r}"

    def __repr__(self):
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return (
            f"FunctionBackend({name}, embedding_dim={self._embedding_dim}, "
            f"labels_only={self.labels_only})"
        )
