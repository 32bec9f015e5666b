"""The black-box boundary: the protocol every backend follows.

A backend turns candidate soft prompts and texts into class scores. It never
sees a learner: it gets arrays of prompt embeddings, a list of texts and the
classes to read out, and answers with class log-probabilities (or, for a
label-only API, with predicted class indices).

This module holds what all backends share: input validation, call
accounting, a bounded result cache, and the clone / pickle behaviour that keeps
model weights out of copies.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict

import numpy as np

__all__ = ["PromptBackend", "BackendError", "TransientBackendError", "ContextWarning", "log_softmax",
           "LOG_PROBA_FLOOR", "call_with_retries"]

_LOG = logging.getLogger("skprompt")

#: The lowest class log-probability :meth:`PromptBackend.score` answers: the
#: log of the smallest normal float64 (about -708.4). A class the model gives
#: no probability (a score of -inf, e.g. a label word outside an API's top-k
#: log-probabilities) reads as this, so that losses, read-outs and averages
#: over prompts stay finite (-inf - -inf is NaN) and a search can still rank
#: prompts by how many texts leave their class unscored.
LOG_PROBA_FLOOR = float(np.log(np.finfo(np.float64).tiny))


class BackendError(ValueError):
    """A backend was used in a way it does not support, or answered badly."""


class TransientBackendError(BackendError):
    """A failure that may not happen again: a lost connection, a timeout, an
    overloaded server (HTTP 429 or 5xx). Backends retry these (``max_retries``);
    a function wrapped by :class:`~skprompt.backends.FunctionBackend` may raise
    it (or ``ConnectionError`` / ``TimeoutError``) to ask for a retry."""


#: What a retry may cure. Everything else (a 4xx answer, a wrong key, a bad
#: shape) fails at once: sending the same request again would fail again.
RETRYABLE_ERRORS = (TransientBackendError, ConnectionError, TimeoutError)


def call_with_retries(fn, *, max_retries, backoff=0.5, max_backoff=30.0, what="the request", on_retry=None):
    """``fn()``, retried on :data:`RETRYABLE_ERRORS` with exponential backoff and jitter.

    Requests to a model are idempotent (the same prompt and text give the
    same answer), so a retry never changes a result; it only costs time.

    Parameters
    ----------
    fn : callable
        Called with no argument.
    max_retries : int
        Retries after the first attempt (0: none).
    backoff : float, default=0.5
        Seconds before the first retry; doubled at each further retry, capped
        at ``max_backoff``, and multiplied by a random factor in [0.5, 1)
        ("equal jitter"), so that many clients failing together do not retry
        in lockstep.
    what : str
        Names the request in the error raised when every attempt failed.
    on_retry : callable or None
        ``on_retry(exc, delay)`` before each retry (e.g. to count it).

    Raises
    ------
    BackendError
        Every attempt failed with a retryable error (the last one is chained).
    """
    jitter = random.Random()  # timing only: results never depend on it
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except RETRYABLE_ERRORS as exc:
            if attempt >= max_retries:
                raise BackendError(
                    f"{what} failed after {attempt + 1} attempt(s); last error: {exc}"
                ) from exc
            delay = min(max_backoff, backoff * 2.0 ** attempt) * (0.5 + 0.5 * jitter.random())
            _LOG.warning("%s failed (%s); retry %d of %d in %.2f s", what, exc, attempt + 1, max_retries, delay)
            if on_retry is not None:
                on_retry(exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class ContextWarning(UserWarning):
    """Texts too long for the model's context were cut (see the transformers
    backends' ``truncation``)."""


