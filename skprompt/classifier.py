"""The estimator: ``BlackBoxPromptClassifier``.

It validates the data, builds the search space (a random projection of
z in R^d to a soft prompt), hands a learner a :class:`~skprompt._problem.PromptProblem`
(candidate vectors in, losses out) and aggregates the prompt samples it
returns into ``predict_proba``. Learners never see texts or models; backends
never see learners.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from types import SimpleNamespace

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ._problem import PromptProblem
from ._estimator import PromptEstimator, streaming, validation_split
from ._validation import check_param, check_texts
from .backends.base import PromptBackend
from .exceptions import BudgetWarning, CostWarning
from .inference import (ABCSMCLearner, BudgetExhausted, CMAEnsembleLearner, SNPELearner, VariationalLearner,
                        aggregate_outputs, select_without)
from .losses import LOSSES, SCORE_LOSSES
from .projection import RandomProjection
from .readout import AUTO_CALIBRATIONS, CALIBRATIONS, DEFAULT_TOP_K, apply_readout
from .uncertainty import decompose_uncertainty
from .votes import VoteReadout, out_of_fold_votes, vote_error_rates, vote_shares

__all__ = ["BlackBoxPromptClassifier", "METHODS", "LABEL_METHODS"]

#: An unbudgeted fit expected to make more queries than this gets a
#: CostWarning before it starts (about 4 hours of SmolLM2-135M on 2 CPU cores
#: at the ~130 pairs/s of docs/performance.md).
ABSURD_QUERIES = 2_000_000
#: Shared parameters the likelihood-free methods do not use, and what sets
#: the same thing for them (refused when changed, never ignored silently).
_UNUSED_BY = {
    "abc-smc": {"popsize": "method_params['n_particles']", "max_iter": "method_params['max_rounds']"},
    "snpe": {"popsize": "method_params['n_simulations']", "max_iter": "method_params['n_rounds']"},
}

#: Progress of verbose fits (``verbose``), one line per step at INFO.
_LOGGER = logging.getLogger("skprompt")

#: Learners by ``method`` name.
METHODS = ("zero-shot", "bbt", "ensemble", "vi", "abc-smc", "snpe")
#: Likelihood-free methods: they use only predicted labels and predict by votes.
LABEL_METHODS = ("abc-smc", "snpe")
#: Methods that need class scores from the backend.
SCORE_METHODS = ("vi",)
#: Named ways of turning votes into probabilities (``vote_smoothing``).
VOTE_SMOOTHINGS = ("calibrated", "error")
#: Options of ``method_params`` for ``"bbt"`` / ``"ensemble"``.
CMA_PARAMS = ("bootstrap", "keep_start")


class BlackBoxPromptClassifier(PromptEstimator):
    """Soft-prompt tuning of a black-box language model, as a classifier.

    The model is only queried: for candidate soft prompts (continuous vectors
    placed among the input embeddings) and texts it returns class scores, or
    only labels. The prompt is searched without gradients by CMA-ES in a
    random ``intrinsic_dim``-dimensional subspace (Black-Box Tuning), and
    ``method="ensemble"`` keeps several independently tuned prompts whose
    averaged probabilities are better calibrated than one prompt's (Shen et
    al., "Reliable Gradient-free and Likelihood-free Prompt Tuning", 2023).

    Parameters
    ----------
    backend : PromptBackend or None, default=None
        The black box (see :mod:`skprompt.backends`). ``None`` loads the
        bundled SmolLM2-135M-Instruct model (:func:`skprompt.models.default_backend`)
        with the class labels themselves as label words.
    method : {"ensemble", "bbt", "vi", "abc-smc", "snpe", "zero-shot"}, default="ensemble"
        How the prompt distribution is learnt:

        - ``"bbt"``: one CMA-ES run, one prompt (Black-Box Tuning).
        - ``"ensemble"``: ``n_prompts`` independent CMA-ES runs, uniform weights.
        - ``"vi"``: gradient-free variational inference: CMA-ES over the mean
          and log-variance of a diagonal Gaussian q(z) minimising a Monte
          Carlo negative ELBO; ``n_prompts`` draws from the kept q.
          Needs class scores.
        - ``"abc-smc"``: likelihood-free ABC-SMC population (importance
          weighted) on the training error rate. Uses predicted labels only.
        - ``"snpe"``: likelihood-free neural posterior estimation with the
          ``sbi`` package (``pip install "skprompt[sbi]"``), conditioned on
          the true training labels. Uses predicted labels only.
        - ``"zero-shot"``: no soft prompt and no tuning (a baseline; ``fit``
          queries nothing).

        The likelihood-free methods (and any method on a label-only backend)
        predict with the weighted histogram of the prompts' votes.
    n_prompts : int, default=4
        Number of prompt samples kept: ensemble size, draws from the VI
        posterior or from the SNPE posterior. For ``"abc-smc"`` a floor on
        the population, which is ``method_params["n_particles"]``, by
        default ``max(n_prompts, 16)`` (measured: fewer particles collapse to
        one prompt in 50 dimensions); the whole weighted population is kept.
        Ignored by ``"bbt"`` and ``"zero-shot"``.
    n_prompt_tokens : int or None, default=None
        Number of soft-prompt vectors. ``None``: the backend's suggestion
        (:attr:`~skprompt.backends.PromptBackend.default_prompt_length`; for a
        ``CausalLMBackend`` with ``prompt_position="tail"``, the length of the
        template's tail, so that the untuned prompt is the zero-shot
        template), else 5.
    intrinsic_dim : int, default=50
        Dimension of the search space z.
    popsize : int, default=8
        CMA-ES population size.
    max_iter : int, default=15
        CMA-ES generations per run.
    sigma0 : float, default=0.1
        Initial CMA-ES step size; z starts at 0. The projection maps
        ``z ~ N(0, I)`` to prompt perturbations with the spread of the model's
        input embeddings, so ``sigma0`` is the initial perturbation in units
        of the embedding standard deviation (and the default prior of the
        Bayesian methods is ``N(0, sigma0**2 I)``).
    loss : {"ce", "hinge", "brier", "zero_one"}, default="ce"
        Training loss of ``"bbt"``, ``"ensemble"`` and ``"vi"``. A label-only
        backend allows only ``"zero_one"``. The likelihood-free methods ignore
        it: their distance is the training error rate.
    calibration : {"auto", "bias", "affine", "linear", "topk"} or None, default="auto"
        A read-out learnt with the prompt (:mod:`skprompt.readout`): every
        candidate prompt's class scores get per-class offsets (``"bias"``),
        offsets and a temperature (``"affine"``), offsets and a full
        linear map of the class scores (``"linear"``), or the affine
        read-out plus weights on the log-probabilities of the other tokens
        the model names at the answer position (``"topk"``: the backend's
        top :data:`~skprompt.readout.DEFAULT_TOP_K`, for backends with
        ``max_top_k``, e.g. the transformers backends), fitted on that
        candidate's own training scores by a small L2-penalised logistic fit
        (no query of its own where the search scores the candidate on the
        training texts anyway; the CMA-ES start and VI's validation draws
        pay for their training scores, within ``budget``); the search then
        ranks prompts by their
        *calibrated* loss. Every kept prompt's read-out is then refitted
        on the training and validation texts together (no
        query for ``bbt`` and ``ensemble``, whose kept prompts were
        validated; ``n_prompts x n_val`` for ``vi``'s fresh draws) and kept
        (``offsets_``, ``scales_``, ``token_maps_``), applied by
        ``predict_proba`` and ``predict_uncertainty``. It removes the label words' prior bias, which
        a prompt search otherwise spends its queries on. With
        ``method="zero-shot"`` the read-out is fitted on all the fit texts
        (one query per text: contextual calibration). ``"auto"``: for
        score-based predictions, the family of
        :data:`~skprompt.readout.AUTO_CALIBRATIONS` with the lowest
        cross-validated log loss on the first training scores the fit asks
        for (``"topk"`` where the backend returns top tokens)
        (:func:`~skprompt.readout.choose_readout`; no extra query), used by
        the search; then chosen again, on the kept prompts' answers to every
        fit text, for their final read-outs (``calibration_``;
        ``fit_info_["calibration"]`` has both choices); ``None`` for
        vote-based ones. Needs class scores: an
        explicit value with a likelihood-free method or a label-only backend
        is an error. ``None``: the raw scores.
    validation_fraction : float in (0, 1) or None, default=0.25
        Share of the fit data held out (stratified) to select each run's
        kept prompt by validation loss, as the paper selects by dev
        accuracy. ``None`` selects by training loss. When a class has too
        few examples to split, selection falls back to training loss with a
        warning.
    budget : int or None, default=None
        Maximum number of (prompt, text) pairs scored during ``fit``,
        validation included. When the next step would exceed it, ``fit``
        stops, keeps the best prompts found so far and emits a
        :class:`~skprompt.exceptions.BudgetWarning`.
    method_params : dict or None, default=None
        Method-specific options, validated in ``fit`` (unknown keys are an
        error). ``"bbt"``/``"ensemble"``: ``bootstrap`` (bool, default
        False: each member's training loss weights the texts by its own
        Bayesian-bootstrap draw, for diversity at no extra query; off by
        default because it measured no gain on Rotten Tomatoes and BBC News,
        docs/defaults.md); ``keep_start`` (bool, default True for ``"bbt"``
        and False for ``"ensemble"``: a member keeps its tuned prompt only
        if it beats the untuned one on the validation loss (log loss at
        ``loss="ce"``) by more than one standard error of the per-text
        differences, else it reverts to the untuned prompt, at no extra
        query; over seven task x model cells it lowered ``bbt``'s log loss
        by 0.008 on average and cost ``ensemble`` 0.4 points of accuracy,
        docs/defaults.md); see
        :class:`~skprompt.inference.cmaes.CMAEnsembleLearner`. ``"vi"``: ``n_mc``, ``kl_weight``, ``prior_variance``,
        ``init_log_var``, ``min_variance``, ``n_val_draws`` (see
        :class:`~skprompt.inference.vi.VariationalLearner`). ``"abc-smc"``:
        ``n_particles``, ``move`` (default ``"mcmc"``), ``prior_variance``,
        ``max_rounds``, ``quantile``, ``kernel`` (default ``"pcn"``),
        ``kernel_scale``, ``kernel_floor``, ``ess_threshold``, ``n_initial``,
        ``max_simulations_per_round``, ``batch_size`` (see
        :class:`~skprompt.inference.abc_smc.ABCSMCLearner`). ``"snpe"``:
        ``inference`` (``"npe"``, sbi's posterior estimator, or
        ``"factorised"``, one learnt likelihood per training text, which
        needs no sbi), ``n_rounds``, ``n_simulations`` and the others of
        :class:`~skprompt.inference.snpe.SNPELearner`. A ``prior_variance``
        left unset defaults to ``sigma0 ** 2``.
    vote_smoothing : {"calibrated", "error"} or float >= 0, default="calibrated"
        How vote-based predictions (likelihood-free methods, label-only
        backends) turn votes into probabilities without exact zeros, so that
        log loss stays finite. Both named read-outs learn from validation
        texts that did not choose what they judge: the learner's choice of
        prompts (a member's candidate, a round) is re-made without each
        validation text, from answers the fit already has (leave-one-out, no
        query; :mod:`skprompt.votes`).
        ``"calibrated"``: a temperature and per-class offsets on the log of
        the vote shares (smoothed by one vote), fitted on each validation
        text's vote by the prompts chosen without it (``vote_offsets_``,
        ``vote_scale_``): a unanimous vote gives the probability that such
        votes were right on held-out texts. ``"error"``: each kept prompt's
        vote is read through a noisy channel with that prompt's own error
        rate on texts that did not choose it (``vote_error_rates_``,
        Laplace-smoothed ``(errors + 1) / (n_val + 2)``): a unanimous vote of
        prompts that err 20% of the time gives about 0.8, not 1. Without a
        validation split (``validation_fraction=None``, or too few texts per
        class) a pseudo-count of 1 is used instead, with a warning. A float:
        a symmetric Dirichlet pseudo-count added to every class of the
        weighted vote histogram, in units of one prompt's vote; ``0`` gives
        the raw vote shares.
    n_jobs : int or None, default=None
        Number of concurrent backend requests during ``fit`` and prediction
        (useful for remote or function backends; a local model already uses
        all cores). ``None`` means 1; ``-1`` means one per CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection, the validation split and CMA-ES. The same
        value gives the same ``predict_proba``.
    verbose : int, default=0
        ``> 0`` shows a tqdm progress bar during ``fit`` and also logs one
        line per step (iteration, generation or round, with its losses and
        the queries so far), plus a first and a last line, to the standard
        ``logging`` logger ``"skprompt"`` at level INFO: e.g.
        ``logging.basicConfig(filename="fit.log", level=logging.INFO)``
        keeps them in a file.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    backend_ : PromptBackend
        The backend used (``backend``, or the default one).
    projection_ : RandomProjection
        The fixed map from z to soft prompts.
    samples_ : ndarray of shape (n_samples, intrinsic_dim)
        The kept prompt vectors z_k.
    weights_ : ndarray of shape (n_samples,)
        Their weights (sum to 1).
    prompt_embeddings_ : ndarray of shape (n_samples, n_prompt_tokens, embedding_dim)
        The kept soft prompts.
    n_queries_ : int
        (prompt, text) pairs asked for during ``fit``.
    n_iter_ : int
        CMA-ES generations done.
    history_ : ndarray of shape (n_iter_, n_runs)
        Progress per iteration: for ``"bbt"``/``"ensemble"`` the best
        training loss so far per run; for ``"vi"`` the best negative ELBO of
        each generation; for ``"abc-smc"`` and ``"snpe"`` the lowest training
        error rate of each round's population or simulations.
    labels_only_ : bool
        Whether predictions are vote histograms (likelihood-free method or
        label-only backend).
    vote_error_rates_ : ndarray of shape (n_samples,) or None
        With a named ``vote_smoothing`` and vote-based predictions: the
        smoothed error rate of each kept prompt on validation texts that did
        not choose it (see :func:`skprompt.votes.vote_error_rates`).
    vote_offsets_ : ndarray of shape (n_classes,) or None
        With ``vote_smoothing="calibrated"``: the vote read-out's per-class offsets.
    vote_scale_ : float or None
        With ``vote_smoothing="calibrated"``: its scale (inverse temperature).
    vote_smoothing_ : str or float or None
        How ``predict_proba`` turns votes into probabilities:
        ``vote_smoothing``, or ``1.0`` where a named read-out had no
        validation texts to learn from; ``None`` for score-based predictions.
    calibration_ : {"bias", "affine", "linear", "topk"} or None
        The read-out in use (``calibration`` resolved; with ``"auto"``,
        ``fit_info_["calibration"]`` says why: each family's
        cross-validated log loss, the texts and candidates it was measured on).
    offsets_ : ndarray of shape (n_samples, n_classes) or None
        Each kept prompt's per-class offsets (``None`` without read-out).
    scales_ : ndarray of shape (n_samples,) or (n_samples, n_classes, n_classes) or None
        Each kept prompt's score scale, the inverse of its temperature (1
        for ``"bias"``), or its linear map of the class scores
        (``"linear"``); ``None`` without read-out.
    token_maps_ : list of dict or None
        With ``"topk"``: each kept prompt's weights on the top tokens' log-probabilities
        (:func:`~skprompt.readout.fit_token_readout`); else ``None``.
    top_k_ : int
        Top log-probabilities asked for per answer (0 unless ``"topk"`` is in use).
    budget_exhausted_ : bool
        Whether ``fit`` stopped on ``budget``.
    fit_info_ : dict
        The learner's diagnostics, to check what a fit did; the keys depend
        on ``method``. ``"bbt"``/``"ensemble"``:
        ``selection_losses``, ``start_loss``, ``kept_start`` (per member:
        whether no tuned prompt beat the start), ``bootstrap_weights``. ``"vi"``: the kept q (``mean``, ``variance``,
        ``generation``) and per-generation ``elbo``, ``nll``, ``kl``,
        ``val_log_loss``. ``"abc-smc"``: per-round ``tolerance``,
        ``acceptance_rate``, ``ess``, ``population_ess``,
        ``move_acceptance_rate``, ``step``, ``val_accuracy``, ``val_errors``,
        ``simulations``, and ``kept_round``, ``kept_ess`` (the kept
        population's effective sample size; below 2 ``fit`` emits a
        :class:`~skprompt.exceptions.PosteriorWarning`), ``stop_reason``,
        ``n_simulations``, ``discarded_simulations``. ``"snpe"``: per-round ``n_simulations``,
        ``round_mean_error`` (a flat sequence says the posterior has not
        moved from the prior), ``prior_overlap`` (at 0.99 or more ``fit``
        emits a :class:`~skprompt.exceptions.PosteriorWarning`),
        ``val_errors``, ``selected_round``, and with
        ``inference="factorised"`` ``n_informative_texts``. Each learner's ``fit`` documents
        its keys. With ``calibration="auto"`` (any score-based method,
        zero-shot included): ``calibration``, the report of
        :func:`~skprompt.readout.choose_readout`.

    See Also
    --------
    skprompt.backends.CausalLMBackend, skprompt.backends.FunctionBackend

    Examples
    --------
    A toy black box whose class scores are the dot product of the first
    prompt vector with a feature of the text:

    >>> import numpy as np
    >>> from skprompt import BlackBoxPromptClassifier
    >>> from skprompt.backends import FunctionBackend
    >>> def api(prompts, texts):
    ...     x = np.array([[t.count("good") - t.count("bad"), 1.0] for t in texts])
    ...     w = prompts[:, 0, :2] if prompts.shape[1] else np.zeros((len(prompts), 2))
    ...     s = w @ x.T                       # (n_prompts, n_texts)
    ...     return np.stack([-s, s], axis=-1)  # scores of "neg", "pos"
    >>> X = ["good", "bad", "good good", "bad bad", "very good", "so bad"] * 3
    >>> y = ["pos", "neg", "pos", "neg", "pos", "neg"] * 3
    >>> clf = BlackBoxPromptClassifier(FunctionBackend(api, embedding_dim=2), method="bbt",
    ...                                intrinsic_dim=2, n_prompt_tokens=1, max_iter=10,
    ...                                random_state=0).fit(X, y)
    >>> clf.predict(["good good good", "bad"]).tolist()
    ['pos', 'neg']
    >>> clf.predict_proba(["good"]).shape
    (1, 2)
    """

    _fitted_attribute = "samples_"

    def __init__(
        self,
        backend=None,
        *,
        method="ensemble",
        n_prompts=4,
        n_prompt_tokens=None,
        intrinsic_dim=50,
        popsize=8,
        max_iter=15,
        sigma0=0.1,
        loss="ce",
        calibration="auto",
        validation_fraction=0.25,
        budget=None,
        method_params=None,
        vote_smoothing="calibrated",
        n_jobs=None,
        random_state=None,
        verbose=0,
    ):
        self.backend = backend
        self.method = method
        self.n_prompts = n_prompts
        self.n_prompt_tokens = n_prompt_tokens
        self.intrinsic_dim = intrinsic_dim
        self.popsize = popsize
        self.max_iter = max_iter
        self.sigma0 = sigma0
        self.loss = loss
        self.calibration = calibration
        self.validation_fraction = validation_fraction
        self.budget = budget
        self.method_params = method_params
        self.vote_smoothing = vote_smoothing
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------------- sklearn
    # -------------------------------------------------------------- checking
    def _validate_params(self):
        check_param("method", self.method, None, options=METHODS)
        check_param("n_prompts", self.n_prompts, "int", low=1)
        check_param("n_prompt_tokens", self.n_prompt_tokens, "int", low=1, allow_none=True)
        check_param("intrinsic_dim", self.intrinsic_dim, "int", low=1)
        check_param("popsize", self.popsize, "int", low=2)
        check_param("max_iter", self.max_iter, "int", low=1)
        check_param("sigma0", self.sigma0, "real", low=0, low_inclusive=False)
        check_param("loss", self.loss, None, options=sorted(LOSSES))
        if self.calibration is not None and self.calibration not in ("auto",) + CALIBRATIONS:
            raise ValueError(
                f"calibration must be one of {['auto', *CALIBRATIONS, None]}; got {self.calibration!r}."
            )
        check_param("validation_fraction", self.validation_fraction, "real", low=0, high=1,
                    low_inclusive=False, allow_none=True)
        if self.validation_fraction is not None and self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be < 1; got {self.validation_fraction!r}.")
        check_param("budget", self.budget, "int", low=1, allow_none=True)
        if self.method_params is not None and not isinstance(self.method_params, dict):
            raise ValueError(f"method_params must be a dict or None; got {type(self.method_params).__name__}.")
        if not (isinstance(self.vote_smoothing, str) and self.vote_smoothing in VOTE_SMOOTHINGS):
            if isinstance(self.vote_smoothing, str):
                raise ValueError(f"vote_smoothing must be one of {list(VOTE_SMOOTHINGS)} or a float >= 0; "
                                 f"got {self.vote_smoothing!r}.")
            check_param("vote_smoothing", self.vote_smoothing, "real", low=0)
        if self.n_jobs is not None:
            check_param("n_jobs", self.n_jobs, "int")
            if self.n_jobs == 0:
                raise ValueError("n_jobs must be a non-zero int or None; got 0.")
        check_param("verbose", self.verbose, "int", low=0)
        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()}
        for name, instead in _UNUSED_BY.get(self.method, {}).items():
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} does not apply to method={self.method!r}; "
                    f"set {instead} instead (or leave {name} at its default, {defaults[name]!r})."
                )
        if self.method in LABEL_METHODS and self.loss not in ("ce", "zero_one"):
            raise ValueError(
                f"loss={self.loss!r} does not apply to method={self.method!r}, which compares predicted "
                "labels with the true ones (the 0-1 loss); leave loss at its default."
            )

    def _resolve_backend(self):
        backend = self.backend
        if backend is None:
            from .models import default_backend

            backend = default_backend()
        if not isinstance(backend, PromptBackend):
            raise TypeError(
                "backend must be a skprompt PromptBackend (e.g. CausalLMBackend, MaskedLMBackend, "
                f"FunctionBackend) or None; got {type(backend).__name__}."
            )
        return backend

    def _method_params(self):
        params = dict(self.method_params or {})
        if self.method in ("vi", "abc-smc", "snpe"):
            params.setdefault("prior_variance", float(self.sigma0) ** 2)
        elif self.method in ("bbt", "ensemble"):
            unknown = sorted(set(params) - set(CMA_PARAMS), key=str)
            if unknown:
                raise ValueError(f"method_params has unknown key(s) {unknown} for method={self.method!r}; "
                                 f"expected keys among {list(CMA_PARAMS)}.")
            for key in CMA_PARAMS:
                if not isinstance(params.get(key, False), (bool, np.bool_)):
                    raise ValueError(f"method_params[{key!r}] must be a bool; got {params[key]!r}.")
        elif params:
            raise ValueError(f"method_params must be empty for method={self.method!r}; got keys {sorted(params)}.")
        return params

    def _resolve_calibration(self, labels_only, backend):
        """The read-out to fit: None, "auto" (chosen on the first training scores) or
        a family (errors before any query)."""
        if self.calibration == "auto":
            return None if labels_only else "auto"
        if self.calibration is not None and labels_only:
            why = (f"{backend!r} is label-only" if backend.labels_only
                   else f"method={self.method!r} uses predicted labels only")
            raise ValueError(
                f"calibration={self.calibration!r} fits offsets to class scores, but {why}; "
                "use calibration=None or 'auto'."
            )
        if self.calibration == "topk" and not backend.max_top_k:
            raise ValueError(f"calibration='topk' reads the top log-probabilities of each answer, which {backend!r} "
                             "does not return (max_top_k=0); use 'auto', 'affine' or 'linear'.")
        return self.calibration

    @staticmethod
    def _top_k(calibration, backend):
        """Top log-probabilities to ask for: for ``"topk"``, or ``"auto"`` where it may choose it."""
        if calibration == "topk" or (calibration == "auto" and "topk" in AUTO_CALIBRATIONS):
            return min(DEFAULT_TOP_K, int(backend.max_top_k))
        return 0

    def _make_learner(self):
        """The learner for ``method``; its options are validated here, before any query."""
        if self.method == "vi":
            return VariationalLearner.from_params(self.n_prompts, self.popsize, self.max_iter, self.sigma0,
                                                  self._method_params())
        if self.method == "abc-smc":
            return ABCSMCLearner.from_params(self.n_prompts, self._method_params())
        if self.method == "snpe":
            return SNPELearner.from_params(self.n_prompts, self._method_params())
        params = self._method_params()
        n_members = self.n_prompts if self.method == "ensemble" else 1
        return CMAEnsembleLearner(n_members, self.popsize, self.max_iter, self.sigma0,
                                  bootstrap=bool(params.get("bootstrap", False)),
                                  keep_start=bool(params.get("keep_start", self.method == "bbt")))

    def _expected_queries(self, learner, problem):
        """Queries an unbudgeted fit makes at most (None where it depends on
        the run, as abc-smc's rounds do)."""
        if self.method in ("bbt", "ensemble"):
            return learner.minimum_budget(problem) + (self.max_iter - 1) * learner._iteration_cost(
                problem, learner.n_members)
        if self.method == "vi":
            return learner.minimum_budget(problem) + (self.max_iter - 1) * learner._iteration_cost(problem)
        if self.method == "snpe":
            return learner.n_rounds * (learner.n_simulations * problem.n_texts("train")
                                       + learner._selection_cost(problem))
        return None

    @staticmethod
    def _n_steps(learner, default):
        for name in ("max_rounds", "n_rounds"):
            if getattr(learner, name, None):
                return int(getattr(learner, name))
        return default

    # ------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Tune the prompt distribution on texts ``X`` with labels ``y``.

        Parameters
        ----------
        X : sequence of str of length n_samples
            1-D (list, tuple, ndarray, pandas Series) or a single column.
        y : array-like of shape (n_samples,)
            Class labels (str, int, any sortable hashable), at least two classes.

        Returns
        -------
        self : BlackBoxPromptClassifier
        """
        texts, y, classes, backend = self._start_fit(X, y)
        plan = self._plan(backend, len(texts))
        backend.check_classes(list(classes))
        rng = check_random_state(self.random_state)
        projection = self._projection(backend, plan, rng)
        y_idx = np.searchsorted(classes, y)
        if plan.zero_shot:  # nothing is selected: a read-out learns from every text
            splits, positions = {"train": (texts, y_idx)}, None
        else:
            splits, positions = validation_split(texts, y_idx, self.validation_fraction, rng, positions=True)
        problem = PromptProblem(backend, projection, classes, splits, plan.loss, plan.labels_only,
                                budget=self.budget, n_jobs=self.n_jobs, calibration=plan.calibration,
                                top_k=self._top_k(plan.calibration, backend), positions=positions)
        run = self._search(problem, plan, rng, len(texts))
        readout = self._fit_readouts(problem, plan, run)
        votes = self._fit_vote_readout(problem, plan, run)
        self._warn_on_budget(problem, run, votes)
        self._store(classes, backend, projection, problem, plan, run, readout, votes)
        return self

    def _plan(self, backend, n_texts):
        """What the fit will do, with every error raised before any query:
        ``labels_only``, ``loss``, ``zero_shot``, ``calibration``, ``learner``."""
        if backend.labels_only and self.method in SCORE_METHODS:
            raise ValueError(
                f"method={self.method!r} needs class scores, but {backend!r} is label-only; use "
                f"one of {list(LABEL_METHODS)}, or 'bbt'/'ensemble' with loss='zero_one'."
            )
        if backend.labels_only and self.method in ("bbt", "ensemble") and self.loss in SCORE_LOSSES:
            raise ValueError(
                f"loss={self.loss!r} needs class scores, but {backend!r} is label-only; use loss='zero_one'."
            )
        labels_only = bool(backend.labels_only) or self.method in LABEL_METHODS
        zero_shot = self.method == "zero-shot"
        calibration = self._resolve_calibration(labels_only, backend)
        if zero_shot:
            self._method_params()  # validated before any query, as _make_learner does for the others
        learner = None if zero_shot else self._make_learner()
        if zero_shot and calibration is not None and self.budget is not None and self.budget < n_texts:
            raise ValueError(
                f"budget={self.budget} is below the {n_texts} queries the zero-shot read-out needs "
                f"(calibration={calibration!r} scores every fit text once); raise budget or set calibration=None."
            )
        return SimpleNamespace(labels_only=labels_only, loss="zero_one" if self.method in LABEL_METHODS else self.loss,
                               zero_shot=zero_shot, calibration=calibration, learner=learner)

    def _projection(self, backend, plan, rng):
        """The map from the searched z to the soft prompt, centred on the backend's
        initial prompt (the template's tail) or its mean embedding."""
        n_tokens = 0 if plan.zero_shot else self._prompt_length(backend)
        dim = 0 if plan.zero_shot else self.intrinsic_dim
        if dim > n_tokens * backend.embedding_dim:
            # a warning, not an error: the search still works, but spends
            # its steps on directions the projection folds onto the others
            warnings.warn(
                f"intrinsic_dim={dim} exceeds the {n_tokens * backend.embedding_dim} values of the soft prompt "
                f"({n_tokens} tokens x {backend.embedding_dim}): {dim - n_tokens * backend.embedding_dim} of "
                "the searched directions are redundant and slow the search down; lower intrinsic_dim or raise "
                "n_prompt_tokens.", UserWarning, stacklevel=3)
        mean, std = backend.embedding_stats()
        init = backend.initial_prompt(n_tokens) if n_tokens else None
        return RandomProjection(n_tokens, backend.embedding_dim, dim, embedding_mean=mean if init is None else init,
                                embedding_std=std, random_state=rng)

    def _search(self, problem, plan, rng, n_texts):
        """Run the learner on the problem (nothing for zero-shot): the kept samples,
        their weights, the history, the learner's selection record and diagnostics."""
        if plan.zero_shot:
            return SimpleNamespace(samples=np.zeros((1, 0)), weights=np.ones(1), history=np.empty((0, 1)),
                                   n_iter=0, exhausted=False, selection=None, info={})
        learner = plan.learner
        needed = learner.minimum_budget(problem)
        if self.budget is not None and self.budget < needed:
            raise ValueError(
                f"budget={self.budget} is below the {needed} queries one iteration of "
                f"method={self.method!r} needs on {n_texts} texts; raise budget, or lower "
                "popsize / n_prompts (or the method_params that set the cost of one iteration, "
                "e.g. n_particles for abc-smc)."
            )
        steps = self._n_steps(learner, self.max_iter)
        expected = self._expected_queries(learner, problem)
        if self.budget is None and expected is not None and expected > ABSURD_QUERIES:
            warnings.warn(
                f"method={self.method!r} will make about {expected:,} queries with these settings "
                f"({n_texts} texts; see popsize, max_iter, n_prompts and method_params), which takes "
                "hours on a local model; pass budget= to cap it.", CostWarning, stacklevel=3)
        # VI's kept prompts are fresh draws from q: their read-outs need their training
        # and validation scores, reserved so that a spent budget cannot leave them without one.
        if plan.calibration is not None and self.method == "vi":
            problem.reserved = learner._readout_cost(problem)
        if self.verbose:
            problem.logger, problem.log_name, problem.log_total = _LOGGER, f"method={self.method!r}", steps
            _LOGGER.info("method=%r: fitting on %d training texts, %s, budget %s", self.method,
                         problem.n_texts("train"), f"{steps} steps" if steps else "steps unbounded",
                         self.budget)
        with tqdm(total=steps, desc=f"skprompt {self.method}", disable=not self.verbose, leave=False) as bar:
            problem.progress = bar
            result = learner.fit(problem, rng)
            problem.progress = None
        problem.logger = None
        if self.verbose:
            _LOGGER.info("method=%r: done after %d steps and %d queries%s", self.method, result.n_iter,
                         problem.queries, " (budget exhausted)" if result.budget_exhausted else "")
        problem.reserved = 0
        for category, message in result.warnings:
            warnings.warn(message, category, stacklevel=3)
        return SimpleNamespace(samples=result.samples, weights=result.weights, history=result.history,
                               n_iter=result.n_iter, exhausted=result.budget_exhausted, selection=result.selection,
                               info=dict(result.info))

    def _fit_readouts(self, problem, plan, run):
        """The kept samples' read-outs (``None`` without ``calibration``),
        refitted on the training and validation texts together, and the family
        in use; ``"auto"``'s report goes into the fit's diagnostics."""
        if plan.calibration is None:
            return SimpleNamespace(offsets=None, scales=None, token_maps=None, calibration=None)
        try:  # learnt from every fit text, as the zero-shot read-out is
            offsets, scales, token_maps = problem.pooled_readouts(run.samples, run.info.get("bootstrap_weights"))
        except BudgetExhausted:  # validation answers the search never asked for, beyond the budget
            offsets, scales, token_maps = problem.readouts(run.samples)
            run.exhausted = True
        if problem.calibration_report is not None:
            run.info["calibration"] = problem.calibration_report
        return SimpleNamespace(offsets=offsets, scales=scales, token_maps=token_maps,
                               calibration=problem.calibration)

    def _fit_vote_readout(self, problem, plan, run):
        """Label-only fits: the error channel and the vote read-out (None where not
        used), and whether votes fall back to a pseudo-count of 1."""
        votes = SimpleNamespace(error_rates=None, readout=None, fallback=False)
        if not (plan.labels_only and self.vote_smoothing in VOTE_SMOOTHINGS):
            return votes
        votes.error_rates, votes.readout = self._fit_votes(problem, run.samples, run.weights, run.selection)
        votes.fallback = votes.error_rates is None
        if votes.fallback and not problem.has_split("val"):
            warnings.warn(
                f"vote_smoothing={self.vote_smoothing!r} learns from validation texts, and this fit "
                "has none (validation_fraction=None, or too few texts per class); votes are smoothed by "
                "a pseudo-count of 1 instead.",
                UserWarning,
                stacklevel=3,
            )
        run.exhausted = run.exhausted or (votes.fallback and problem.has_split("val"))
        return votes

    def _warn_on_budget(self, problem, run, votes):
        if run.exhausted:
            warnings.warn(
                f"budget={self.budget} reached after {run.n_iter} iteration(s) and {problem.queries} queries; "
                "keeping the best prompts found so far"
                + (" (votes smoothed by a pseudo-count of 1)." if votes.fallback else "."),
                BudgetWarning,
                stacklevel=3,
            )

    def _store(self, classes, backend, projection, problem, plan, run, readout, votes):
        """Set the fitted attributes."""
        self.classes_ = classes
        self.backend_ = backend
        self.projection_ = projection
        self.samples_ = np.asarray(run.samples, dtype=np.float64)
        self.weights_ = np.asarray(run.weights, dtype=np.float64)
        self.prompt_embeddings_ = projection(self.samples_)
        self.n_queries_ = int(problem.queries)
        self.n_iter_ = int(run.n_iter)
        self.history_ = run.history
        self.fit_info_ = run.info
        self.budget_exhausted_ = bool(run.exhausted)
        self.labels_only_ = plan.labels_only
        self.vote_error_rates_ = votes.error_rates
        self.vote_smoothing_ = None if not plan.labels_only else (1.0 if votes.fallback else self.vote_smoothing)
        self.vote_offsets_ = None if votes.readout is None else votes.readout.offsets
        self.vote_scale_ = None if votes.readout is None else votes.readout.scale
        self.calibration_ = readout.calibration
        self.offsets_ = readout.offsets
        self.scales_ = readout.scales
        self.token_maps_ = readout.token_maps
        self.top_k_ = problem.top_k if readout.token_maps is not None else 0

    def _fit_votes(self, problem, samples, weights, selection):
        """Each kept prompt's error rate and the calibrated vote read-out (or None
        for it unless ``vote_smoothing="calibrated"``), both from validation texts
        that did not choose what they judge; ``(None, None)`` without validation
        texts, or with answers never asked for that the budget cannot pay."""
        if not problem.has_split("val"):
            return None, None
        if selection is not None:  # a learner's record must re-make its own choice, else it is not used
            kept, kept_w = select_without(selection)
            if kept.shape != samples.shape or not (np.allclose(kept, samples) and np.allclose(kept_w, weights)):
                selection = None
        try:
            if selection is not None:
                shares, n_prompts, slot_errors = out_of_fold_votes(problem, selection)
            else:  # nothing was chosen on the validation texts: the kept prompts' own votes there
                shares = vote_shares(problem.known_outputs(samples, "val"), weights, problem.n_classes)
                n_prompts, slot_errors = np.full(len(shares), len(samples)), None
            error_rates = vote_error_rates(problem, samples, selection, slot_errors)
        except BudgetExhausted:
            return None, None
        readout = None
        if self.vote_smoothing == "calibrated":
            readout = VoteReadout.fit(shares, n_prompts, problem.y("val"))
        return error_rates, readout

    # --------------------------------------------------------------- predict
    def _outputs(self, X):
        check_is_fitted(self, "samples_")
        texts = check_texts(X)
        token_maps = getattr(self, "token_maps_", None)  # None: fitted before the "topk" read-out
        problem = PromptProblem(self.backend_, self.projection_, self.classes_, {}, "zero_one",
                                self.labels_only_, n_jobs=self.n_jobs,
                                top_k=self.top_k_ if token_maps is not None else 0)
        with streaming(self.backend_):  # new texts: do not fill the fit's text cache
            outputs = problem.query(self.prompt_embeddings_, texts)
        if self.offsets_ is not None:
            outputs = apply_readout(outputs, self.offsets_, self.scales_, token_maps)
        return outputs

    def predict_proba(self, X):
        """Class probabilities averaged over the prompt samples.

        Parameters
        ----------
        X : sequence of str

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            ``sum_k weights_[k] * softmax(scores_k)``, or for vote-based
            predictions (``labels_only_``) the weighted vote histogram
            smoothed by ``vote_smoothing``; columns in ``classes_`` order,
            rows sum to 1.
        """
        outputs = self._outputs(X)
        if not self.labels_only_:
            return aggregate_outputs(outputs, self.weights_, len(self.classes_))
        mode = getattr(self, "vote_smoothing_", None)
        if mode is None:  # fitted by a skprompt before vote_smoothing_: its "error" channel or pseudo-count
            mode = "error" if self.vote_error_rates_ is not None else (
                1.0 if isinstance(self.vote_smoothing, str) else self.vote_smoothing)
        if mode == "calibrated":
            shares = vote_shares(outputs, self.weights_, len(self.classes_))
            return VoteReadout(self.vote_offsets_, self.vote_scale_).proba(shares, len(self.weights_))
        if mode == "error":
            return aggregate_outputs(outputs, self.weights_, len(self.classes_), error_rates=self.vote_error_rates_)
        prior = mode
        return aggregate_outputs(outputs, self.weights_, len(self.classes_), vote_prior=prior)

    def predict_uncertainty(self, X):
        """Per-text predictive uncertainty and its decomposition (nats).

        Parameters
        ----------
        X : sequence of str

        Returns
        -------
        PredictiveUncertainty
            ``total``: entropy of the averaged prediction; ``aleatoric``:
            expected entropy of the individual prompts' predictions;
            ``epistemic``: their difference, the mutual information between
            label and prompt (how much the prompts disagree). For vote-based
            predictions each prompt answers one label, so ``aleatoric`` is 0
            and ``total`` = ``epistemic`` = the vote entropy (of the
            unsmoothed histogram). See :mod:`skprompt.uncertainty`.
        """
        return decompose_uncertainty(self._outputs(X), self.weights_, len(self.classes_))
