"""The estimator's side of the learner protocol: candidates z -> backend queries.

:class:`PromptProblem` is the only place where a learner's candidate vectors
meet texts and a backend. It maps ``Z`` to soft prompts with the projection,
asks the backend (in ``n_jobs`` concurrent requests if asked), counts every
(prompt, text) pair it requests, and refuses a request that would exceed the
budget *before* sending it.

With ``calibration`` (a family of :data:`~skprompt.readout.CALIBRATIONS`, or
``"auto"``: chosen on the first training scores asked for), every candidate's class
scores go through its own read-out (:mod:`skprompt.readout`), fitted on that
candidate's training scores: ``outputs`` and ``loss`` of either split are the
calibrated ones, so every learner searches for the calibrated loss without
knowing it. A candidate's read-out is fitted where its training scores are
asked for anyway (a learner scores candidates on the training split before it
validates them); a candidate validated without training scores costs its
training queries once more, counted as any other.

Every answer of a fit is remembered by candidate vector and split
(:meth:`PromptProblem.known_outputs`), so that the estimator reads the kept
prompts' answers (vote error rates on the validation split, read-outs) from
what the learner already paid for, and queries only what was never asked.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from joblib import Parallel, cpu_count, delayed

from .inference.base import BudgetExhausted
from .losses import compute_loss
from .readout import apply_readout, choose_readout, fit_family, identity_readout

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
    calibration : {None, "auto", "bias", "affine", "linear", "topk"}
        Read-out fitted per candidate on its training scores (score problems
        only: the estimator resolves it,
        ``BlackBoxPromptClassifier._resolve_calibration``). ``"auto"``: the family is chosen by
        :func:`~skprompt.readout.choose_readout` on the first candidates'
        training scores (the CMA-ES start, VI's first generation, the
        zero-shot texts), before any read-out is fitted, and kept for the fit;
        ``calibration`` then names it and ``calibration_report`` says why.
    calibration_l2 : float
        L2 pull of the read-out toward the identity (see :func:`~skprompt.readout.fit_readout`).
    top_k : int
        Ask the backend for the ``top_k`` largest log-probabilities of every
        answer too (``score(..., top_k=top_k)``): what the ``"topk"`` read-out
        learns from (``"auto"`` considers it then). Raw outputs carry them
        after the class scores.
    positions : dict or None
        Each split's positions in the fit's input (``{split: indices}``): the
        kept prompts' pooled read-outs see every fit text in input order, as
        the zero-shot read-out does (``"auto"``'s folds follow the order, so
        a kept start is read out exactly as zero-shot reads it). None: the
        training texts, then the validation texts.
    """

    def __init__(self, backend, projection, classes, splits, loss_name, labels_only, budget=None,
                 n_jobs=None, progress=None, calibration=None, calibration_l2=None, top_k=0, positions=None):
        self.backend = backend
        self.projection = projection
        self.classes = list(classes)
        self.splits = splits
        self.loss_name = loss_name
        self.labels_only = labels_only
        self.budget = budget
        self.n_jobs = n_jobs
        self.progress = progress
        # verbose fits also log one line per step (see BlackBoxPromptClassifier's verbose)
        self.logger = None
        self.log_name = "fit"
        self.log_total = None
        self._reports = 0
        self.calibration = calibration
        self.calibration_l2 = calibration_l2
        self.calibration_report = None
        self.top_k = top_k
        self.positions = positions
        self.queries = 0
        self.requests = 0
        self.reserved = 0
        self._lock = threading.Lock()
        self._known = {}  # (split, candidate bytes) -> raw outputs of that candidate
        self._readouts = {}  # candidate bytes -> (offsets, scale, token map or None)

    # -- protocol ---------------------------------------------------------
    @property
    def dim(self):
        return self.projection.intrinsic_dim

    @property
    def fits_readout(self):
        """Whether candidates' outputs go through a read-out fitted on their training scores."""
        return self.calibration is not None

    @property
    def n_classes(self):
        return len(self.classes)

    @property
    def remaining(self):
        """Queries left for the learner: the budget less what was asked and what is reserved."""
        return math.inf if self.budget is None else self.budget - self.queries - self.reserved

    def has_split(self, split):
        return split in self.splits and len(self.splits[split][0]) > 0

    def n_texts(self, split):
        return len(self.splits[split][0])

    def y(self, split):
        return self.splits[split][1]

    def _charge(self, cost):
        with self._lock:
            if cost > self.remaining:
                raise BudgetExhausted(
                    f"{cost} queries requested with {self.remaining} left of budget={self.budget}."
                )
            self.queries += cost
            self.requests += 1

    def _raw(self, Z, split):
        """Query the raw outputs of ``Z`` on ``split`` (budget checked), and remember them."""
        texts = self.splits[split][0]
        self._charge(Z.shape[0] * len(texts))
        out = self.query(self.projection(Z), texts)
        for z, row in zip(Z, out):
            self._known[(split, z.tobytes())] = row
        return out

    def _readout(self, Z, train_outputs=None, sample_weight=None):
        """Offsets and scales of ``Z``'s read-outs, fitted on their training scores.

        ``train_outputs``: the raw training outputs of ``Z`` if just queried;
        otherwise remembered ones are used and the rest are queried (counted).
        ``sample_weight``: the training texts' weights in the search loss
        (``(n_texts,)`` or ``(len(Z), n_texts)``), which a candidate's read-out
        is fitted with too; a candidate keeps the read-out of its first fit.
        """
        if self.calibration is None:
            return identity_readout(len(Z), self.n_classes) + (None,)
        keys = [z.tobytes() for z in Z]
        missing = [i for i, k in enumerate(keys) if k not in self._readouts]
        if missing:
            raw = train_outputs[missing] if train_outputs is not None else self.known_outputs(Z[missing], "train")
            if self.calibration == "auto":  # chosen once, on the first scores, so every candidate uses one family
                # (choose_readout leaves "topk" out of answers without top tokens)
                self.calibration, self.calibration_report = choose_readout(
                    raw, self.y("train"), n_classes=self.n_classes, **self._l2())
            weight = None
            if sample_weight is not None:
                weight = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64),
                                         (len(Z), self.n_texts("train")))[missing]
            offsets, scales, maps = self._fit_family(raw, self.y("train"), weight)
            for j, i in enumerate(missing):
                self._readouts[keys[i]] = (offsets[j], scales[j], maps[j])
        offsets = np.stack([self._readouts[k][0] for k in keys])
        scales = np.array([self._readouts[k][1] for k in keys])
        maps = [self._readouts[k][2] for k in keys]
        return offsets, scales, (maps if self.calibration == "topk" else None)

    def _fit_family(self, raw, y, sample_weight=None):
        """Read-outs of the fit's family on raw answers ``raw`` (n, n_texts, ...) with labels ``y``."""
        return fit_family(raw, y, self.calibration, self.n_classes, sample_weight=sample_weight, **self._l2())

    def _l2(self):
        return {} if self.calibration_l2 is None else {"l2": self.calibration_l2}

    def readouts(self, Z):
        """Read-outs ``(offsets, scales, token_maps)`` of the candidates ``Z``:
        offsets ``(n, n_classes)`` (0 without ``calibration``), scales
        ``(n,)`` (1 for ``"bias"``) or ``(n, n_classes, n_classes)``
        (``"linear"``), token maps (``"topk"``; else None; see
        :func:`~skprompt.readout.fit_token_readout`). Training scores never
        asked for are queried."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        return self._readout(Z)

    def pooled_readouts(self, Z, train_weight=None):
        """Read-outs of ``Z`` refitted, in the fit's family, on their training
        and validation answers together: the kept prompts' final read-outs,
        learnt from every fit text as the zero-shot read-out is
        (docs/defaults.md, "Read-outs of the kept prompts"). The answers the
        search asked for are reused; the rest are queried (counted, budget
        checked). ``train_weight`` (``(len(Z), n_train)``): the training
        texts' weights in each candidate's search (bootstrap members); the
        validation texts weigh 1. Without a validation split: :meth:`readouts`."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        readouts = self.readouts(Z)  # also settles the family ("auto")
        if self.calibration is None or not self.has_split("val"):
            return readouts
        raw = np.concatenate([self.known_outputs(Z, "train"), self.known_outputs(Z, "val")], axis=1)
        y = np.concatenate([self.y("train"), self.y("val")])
        weight = None
        if train_weight is not None:
            weight = np.concatenate([np.asarray(train_weight, dtype=np.float64),
                                     np.ones((len(Z), self.n_texts("val")))], axis=1)
        if self.positions is not None:  # every fit text in input order, as zero-shot sees them
            order = np.argsort(np.concatenate([self.positions["train"], self.positions["val"]]), kind="stable")
            raw, y = raw[:, order], y[order]
            weight = None if weight is None else weight[:, order]
        if self.calibration_report is not None:  # "auto": chosen again on every fit text (no query)
            self._choose_family_again(raw, y)
        offsets, scales, maps = self._fit_family(raw, y, weight)
        return offsets, scales, (maps if self.calibration == "topk" else None)

    def _choose_family_again(self, raw, y):
        """``"auto"``'s family chosen again for the kept prompts' final read-outs, on
        their answers to every fit text, as the zero-shot read-out is chosen. The
        search chose on the first candidate's training answers alone: on BBC
        News (120 texts) that choice was a near tie that went to ``"linear"`` on
        one seed of three and cost 8 points of test accuracy (docs/results.md,
        "Locating the search gap")."""
        if "search_chosen" in self.calibration_report:
            return  # chosen again already (pooled_readouts called twice)
        kind, report = choose_readout(raw, y, n_classes=self.n_classes, **self._l2())
        report["search_chosen"], report["search_report"] = self.calibration, self.calibration_report
        report["reason"] = (f"chosen again for the kept prompts on all {len(y)} fit texts: "
                            f"{report['reason']}; the search used {self.calibration!r}")
        self.calibration, self.calibration_report = kind, report

    def outputs(self, Z, split="train", sample_weight=None):
        """Outputs of ``Z`` on ``split``: calibrated log-probabilities, raw
        log-probabilities or labels. One request (two for validation outputs
        of candidates whose read-out needs training scores never asked for);
        the whole cost is checked against the budget before any query.
        ``sample_weight`` (training split only): the texts' weights in the
        search loss, which new read-outs are fitted with."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        if self.calibration is None:
            return self._raw(Z, split)
        if split == "train":
            raw = self._raw(Z, split)
            return apply_readout(raw, *self._readout(Z, raw, sample_weight))
        need = sum(z.tobytes() not in self._readouts for z in Z)
        cost = len(Z) * self.n_texts(split) + need * self.n_texts("train")
        if cost > self.remaining:
            raise BudgetExhausted(f"{cost} queries requested with {self.remaining} left of budget={self.budget}.")
        readout = self._readout(Z)
        return apply_readout(self._raw(Z, split), *readout)

    def known_outputs(self, Z, split):
        """Raw outputs of ``Z`` on ``split``, from what this fit already
        asked; only the rest is queried (counted, budget checked)."""
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        keys = [(split, z.tobytes()) for z in Z]
        missing = [i for i, k in enumerate(keys) if k not in self._known]
        if missing:
            self._raw(Z[missing], split)
        return np.stack([self._known[k] for k in keys])

    def loss(self, Z, split="train", sample_weight=None):
        """Mean loss of each candidate; ``sample_weight`` (``(n_texts,)`` or
        ``(len(Z), n_texts)``) weights the texts."""
        weight = sample_weight if split == "train" else None
        return compute_loss(self.loss_name, self.outputs(Z, split, sample_weight=weight), self.y(split),
                            sample_weight)

    def report(self, **info):
        if self.logger is not None:
            self._reports += 1
            fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
            self.logger.info("%s step %d/%s: %s (queries %d)", self.log_name, self._reports,
                             self.log_total if self.log_total is not None else "?", fields, self.queries)
        if self.progress is not None:
            self.progress.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                                      refresh=False)
            self.progress.update(1)

    # -- backend access -----------------------------------------------------
    def query(self, prompts, texts):
        """Scores (or labels) of prompts on texts, split over ``n_jobs`` requests."""
        call = self.backend.predict_labels if self.labels_only else self.backend.score
        if self.top_k and not self.labels_only:
            call = functools.partial(self.backend.score, top_k=self.top_k)
        n_chunks = min(_concurrent_requests(self.n_jobs), len(prompts))
        if n_chunks <= 1:
            return call(prompts, texts, self.classes)
        chunks = np.array_split(np.arange(len(prompts)), n_chunks)
        parts = Parallel(n_jobs=n_chunks, backend="threading")(
            delayed(call)(prompts[idx], texts, self.classes) for idx in chunks
        )
        return np.concatenate(parts, axis=0)


def _concurrent_requests(n_jobs):
    """Requests one fit sends at once: ``n_jobs`` as the estimators document it
    (``None``: 1; ``-1``: one per CPU), threads of this process. Not joblib's
    ``effective_n_jobs``, which follows an outer ``parallel_config``: inside a
    ``GridSearchCV`` on a Dask cluster it made every fit split its requests
    into cluster tasks, each on a backend copy with empty caches (measured:
    fits 7x slower in the workers than in one process)."""
    if n_jobs is None:
        return 1
    return max(1, cpu_count() + 1 + n_jobs if n_jobs < 0 else n_jobs)