def log_softmax(scores, axis=-1):
    """Numerically stable log-softmax of a float array along ``axis``."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - np.max(scores, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


class PromptBackend:
    """Base class of the black-box backends.

    Subclasses implement :meth:`_score` (score backends) or
    :meth:`_predict_labels` (label-only backends), :attr:`embedding_dim` and
    :meth:`embedding_stats`; everything else is shared.

    Parameters
    ----------
    cache_size : int, default=100_000
        Maximum number of (prompt, text) results kept in an in-memory LRU
        cache, so that asking twice for the same prompt and text (``predict``
        after ``predict_proba``, repeated evaluation in a grid search) costs no
        second query. ``0`` disables the cache.
    cache : str, os.PathLike or None, default=None
        A file where every answered (prompt, text) query is kept on disk (a
        SQLite database, see :class:`~skprompt.backends.store.QueryStore`),
        keyed by the backend's identity (model, for the transformers and vLLM
        backends with a digest of its input-embedding table, layout,
        template, label words), the classes, the prompt's bytes and the text. A fit that was
        interrupted (Ctrl-C, a crash, a dead server) and is run again with the
        same ``random_state`` replays its answered queries from the file and
        asks only the others: the same result as an uninterrupted fit.
        Several threads and processes (GridSearchCV's workers) may share one
        file. ``None``: nothing is written to disk.

    Notes
    -----
    Call accounting: :attr:`stats` counts the requests sent to the model, the
    (prompt, text) pairs they carried, the pairs answered from the in-memory
    cache (``cached_pairs``) and from the ``cache`` file (``disk_pairs``),
    and the retries of failed requests (``retries``; see
    :func:`call_with_retries`: connection errors, timeouts, HTTP 429 and 5xx
    are retried with exponential backoff, ``max_retries`` times, where the
    backend has that parameter).
    The estimator keeps its own count of the pairs it *asked for*
    (``n_queries_``), which does not depend on what happened to be cached.

    Optional hook: a backend that caches per-text work for fitting may offer
    ``stream_texts()``, a context manager the estimators enter around
    prediction, so that new texts seen once do not fill that cache (the
    transformers backends have it; see ``CausalLMBackend.stream_texts``).
    Backends without it are called as always.

    A backend is not fitted state: ``copy.deepcopy`` (and so, for backends
    without parameters, :func:`sklearn.base.clone`) returns the backend
    itself, and the cache and counters are not pickled. The transformers
    backends have parameters (``get_params`` / ``set_params``) and clone into
    a new backend that shares the loaded weights.
    """

    #: ``True`` for APIs that only return the predicted label.
    labels_only = False
    #: How many of the largest log-probabilities of the whole vocabulary at
    #: the answer position the backend can return beside the class scores
    #: (``score(..., top_k=k)``); 0: none. Backends that offer it implement
    #: ``_score(prompts, texts, classes, top_k=0)``.
    max_top_k = 0
    #: Retries of a failed request (see :func:`call_with_retries`); backends
    #: that talk to a remote model set it from a parameter.
    max_retries = 0
    retry_backoff = 0.5

    def __init__(self, *, cache_size=100_000, cache=None):
        self.cache_size = cache_size
        self.cache = cache
        self._store = None
        if cache is not None:
            from .store import QueryStore

            self._store = QueryStore(cache)  # a bad path fails here, before any query
        self._init_runtime_state()

    # ------------------------------------------------------------------ state
    _STATS_KEYS = ("requests", "pairs", "cached_pairs", "disk_pairs", "retries")

    def _init_runtime_state(self):
        self._lock = threading.RLock()
        self._cache = OrderedDict()
        self._stats = dict.fromkeys(self._STATS_KEYS, 0)

    def _cache_identity(self):
        """What, besides the prompt, the text and the classes, determines an
        answer: the key under which the ``cache`` file keeps it.

        Backends that support ``cache=`` return a str naming the model and
        every setting that changes a score (template, label words, layout,
        precision...). Two backends with the same identity must give the same
        answers.
        """
        raise BackendError(
            f"{type(self).__name__} does not support cache= (a persistent query cache): it does not say "
            "what identifies its answers. Implement _cache_identity() returning a str that names the model "
            "and every setting that changes a score."
        )

    def __deepcopy__(self, memo):
        # A backend is a handle on an external model, not fitted state:
        # sklearn.clone must not copy its weights.
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_lock", "_cache", "_stats"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime_state()

    @property
    def stats(self):
        """dict: ``requests``, ``pairs`` (scored by the model), ``cached_pairs``
        (answered from the in-memory cache), ``disk_pairs`` (answered from the
        ``cache`` file) and ``retries`` (failed requests sent again) since
        creation; some backends add their own counts."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self):
        """Set the call counters back to zero."""
        with self._lock:
            self._stats = dict.fromkeys(self._STATS_KEYS, 0)

    def clear_cache(self):
        """Drop every cached result."""
        with self._lock:
            self._cache.clear()

    # --------------------------------------------------------- to implement
    @property
    def embedding_dim(self):
        """int: width of one soft-prompt vector (the model's input embedding size)."""
        raise NotImplementedError

    def embedding_stats(self):
        """Statistics of the input embedding table.

        Returns
        -------
        mean : ndarray of shape (embedding_dim,)
            Mean embedding vector.
        std : float
            Standard deviation of all entries of the table. The projection
            scales its random matrix with it (as Black-Box Tuning does).
        """
        raise NotImplementedError

    @property
    def default_prompt_length(self):
        """int or None: the number of soft-prompt vectors this backend suggests
        (the estimator's ``n_prompt_tokens=None`` uses it; ``None``: no suggestion)."""
        return None

    def initial_prompt(self, n_prompt_tokens):
        """The soft prompt that ``z = 0`` maps to, or ``None``.

        Returns an array of shape ``(n_prompt_tokens, embedding_dim)``, e.g.
        the embeddings of real tokens of the template, so that the untuned
        prompt reproduces a known input; ``None`` (the default) centres the
        search on the mean input embedding, as Black-Box Tuning does.
        """
        return None

    def check_classes(self, classes):
        """Raise a clear error if some class cannot be read out.

        Called by the estimator before any model call. The default accepts
        any classes.
        """

    def _score(self, prompt_embeddings, texts, classes):
        raise BackendError(
            f"{type(self).__name__} is a label-only backend: it returns predicted "
            "labels, not scores. Use a label-only method (method='abc-smc' or "
            "'snpe') with it."
        )

    def _predict_labels(self, prompt_embeddings, texts, classes):
        return np.argmax(self._cached_score(prompt_embeddings, texts, classes), axis=-1)

    # ------------------------------------------------------------ public API
    def score(self, prompt_embeddings, texts, classes, top_k=0):
        """Class log-probabilities of every (prompt, text) pair.

        Parameters
        ----------
        prompt_embeddings : array-like of shape (n_prompts, n_prompt_tokens, embedding_dim)
            Candidate soft prompts. ``n_prompt_tokens`` may be 0 (no prompt:
            the zero-shot model).
        texts : sequence of str
            The inputs, ``n_texts`` of them.
        classes : sequence
            The class labels to read out, in the order of the output columns.
        top_k : int, default=0
            Also return the ``top_k`` largest log-probabilities of the whole
            vocabulary at the answer position and their token ids (at most
            :attr:`max_top_k`; the ``"topk"`` read-out of
            :mod:`skprompt.readout` learns from them).

        Returns
        -------
        ndarray of shape (n_prompts, n_texts, n_classes + 2 * top_k)
            Log-softmax over the classes' scores, floored at
            :data:`LOG_PROBA_FLOOR` (a class scored -inf reads as it); with
            ``top_k``, then the ``top_k`` log-probabilities in decreasing
            order, then their token ids (as floats).
        """
        if self.labels_only:
            return self._score(None, None, None)  # raises the clear error
        prompts, texts, classes = self._validate_call(prompt_embeddings, texts, classes)
        if top_k:
            k = self._check_top_k(top_k)
            return self._cached_call(prompts, texts, classes, functools.partial(self._score, top_k=k),
                                     labels=False, top_k=k)
        return self._cached_score(prompts, texts, classes)

    def predict_labels(self, prompt_embeddings, texts, classes):
        """Predicted class index of every (prompt, text) pair.

        Same arguments as :meth:`score`; returns an int ndarray of shape
        ``(n_prompts, n_texts)`` of indices into ``classes``. A score backend
        answers with the arg-max of its scores.
        """
        prompts, texts, classes = self._validate_call(prompt_embeddings, texts, classes)
        if not self.labels_only:
            return self._predict_labels(prompts, texts, classes)
        return self._cached_call(prompts, texts, classes, self._predict_labels, labels=True)

    # -------------------------------------------------------------- helpers
    def _check_top_k(self, top_k):
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise BackendError(f"top_k must be a non-negative int; got {top_k!r}.")
        if top_k > self.max_top_k:
            raise BackendError(
                f"top_k={top_k} exceeds what {self._source_name()} can return (max_top_k={self.max_top_k}).")
        return int(top_k)

    def _validate_call(self, prompt_embeddings, texts, classes):
        prompts = np.asarray(prompt_embeddings, dtype=np.float32)
        if prompts.ndim != 3 or prompts.shape[2] != self.embedding_dim:
            raise BackendError(
                "prompt_embeddings must have shape (n_prompts, n_prompt_tokens, "
                f"{self.embedding_dim}); got {prompts.shape}."
            )
        if not np.all(np.isfinite(prompts)):
            raise BackendError("prompt_embeddings contain NaN or infinite values.")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BackendError("texts must be a sequence of str.")
        texts = list(texts)
        classes = list(classes)
        if len(classes) < 2:
            raise BackendError(f"classes must hold at least two labels; got {classes!r}.")
        return prompts, texts, classes

    @staticmethod
    def _prompt_key(prompt):
        return hashlib.sha1(np.ascontiguousarray(prompt).tobytes() + str(prompt.shape).encode()).hexdigest()

    def _cached_score(self, prompts, texts, classes):
        return self._cached_call(prompts, texts, classes, self._score, labels=False)

    def _count_retry(self, exc, delay):
        with self._lock:
            self._stats["retries"] += 1

    def _compute(self, compute, prompts, texts, classes):
        """``compute(prompts, texts, classes)``, retried on transient errors
        when the backend has ``max_retries`` (see :func:`call_with_retries`)."""
        if not self.max_retries:
            return compute(prompts, texts, classes)
        return call_with_retries(lambda: compute(prompts, texts, classes), max_retries=self.max_retries,
                                 backoff=self.retry_backoff, what=f"{self._source_name()}'s request",
                                 on_retry=self._count_retry)

    def _cached_call(self, prompts, texts, classes, compute, labels, top_k=0):
        n_prompts, n_texts = prompts.shape[0], len(texts)
        n_classes = len(classes)
        out_shape = (n_prompts, n_texts) if labels else (n_prompts, n_texts, n_classes + 2 * top_k)
        if n_prompts == 0 or n_texts == 0:
            return np.zeros(out_shape, dtype=np.int64 if labels else np.float64)
        store = getattr(self, "_store", None)
        if not self.cache_size and store is None:
            result = self._checked(self._compute(compute, prompts, texts, classes), out_shape, labels, n_classes,
                                   texts)
            with self._lock:
                self._stats["requests"] += 1
                self._stats["pairs"] += n_prompts * n_texts
            return result

        tag = (tuple(map(repr, classes)), labels)
        # answers with the top tokens are kept apart; their class scores also
        # answer a later plain call
        plain_tag, tag = tag, (tag + (("top", top_k),) if top_k else tag)
        pkeys = [self._prompt_key(p) for p in prompts]
        out = np.empty(out_shape, dtype=np.int64 if labels else np.float64)
        known = np.zeros((n_prompts, n_texts), dtype=bool)
        n_hits = n_disk = 0
        if self.cache_size:
            with self._lock:
                for i, pk in enumerate(pkeys):
                    for j, text in enumerate(texts):
                        hit = self._cache.get((pk, text, tag))
                        if hit is not None:
                            self._cache.move_to_end((pk, text, tag))
                            out[i, j] = hit
                            known[i, j] = True
                            n_hits += 1
        if store is not None:
            identity, disk_tag = self._cache_identity(), repr(tag)
            want = {}  # disk key -> the (prompt, text) positions it answers
            for i, j in zip(*np.nonzero(~known)):
                want.setdefault(store.key(identity, disk_tag, pkeys[i], texts[j]), []).append((i, j))
            if want:
                found = store.get_many(want, labels)
                with self._lock:
                    for key, answer in found.items():
                        for i, j in want[key]:
                            out[i, j] = answer
                            known[i, j] = True
                            n_disk += 1
                        if self.cache_size:
                            i, j = want[key][0]
                            self._cache[(pkeys[i], texts[j], tag)] = answer
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        missing_prompts = [i for i in range(n_prompts) if not known[i].all()]
        if missing_prompts:
            # Ask for the smallest rectangle that covers every missing pair.
            missing_texts = dict.fromkeys(texts[j] for i in missing_prompts for j in np.flatnonzero(~known[i]))
            uniq_idx = sorted({pkeys[i]: i for i in missing_prompts}.values())
            sub_texts = list(missing_texts)
            result = self._checked(
                self._compute(compute, prompts[uniq_idx], sub_texts, classes),
                (len(uniq_idx), len(sub_texts)) + out_shape[2:],
                labels,
                n_classes,
                sub_texts,
            )
            text_pos = {t: k for k, t in enumerate(sub_texts)}
            row_of = {pkeys[i]: r for r, i in enumerate(uniq_idx)}
            if store is not None:
                # One transaction per request: it is stored whole or not at all.
                items = [(store.key(identity, disk_tag, pk, t), result[r, k])
                         for pk, r in row_of.items() for t, k in text_pos.items()]
                if top_k:  # the class scores also answer a later plain call
                    items += [(store.key(identity, repr(plain_tag), pk, t), result[r, k, :n_classes])
                              for pk, r in row_of.items() for t, k in text_pos.items()]
                store.put_many(items)
            with self._lock:
                self._stats["requests"] += 1
                self._stats["pairs"] += len(uniq_idx) * len(sub_texts)
                if self.cache_size:
                    for pk, r in row_of.items():
                        for t, k in text_pos.items():
                            self._cache[(pk, t, tag)] = result[r, k]
                            if top_k:
                                self._cache[(pk, t, plain_tag)] = result[r, k, :n_classes]
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            for i in missing_prompts:
                r = row_of[pkeys[i]]
                for j in np.flatnonzero(~known[i]):
                    out[i, j] = result[r, text_pos[texts[j]]]
        with self._lock:
            self._stats["cached_pairs"] += n_hits
            self._stats["disk_pairs"] += n_disk
        return out

    def _checked(self, result, shape, labels, n_classes, texts=None):
        """Validate what an implementation returned (shape, finiteness, range).

        Scores may hold -inf (a class the model gives no probability), not NaN
        or +inf, and not -inf for every class of a (prompt, text) pair.
        ``texts``, the request's texts, only name the pair in that error.
        """
        name = self._source_name()
        arr = np.asarray(result)
        if arr.shape != shape:
            raise BackendError(
                f"{name} returned an array of shape {arr.shape}; expected {shape} "
                + ("(n_prompts, n_texts) of class indices." if labels else "(n_prompts, n_texts, n_classes).")
            )
        if not labels and shape[-1] > n_classes:  # class scores, then top log-probabilities and token ids
            return np.concatenate([self._checked(arr[..., :n_classes], shape[:-1] + (n_classes,), labels,
                                                 n_classes, texts), self._checked_top(arr[..., n_classes:])],
                                  axis=-1)
        if labels:
            if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
                if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                    raise BackendError(f"{name} must return integer class indices; got dtype {arr.dtype}.")
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
                raise BackendError(
                    f"{name} returned class indices outside [0, {n_classes - 1}] "
                    f"(min {arr.min()}, max {arr.max()})."
                )
            return arr
        if not np.issubdtype(arr.dtype, np.number):
            raise BackendError(f"{name} must return numeric scores; got dtype {arr.dtype}.")
        arr = arr.astype(np.float64)
        # -inf is a class the model gives no probability: what a top-k
        # log-probability API reports for a label word outside its top tokens.
        bad = np.isnan(arr) | np.isposinf(arr)
        if bad.any():
            raise BackendError(
                f"{name} returned NaN or infinite scores ({int(np.isnan(arr).sum())} NaN, "
                f"{int(np.isposinf(arr).sum())} +inf). Scores must be finite, or -inf for a class "
                "the model gives no probability (e.g. outside an API's top-k log-probabilities)."
            )
        unscored = np.isneginf(arr).all(axis=-1)
        if unscored.any():
            i, j = (int(k) for k in np.argwhere(unscored)[0])
            where = f"text {texts[j]!r}" if texts is not None else f"text {j} of the request"
            raise BackendError(
                f"{name} returned -inf for every class ({int(unscored.sum())} (prompt, text) pair(s), "
                f"e.g. prompt {i} on {where}): no class was scored at all, so there is no "
                "class probability to read. At least one class of each pair needs a finite score "
                "(with a top-k log-probability API, ask for more top tokens)."
            )
        return np.maximum(log_softmax(arr, axis=-1), LOG_PROBA_FLOOR)

    def _checked_top(self, arr):
        """Validate the top log-probabilities (decreasing, at most 0) and their token ids."""
        name = self._source_name()
        k = arr.shape[-1] // 2
        values, ids = arr[..., :k].astype(np.float64), arr[..., k:].astype(np.float64)
        if not np.all(np.isfinite(values)) or np.any(values > 1e-4) or np.any(np.diff(values, axis=-1) > 1e-4):
            raise BackendError(f"{name} returned top log-probabilities that are not finite, at most 0 and "
                               "in decreasing order.")
        if not np.all(np.isfinite(ids)) or np.any(ids < 0) or np.any(ids != np.round(ids)):
            raise BackendError(f"{name} returned top token ids that are not non-negative integers.")
        return np.concatenate([np.minimum(values, 0.0), ids], axis=-1)

    def _source_name(self):
        return type(self).__name__

    def __repr__(self):
        return f"{type(self).__name__}()"
