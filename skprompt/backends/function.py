"""A backend around any Python function: a remote API client, a simulator, a toy."""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from .base import BackendError, PromptBackend

__all__ = ["FunctionBackend"]


class FunctionBackend(PromptBackend):
    """Wrap a user query function as a black-box backend.

    Parameters
    ----------
    fn : callable
        ``fn(prompt_embeddings, texts)`` or ``fn(prompt_embeddings, texts,
        classes)`` (see ``pass_classes``) receives a read-only float32 ndarray
        of shape ``(n_prompts, n_prompt_tokens, embedding_dim)``, a list of
        ``n_texts`` str and, if it takes them, the list of the classes to read
        out, in column order. It returns an ndarray of shape
        ``(n_prompts, n_texts, n_classes)`` of class scores (logits or
        log-probabilities; column ``k`` is ``classes[k]``, the ``k``-th class
        of the sorted ``classes_`` of the estimator), or, with
        ``labels_only=True``, an int ndarray of shape ``(n_prompts, n_texts)``
        of class indices. ``n_prompt_tokens`` is 0 when the estimator asks for
        the model without a soft prompt (``method="zero-shot"``).

        A score may be ``-inf``: a class the model gives no probability, as a
        top-k log-probability API reports for a label word outside its top
        tokens. NaN and ``+inf`` are refused, and so is a (prompt, text) pair
        whose classes are all ``-inf`` (no class scored at all).

        ``prompt_embeddings`` is a read-only copy: ``fn`` cannot change the
        estimator's prompts, and writing into it raises
        :class:`~skprompt.backends.BackendError` (a ``ValueError``); work on
        ``np.array(prompt_embeddings)`` if ``fn`` needs a scratch copy.
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
    pass_classes : bool or None, default=None
        Whether ``fn`` receives the classes, so that it never has to guess
        which class a column is. ``None`` reads ``fn``'s signature: the
        classes are passed if ``fn`` has a parameter named ``classes`` (as
        ``classes=...``) or a third positional parameter without a default
        (as the third argument); otherwise ``fn(prompt_embeddings, texts)``
        is called as before. ``True`` always passes them (by keyword if
        ``fn`` has a ``classes`` parameter, else as the third argument: use
        it for a callable whose signature cannot be read); ``False`` never.
    cache : str, os.PathLike or None, default=None
        A file that keeps every answer on disk, so that an interrupted fit run
        again replays them (see :class:`PromptBackend`). Answers are keyed by
        ``fn``'s module and qualified name, ``embedding_dim`` and
        ``labels_only``: use a new file after changing what ``fn`` computes.
    max_retries : int, default=0
        How many times a call of ``fn`` that raised
        :class:`~skprompt.backends.TransientBackendError`, ``ConnectionError``
        or ``TimeoutError`` is made again, with exponential backoff and jitter
        (see :func:`~skprompt.backends.base.call_with_retries`). Any other
        exception fails at once.
    retry_backoff : float, default=0.5
        Seconds before the first retry (doubled at each further one).
    max_top_k : int, default=0
        How many of the largest log-probabilities of its vocabulary at the
        answer position ``fn`` can return beside the class scores (what the
        ``"topk"`` read-out of :mod:`skprompt.readout` learns from; e.g. an
        API's top log-probabilities). With ``max_top_k > 0``, ``fn`` is
        called with a keyword ``top_k`` when they are wanted and returns an
        ndarray of shape ``(n_prompts, n_texts, n_classes + 2 * top_k)``:
        the class scores, the ``top_k`` log-probabilities in decreasing
        order, and their token ids (any non-negative integers naming the
        tokens consistently).

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

    A function that takes the classes reads the label words itself, e.g. from
    the top-k log-probabilities of a remote API (here a fixed table); a label
    outside the top-k gets ``-inf``:

    >>> TOP_LOGPROBS = {" long": -0.2, " short": -1.8}  # what the API returned
    >>> def api(prompts, texts, classes):
    ...     row = [TOP_LOGPROBS.get(" " + c, -np.inf) for c in classes]
    ...     return np.tile(row, (len(prompts), len(texts), 1))
    >>> backend = FunctionBackend(api, embedding_dim=4)  # detected: fn takes classes
    >>> backend.pass_classes, backend.classes_passed
    (None, True)
    >>> np.exp(backend.score(np.ones((1, 1, 4)), ["ab"], classes=["long", "short", "tiny"])).round(3)
    array([[[0.832, 0.168, 0.   ]]])
    """

    def __init__(self, fn, embedding_dim, *, labels_only=False, embedding_std=None, cache_size=100_000,
                 pass_classes=None, cache=None, max_retries=0, retry_backoff=0.5, max_top_k=0):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}.")
        if not isinstance(embedding_dim, numbers.Integral) or isinstance(embedding_dim, bool) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int; got {embedding_dim!r}.")
        if embedding_std is not None and not (
            isinstance(embedding_std, numbers.Real) and np.isfinite(embedding_std) and embedding_std > 0
        ):
            raise ValueError(f"embedding_std must be a positive float or None; got {embedding_std!r}.")
        if pass_classes is not None and not isinstance(pass_classes, bool):
            raise ValueError(f"pass_classes must be True, False or None; got {pass_classes!r}.")
        if not isinstance(max_retries, numbers.Integral) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int; got {max_retries!r}.")
        if not (isinstance(retry_backoff, numbers.Real) and not isinstance(retry_backoff, bool)
                and np.isfinite(retry_backoff) and retry_backoff >= 0):
            raise ValueError(f"retry_backoff must be a non-negative number of seconds; got {retry_backoff!r}.")
        if not isinstance(max_top_k, numbers.Integral) or isinstance(max_top_k, bool) or max_top_k < 0:
            raise ValueError(f"max_top_k must be a non-negative int; got {max_top_k!r}.")
        super().__init__(cache_size=cache_size, cache=cache)
        self.max_top_k = int(max_top_k)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.fn = fn
        self._embedding_dim = int(embedding_dim)
        self.labels_only = bool(labels_only)
        self.embedding_std = embedding_std
        self.pass_classes = pass_classes
        self._classes_mode = _classes_mode(fn, pass_classes)

    @property
    def embedding_dim(self):
        return self._embedding_dim

    def embedding_stats(self):
        std = 1.0 if self.embedding_std is None else float(self.embedding_std)
        return np.zeros(self._embedding_dim), std

    @property
    def classes_passed(self):
        """bool: whether ``fn`` is called with the classes (see ``pass_classes``)."""
        return getattr(self, "_classes_mode", None) is not None

    def _call(self, prompt_embeddings, texts, classes, top_k=0):
        # A read-only copy: fn must not change the caller's array (with the
        # cache off that is the estimator's own prompt_embeddings_).
        prompts = np.array(prompt_embeddings, dtype=np.float32, order="C", copy=True)
        prompts.flags.writeable = False
        mode = getattr(self, "_classes_mode", None)  # absent from pickles of older versions
        if mode is None:
            args, kwargs = (prompts, list(texts)), {}
        elif mode == "keyword":
            args, kwargs = (prompts, list(texts)), {"classes": list(classes)}
        else:
            args, kwargs = (prompts, list(texts), list(classes)), {}
        if top_k:
            kwargs["top_k"] = top_k
        try:
            return self.fn(*args, **kwargs)
        except ValueError as exc:
            if "read-only" not in str(exc):
                raise
            raise BackendError(
                f"{self._source_name()} tried to write into a read-only array ({exc}). Its "
                "prompt_embeddings argument is read-only, so that it cannot change the "
                "estimator's prompts: work on a copy, e.g. np.array(prompt_embeddings)."
            ) from exc

    def _score(self, prompt_embeddings, texts, classes, top_k=0):
        if self.labels_only:
            return super()._score(prompt_embeddings, texts, classes)
        return self._call(prompt_embeddings, texts, classes, top_k)

    def _predict_labels(self, prompt_embeddings, texts, classes):
        if self.labels_only:
            return self._call(prompt_embeddings, texts, classes)
        return super()._predict_labels(prompt_embeddings, texts, classes)

    def _cache_identity(self):
        name = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', type(self.fn).__qualname__)}"
        return f"FunctionBackend|{name}|dim={self._embedding_dim}|labels_only={self.labels_only}"

    def _source_name(self):
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"FunctionBackend's function {name!r}"

    def __repr__(self):
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return (
            f"FunctionBackend({name}, embedding_dim={self._embedding_dim}, "
            f"labels_only={self.labels_only}"
            + (f", pass_classes={self.pass_classes}" if self.pass_classes is not None else "")
            + ")"
        )


def _classes_mode(fn, pass_classes):
    """How ``fn`` takes the classes: None (not at all), "keyword" or "positional"."""
    if pass_classes is False:
        return None
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # e.g. some builtins: nothing to read
        params = None
    if params is None:
        return "positional" if pass_classes else None
    kinds = inspect.Parameter
    if any(p.name == "classes" and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) for p in params):
        return "keyword"
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 and positional[2].default is kinds.empty:
        return "positional"
    if not pass_classes:
        return None
    if len(positional) >= 3 or any(p.kind == kinds.VAR_POSITIONAL for p in params):
        return "positional"
    if any(p.kind == kinds.VAR_KEYWORD for p in params):
        return "keyword"
    name = getattr(fn, "__qualname__", None) or repr(fn)
    raise ValueError(
        f"pass_classes=True, but fn {name!r} takes no third argument: give it a parameter "
        "classes (fn(prompt_embeddings, texts, classes)), or use pass_classes=None."
    )
