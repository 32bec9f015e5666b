"""Sequential neural posterior estimation (SNPE) over prompts, with ``sbi``.

A likelihood-free learner: it needs only the labels a model predicts (Shen et
al., 2023). A *simulation* draws a prompt vector θ from the prior
``N(0, prior_variance I)`` (first round) or from a proposal (later rounds),
asks the problem for θ's predicted labels on the training texts and encodes
them as a summary x(θ). A conditional density estimator q(θ | x) is trained
on the pairs (θ, x), and the posterior is read off at the observation x_o
that the **true training labels** give. (The paper's public code conditions
on the best *simulated* output instead, i.e. on the predictions of the best
prompt it happened to draw; that is not reproduced here.)

The algorithm step by step, how its defaults were chosen and its references:
docs/algorithms.md, "Neural posterior estimation".
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from sklearn.utils import check_random_state

from .._validation import check_param
from .base import (BudgetExhausted, Learner, LearnerResult, PosteriorWarning, SelectionSlot, aggregate_outputs,
                   request_cost)

__all__ = ["SNPELearner", "SUMMARIES", "encode_summary", "import_sbi"]

#: Encodings of a prompt's predictions on the training set.
SUMMARIES = ("onehot", "correctness")
#: Density estimators ``sbi.neural_nets.posterior_nn`` builds.
DENSITY_ESTIMATORS = ("auto", "maf", "mdn", "nsf", "made")
#: ``density_estimator="auto"`` picks an MDN up to this dimension, a MAF above.
AUTO_MDN_MAX_DIM = 10
#: Schemes for the rounds after the first.
SEQUENTIAL = ("truncated", "apt")
#: What the simulations train: sbi's posterior estimator at the true labels'
#: summary, or one correctness classifier per training text (docs/algorithms.md).
INFERENCE = ("npe", "factorised")
#: ``inference="factorised"``: a text enters the likelihood only if a test of
#: "its correctness does not depend on θ" rejects at this level,
#: Bonferroni-corrected over the training texts (``_screen_p_values``).
FACTORISED_ALPHA = 0.01
#: ``inference="factorised"``: elliptical slice sampling steps from prior draws.
_SLICE_STEPS = 30

_INSTALL_HINT = 'method="snpe" needs the optional sbi package: pip install "skprompt[sbi]"'
#: Prior draws screened at once when sampling the truncated proposal.
_PROPOSAL_BATCH = 10_000
#: Prior draws to estimate ``info["prior_overlap"]`` (standard error <= 0.008).
_OVERLAP_DRAWS = 4_000
#: A kept posterior whose highest-density region holds at least this share of
#: prior draws is reported as prior-like, with a PosteriorWarning (module
#: docstring, "Known limit").
PRIOR_LIKE_OVERLAP = 0.99


def import_sbi():
    """Import ``sbi``'s NPE trainer and its helpers, or raise a clear ImportError.

    Returns
    -------
    NPE : type
        ``sbi.inference.NPE`` (NPE-C / APT).
    posterior_nn : callable
        ``sbi.neural_nets.posterior_nn``.
    """
    try:
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc}).") from exc
    return NPE, posterior_nn


def encode_summary(labels, y, n_classes, summary):
    """Summary statistics x of predicted labels, as ±1 floats.

    Parameters
    ----------
    labels : ndarray of shape (n, n_texts)
        Predicted class indices of ``n`` prompts.
    y : ndarray of shape (n_texts,)
        True class indices.
    n_classes : int
    summary : {"onehot", "correctness"}

    Returns
    -------
    ndarray of shape (n, n_texts * (n_classes - 1)) or (n, n_texts), float32

    Examples
    --------
    >>> import numpy as np
    >>> encode_summary(np.array([[0, 2]]), np.array([0, 0]), 3, "onehot")
    array([[ 1., -1., -1., -1.]], dtype=float32)
    >>> encode_summary(np.array([[0, 1, 1]]), np.array([0, 0, 1]), 2, "correctness")
    array([[ 1., -1.,  1.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if summary == "onehot":
        # The last class's column is implied by the others: leave it out.
        bits = (labels[:, :, None] == np.arange(n_classes - 1)[None, None, :]).reshape(len(labels), -1)
    elif summary == "correctness":
        bits = labels == np.asarray(y)[None, :]
    else:
        raise ValueError(f"summary must be one of {list(SUMMARIES)}; got {summary!r}.")
    return (2.0 * bits - 1.0).astype(np.float32)


class _NullTracker:
    """sbi's trainers log to a TensorBoard folder in the working directory by
    default; this tracker keeps nothing."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def _lower_quantile(values, q):
    """The ``q``-quantile of a 1-D tensor (lower order statistic)."""
    k = int(np.floor(q * (len(values) - 1)))
    return values.sort().values[k]


@contextlib.contextmanager
def _torch_threads(torch, n_threads):
    """Run torch with ``n_threads`` intra-op threads, then restore the setting.

    Scoped to sbi's work only: the problem's backend (possibly a torch model
    in this process) keeps its threads while it is queried.
    """
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_sbi():
    """Silence sbi's prints (loss variant, convergence) and its warnings on
    our deliberate choices (no z-scoring of x, constant x columns, 1-D flows,
    the epoch cap, which ``info["converged"]`` records)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        for pattern in ("Data has constant values", "In one-dimensional output space",
                        "Maximum number of epochs", "z-scor"):
            warnings.filterwarnings("ignore", message=f".*{pattern}")
        yield


def _slice_sample(loglik, x, prior_sd, n_steps, rng, max_shrinks=60):
    """Elliptical slice sampling (Murray, Adams and MacKay, 2010) for a
    ``N(0, prior_sd**2 I)`` prior times ``exp(loglik)``, one chain per row of
    ``x``, all chains advanced together.

    Written by hand: the usual implementations run one chain at a time, and
    here thousands of chains share one cheap vectorised likelihood. A chain
    whose bracket has shrunk ``max_shrinks`` times (a bracket of width
    2π·2**-60 about the current state) stays where it is for that step.
    """
    x = np.array(x, dtype=np.float64)
    ll = loglik(x)
    n = len(x)
    for _ in range(n_steps):
        nu = rng.standard_normal(x.shape) * prior_sd
        level = ll + np.log(rng.random(n))
        angle = rng.uniform(0.0, 2.0 * np.pi, n)
        lo, hi = angle - 2.0 * np.pi, angle.copy()
        active = np.arange(n)
        for _ in range(max_shrinks):
            a = angle[active][:, None]
            prop = x[active] * np.cos(a) + nu[active] * np.sin(a)
            llp = loglik(prop)
            ok = llp > level[active]
            done = active[ok]
            x[done], ll[done] = prop[ok], llp[ok]
            active = active[~ok]
            if not len(active):
                break
            below = angle[active] < 0
            lo[active[below]] = angle[active[below]]
            hi[active[~below]] = angle[active[~below]]
            angle[active] = rng.uniform(lo[active], hi[active])
    return x


def _screen_p_values(units, correct):
    """p-values of "text i's correctness does not depend on θ", one per text.

    The statistic is the R² of the least-squares regression of each text's
    correctness (0/1) on θ with an intercept, i.e. the score (Rao) test of the
    logistic model at zero slope. When θ's rows are independent isotropic
    Gaussian draws (the prior, the first round), the centred columns of θ
    span a uniformly random subspace of rank ``r`` (= dim) of the n - 1
    dimensions orthogonal to the constant, so for any correctness vector
    that does not depend on θ, R² ~ Beta(r / 2, (n - 1 - r) / 2) exactly,
    whatever the text's rate of correct answers. The logistic likelihood
    ratio against chi-square(dim) that this replaces is far from its limit at
    dim 50 and 200 simulations (null mean 55-62, depending on the rate, and a
    familywise rate of 0.31 over 24 texts, 0.37 over 80, at a nominal 0.01;
    this test: 0.013 and 0.007; see ``benchmarks/snpe_screen.py``). Later
    rounds add truncated-prior draws, on which the Beta law is an
    approximation (measured familywise rates 0.008-0.013 at a nominal 0.01,
    2 and 5 rounds, the prior truncated to θ0 > 0.5 to θ0 > 2).

    Vectorised over texts: one SVD of θ, one matrix product. Texts every
    simulation gets right (or wrong) get p = 1; with n - 1 <= rank (fewer
    simulations than dimensions) nothing can be tested and all get p = 1.

    Parameters
    ----------
    units : ndarray of shape (n, dim)
    correct : ndarray of shape (n, n_texts), bool

    Returns
    -------
    ndarray of shape (n_texts,)
    """
    from scipy.stats import beta

    n = len(units)
    y = np.asarray(correct, dtype=np.float64)
    p = np.ones(y.shape[1])
    x = units - units.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    rank = int((s > s[0] * max(x.shape) * np.finfo(np.float64).eps).sum()) if s.size and s[0] > 0 else 0
    if rank == 0 or n - 1 - rank <= 0:
        return p
    yc = y - y.mean(axis=0)
    total = (yc**2).sum(axis=0)
    varies = total > 0
    explained = ((u[:, :rank].T @ yc[:, varies]) ** 2).sum(axis=0)
    r2 = np.clip(explained / total[varies], 0.0, 1.0)
    p[varies] = beta.sf(r2, rank / 2.0, (n - 1 - rank) / 2.0)
    return p


class _FactorisedLikelihood:
    """log p(true labels | θ) as a sum of per-text logistic correctness models.

    Fitted on all simulations so far (``theta`` (n, dim), ``correct`` (n,
    n_texts) booleans); texts that fail the screen (:func:`_screen_p_values`
    at level ``alpha / n_texts``; docs/algorithms.md) are left out.
    """

    def __init__(self, theta, correct, prior_sd, alpha):
        from sklearn.linear_model import LogisticRegression

        units = theta / prior_sd
        n, dim = units.shape
        n_texts = correct.shape[1]
        self.p_values = _screen_p_values(units, correct)
        weights, biases = [], []
        for i in np.flatnonzero(self.p_values < alpha / max(n_texts, 1)):
            model = LogisticRegression(C=1.0, max_iter=1000).fit(units, correct[:, i].astype(int))
            weights.append(model.coef_[0] / prior_sd)
            biases.append(float(model.intercept_[0]))
        self.n_informative = len(weights)
        self.weights = np.array(weights, dtype=np.float64).reshape(-1, dim)
        self.biases = np.array(biases, dtype=np.float64)

    def __call__(self, theta):
        if not self.n_informative:
            return np.zeros(len(theta))
        from scipy.special import log_expit

        return log_expit(theta @ self.weights.T + self.biases).sum(axis=1)


class SNPELearner(Learner):
    """Sequential neural posterior estimation of the prompt posterior (``sbi``).

    Parameters
    ----------
    n_samples : int, default=10
        Prompts kept: draws from the posterior at the true labels' summary,
        weighted uniformly.
    n_rounds : int, default=5
        Simulation rounds (the paper: 5).
    n_simulations : int >= 10, default=200
        Simulations per round, each costing ``n_train`` queries (the paper:
        1000).
    min_simulations : int >= 10, default=20
        A round that the budget allows fewer simulations than this is not run.
    prior_variance : float, default=1.0
        Variance of the isotropic Gaussian prior on z. The projection maps
        ``z ~ N(0, sigma0**2 I)`` to prompts spread like the model's own
        embeddings, so ``sigma0**2`` is the natural value.
    summary : {"onehot", "correctness"}, default="onehot"
        How predictions are encoded (docs/algorithms.md, "Summaries").
    inference : {"npe", "factorised"}, default="npe"
        ``"npe"``: sbi's neural posterior estimator conditioned on the
        summary of all training labels. ``"factorised"``: one learnt
        correctness likelihood per training text, multiplied with the prior
        and sampled by elliptical slice sampling (docs/algorithms.md; needs no
        ``sbi``).
    sequential : {"truncated", "apt"}, default="truncated"
        Proposal of the rounds after the first: the prior truncated to the
        posterior's high-density region (TSNPE), or the posterior itself with
        sbi's APT correction.
    truncation_quantile : float in (0, 0.5), default=1e-3
        ``"truncated"``: posterior mass left outside the region.
    max_proposal_draws : int, default=1_000_000
        ``"truncated"``: prior draws screened per round at most.
    density_estimator : {"auto", "maf", "mdn", "nsf", "made"}, default="auto"
        The conditional density estimator q(θ | x) (``sbi.neural_nets.posterior_nn``).
        ``"auto"``: a mixture of Gaussians (``"mdn"``) for ``dim <= 10``, a
        masked autoregressive flow (``"maf"``, the paper's) above (see
        docs/algorithms.md for the measurements).
    hidden_features : int, default=32
        Hidden units of the estimator's networks.
    num_transforms : int, default=3
        Flow layers (``"maf"``, ``"nsf"``).
    num_components : int, default=5
        Mixture components (``"mdn"``).
    max_num_epochs : int, default=300
        Upper bound on training epochs per round.
    stop_after_epochs : int, default=20
        Early stopping patience on sbi's held-out 10% of the simulations.
    training_batch_size : int, default=20
        Small batches give small simulation sets enough gradient steps.
    learning_rate : float, default=1e-3
    select_by_validation : bool, default=True
        With a validation split, keep the round whose posterior samples vote
        best on it; otherwise (or without a split) keep the last round's.
    training_kwargs : dict or None, default=None
        Further keyword arguments of ``sbi.inference.NPE.train`` (they
        override the above).
    n_threads : int or None, default=1
        Torch threads while sbi trains and samples (restored afterwards, and
        not applied while the problem is queried). The networks are small:
        one thread is fastest, and on a busy machine extra threads spin
        (measured on 2 shared cores: 2.4 s with 1 thread vs 150 s with 2 for
        the same two rounds of a 10-D MDN). ``None`` leaves torch's setting.

    Examples
    --------
    >>> learner = SNPELearner(n_samples=5, n_rounds=2, n_simulations=100)
    >>> (learner.summary, learner.sequential, learner.density_estimator)
    ('onehot', 'truncated', 'auto')
    """

    needs_scores = False

    _PARAMS = ("n_rounds", "n_simulations", "min_simulations", "prior_variance", "summary", "inference",
               "sequential", "truncation_quantile", "max_proposal_draws", "density_estimator",
               "hidden_features", "num_transforms", "num_components", "max_num_epochs",
               "stop_after_epochs", "training_batch_size", "learning_rate", "select_by_validation",
               "training_kwargs", "n_threads")

    def __init__(self, n_samples=10, *, n_rounds=5, n_simulations=200, min_simulations=20,
                 prior_variance=1.0, summary="onehot", inference="npe", sequential="truncated",
                 truncation_quantile=1e-3, max_proposal_draws=1_000_000, density_estimator="auto",
                 hidden_features=32, num_transforms=3, num_components=5, max_num_epochs=300,
                 stop_after_epochs=20, training_batch_size=20, learning_rate=1e-3,
                 select_by_validation=True, training_kwargs=None, n_threads=1):
        check_param("n_samples", n_samples, "int", low=1)
        check_param("n_rounds", n_rounds, "int", low=1)
        # sbi holds out 10% of the simulations to stop training: keep a few
        check_param("n_simulations", n_simulations, "int", low=10)
        check_param("min_simulations", min_simulations, "int", low=10)
        if min_simulations > n_simulations:
            raise ValueError(
                f"min_simulations must be <= n_simulations={n_simulations}; got {min_simulations!r}."
            )
        check_param("prior_variance", prior_variance, "real", low=0, low_inclusive=False)
        check_param("summary", summary, None, options=SUMMARIES)
        check_param("inference", inference, None, options=INFERENCE)
        check_param("sequential", sequential, None, options=SEQUENTIAL)
        if inference == "factorised":
            # the network options configure sbi's estimator, which this path
            # does not build: refuse a changed one rather than ignore it
            network = dict(density_estimator=("auto", density_estimator), hidden_features=(32, hidden_features),
                           num_transforms=(3, num_transforms), num_components=(5, num_components),
                           max_num_epochs=(300, max_num_epochs), stop_after_epochs=(20, stop_after_epochs),
                           training_batch_size=(20, training_batch_size), learning_rate=(1e-3, learning_rate),
                           training_kwargs=(None, training_kwargs or None), summary=("onehot", summary))
            changed = sorted(k for k, (default, value) in network.items() if value != default)
            if changed:
                raise ValueError(
                    f"inference='factorised' learns one logistic likelihood per text and builds no sbi "
                    f"network, so {changed} do not apply to it; leave them at their defaults or use "
                    "inference='npe'."
                )
        check_param("truncation_quantile", truncation_quantile, "real", low=0, high=0.5,
                    low_inclusive=False)
        check_param("max_proposal_draws", max_proposal_draws, "int", low=1)
        check_param("density_estimator", density_estimator, None, options=DENSITY_ESTIMATORS)
        check_param("hidden_features", hidden_features, "int", low=1)
        check_param("num_transforms", num_transforms, "int", low=1)
        check_param("num_components", num_components, "int", low=1)
        check_param("max_num_epochs", max_num_epochs, "int", low=1)
        check_param("stop_after_epochs", stop_after_epochs, "int", low=1)
        check_param("training_batch_size", training_batch_size, "int", low=2)
        check_param("learning_rate", learning_rate, "real", low=0, low_inclusive=False)
        if not isinstance(select_by_validation, (bool, np.bool_)):
            raise ValueError(f"select_by_validation must be a bool; got {select_by_validation!r}.")
        if training_kwargs is not None and not isinstance(training_kwargs, dict):
            raise ValueError(
                f"training_kwargs must be a dict of sbi NPE.train arguments or None; got "
                f"{type(training_kwargs).__name__}."
            )
        check_param("n_threads", n_threads, "int", low=1, allow_none=True)
        self.n_samples = n_samples
        self.n_rounds = n_rounds
        self.n_simulations = n_simulations
        self.min_simulations = min_simulations
        self.prior_variance = float(prior_variance)
        self.summary = summary
        self.inference = inference
        self.sequential = sequential
        self.truncation_quantile = float(truncation_quantile)
        self.max_proposal_draws = max_proposal_draws
        self.density_estimator = density_estimator
        self.hidden_features = hidden_features
        self.num_transforms = num_transforms
        self.num_components = num_components
        self.max_num_epochs = max_num_epochs
        self.stop_after_epochs = stop_after_epochs
        self.training_batch_size = training_batch_size
        self.learning_rate = float(learning_rate)
        self.select_by_validation = bool(select_by_validation)
        self.training_kwargs = dict(training_kwargs or {})
        self.n_threads = n_threads

    @classmethod
    def from_params(cls, n_samples, method_params=None):
        """Build from the estimator's ``n_prompts`` and ``method_params`` dict.

        Raises
        ------
        ValueError
            If ``method_params`` names an option this learner does not have,
            or an option's value is invalid.

        Examples
        --------
        >>> SNPELearner.from_params(5, {"n_rounds": 2}).n_rounds
        2
        """
        params = dict(method_params or {})
        unknown = sorted(set(params) - set(cls._PARAMS))
        if unknown:
            raise ValueError(
                f"method_params has unknown option(s) {unknown} for method='snpe'; "
                f"valid options: {list(cls._PARAMS)}."
            )
        return cls(n_samples, **params)

    # ------------------------------------------------------------------ budget
    def _selection_cost(self, problem):
        if self.select_by_validation and problem.has_split("val"):
            return request_cost(problem, self.n_samples, "val")
        return 0

    def minimum_budget(self, problem):
        """Queries of the smallest round: ``min_simulations`` simulations plus selection."""
        return request_cost(problem, self.min_simulations, "train") + self._selection_cost(problem)

    def _affordable(self, problem):
        """Simulations the remaining budget allows this round (after selection)."""
        left = problem.remaining - self._selection_cost(problem)
        if not np.isfinite(left):
            return self.n_simulations
        return int(max(0, min(self.n_simulations, left // problem.n_texts("train"))))

    # --------------------------------------------------------------------- fit
    def fit(self, problem, random_state):
        """Run the rounds on ``problem``; see docs/algorithms.md.

        Parameters
        ----------
        problem : object
            Follows the protocol of :mod:`skprompt.inference.base`.
        random_state : int, RandomState instance or None

        Returns
        -------
        LearnerResult
            ``history`` has shape (n_iter, 1): the lowest training error among
            each round's simulations (later rounds' proposals concentrate on
            the posterior, so it need not decrease). ``info`` holds per-round
            lists: ``n_simulations``, ``round_best_error`` and
            ``round_mean_error`` (training error of that round's simulations),
            ``epochs``, ``converged`` (stopped before ``max_num_epochs``),
            ``proposal_acceptance`` (share of prior draws in the truncated
            region; NaN in round 0 and for ``"apt"``), ``proposal_fallback``,
            ``prior_overlap`` (share of prior draws in the round's posterior's
            region; see "Known limit"), ``val_errors``; and
            ``selected_round``. ``warnings`` holds a
            :class:`~skprompt.inference.base.PosteriorWarning` when the kept
            posterior is prior-like.
        """
        rs = check_random_state(random_state)
        if self.inference == "factorised":
            return self._fit_factorised(problem, np.random.default_rng(rs.randint(0, 2**31 - 1)))
        sbi_parts = import_sbi()
        import torch

        seed = int(rs.randint(0, 2**31 - 1))
        # sbi draws from torch's global generator (proposals, data split,
        # batches, atoms): run on a forked generator so the caller's state is
        # left as it was, and seed it for reproducibility.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._fit(problem, torch, *sbi_parts)

    def _region(self, posterior):
        """TSNPE's region: where the posterior's log-density at x_o exceeds its
        ``truncation_quantile`` quantile, estimated from posterior draws.

        (``sbi.utils.get_density_thresholder`` does the same but draws with a
        progress bar and a fixed, much larger, sample.)
        """
        n_support = max(1000, int(np.ceil(10.0 / self.truncation_quantile)))
        draws = posterior.sample((n_support,), show_progress_bars=False)
        log_q = posterior.log_prob(draws, norm_posterior=False)
        threshold = _lower_quantile(log_q, self.truncation_quantile)
        return lambda theta: posterior.log_prob(theta, norm_posterior=False) > threshold

    @staticmethod
    def _prior_overlap(prior, inside, torch):
        """Share of prior draws inside a posterior's highest-density region
        ``inside`` (from :meth:`_region`); no queries.

        About ``1 - truncation_quantile`` when the posterior at x_o rules out
        nothing of the prior (the next TSNPE round would accept every prior
        draw); lower when it has learnt something (docs/algorithms.md).
        """
        with torch.random.fork_rng(devices=[]):  # a diagnostic: leave the run's draws as they were
            return float(inside(prior.sample((_OVERLAP_DRAWS,))).float().mean())

    def _truncated_proposal(self, prior_draws, posterior_draws, inside, n, concat):
        """``n`` prior draws inside ``inside``, the posterior's high-density
        region from :meth:`_region` (TSNPE). ``prior_draws(m)`` and
        ``posterior_draws(m)`` give ``m`` draws (torch or numpy), ``concat``
        joins a list of them (``torch.cat`` or ``np.vstack``).

        Returns the draws, the acceptance rate and how many came from the
        posterior because the bounded rejection fell short.
        """
        kept, n_kept, drawn = [], 0, 0
        while n_kept < n and drawn < self.max_proposal_draws:
            m = min(_PROPOSAL_BATCH, self.max_proposal_draws - drawn)
            cand = prior_draws(m)
            cand = cand[inside(cand)]
            kept.append(cand)
            n_kept += len(cand)
            drawn += m
        rate = n_kept / drawn
        theta = concat(kept)[:n]
        short = n - len(theta)
        if short > 0:
            # A region with almost no prior mass: rejection from the prior is
            # hopeless; draw the rest from the posterior within the region
            # (it holds 1 - truncation_quantile of the posterior's mass).
            extra, n_extra = [], 0
            for _ in range(100):
                cand = posterior_draws(2 * short)
                cand = cand[inside(cand)]
                extra.append(cand)
                n_extra += len(cand)
                if n_extra >= short:
                    break
            theta = concat([theta] + extra)[:n]
        return theta, rate, max(short, 0)

    def _keep_round(self, problem, r, samples, n_sim, best_so_far, use_val, info, kept, kept_key, validated):
        """Score round ``r``'s posterior samples on the validation split (if
        used), keep them if they vote best so far, and report the round.
        Appends ``(r, samples, per-text vote errors)`` to ``validated``.

        Returns the kept samples, their key and whether the budget ran out.
        """
        exhausted = False
        key = (0.0, -r)  # without validation: the last round
        if use_val:
            try:
                val_out = np.asarray(problem.outputs(samples, "val"))
            except BudgetExhausted:  # not expected: the round reserved it
                exhausted = True
                val_out = None
            if val_out is None:
                key = None
            else:
                proba = aggregate_outputs(val_out, np.ones(len(samples)), int(problem.n_classes))
                errors = (proba.argmax(axis=1) != np.asarray(problem.y("val"))).astype(np.float64)
                info["val_errors"].append(float(errors.mean()))  # predictive_error, from the per-text errors
                validated.append((r, samples, errors))
                key = (info["val_errors"][-1], -r)
        if key is not None and (kept_key is None or key < kept_key):
            kept, kept_key = samples, key
            info["selected_round"] = r
        if kept is None:
            kept = samples
            info["selected_round"] = r
        report = {"round": r, "n_simulations": int(n_sim), "best_train_error": best_so_far}
        if use_val and info["val_errors"]:
            report["val_error"] = info["val_errors"][-1]
        problem.report(**report)
        return kept, kept_key, exhausted

    def _fit_factorised(self, problem, rng):
        """The rounds of ``inference="factorised"`` (docs/algorithms.md); numpy only."""
        dim = int(problem.dim)
        y_train = np.asarray(problem.y("train"))
        use_val = self.select_by_validation and problem.has_split("val")
        prior_sd = float(np.sqrt(self.prior_variance))
        # diagnostics draw from their own stream, so that they never change the run's draws
        diag_rng = np.random.default_rng(rng.integers(2**63))

        def prior_draws(n, gen=rng):
            return gen.standard_normal((n, dim)) * prior_sd

        def log_prior(theta):
            return -0.5 * (theta**2).sum(axis=1) / self.prior_variance

        info = {"summary": "correctness", "sequential": self.sequential, "inference": "factorised",
                "density_estimator": None, "n_simulations": [], "round_best_error": [],
                "round_mean_error": [], "n_informative_texts": [], "proposal_acceptance": [],
                "proposal_fallback": [], "prior_overlap": [], "val_errors": [], "selected_round": None}
        history, thetas, corrects = [], [], []
        best_so_far = np.inf
        exhausted = False
        loglik = inside = None
        kept, kept_key, validated = None, None, []
        n_support = max(1000, int(np.ceil(10.0 / self.truncation_quantile)), self.n_samples)
        for r in range(self.n_rounds):
            n_sim = self._affordable(problem)
            if n_sim < self.min_simulations:
                exhausted = True
                break
            rate, fallback = np.nan, 0
            if loglik is None:
                theta = prior_draws(n_sim)
            elif self.sequential == "truncated":
                theta, rate, fallback = self._truncated_proposal(
                    prior_draws, lambda n: _slice_sample(loglik, prior_draws(n), prior_sd, _SLICE_STEPS, rng),
                    inside, n_sim, np.vstack)
            else:  # "apt": the posterior itself; the factors are conditional on θ, no correction
                theta = _slice_sample(loglik, prior_draws(n_sim), prior_sd, _SLICE_STEPS, rng)
            try:
                out = problem.outputs(theta, "train")
            except BudgetExhausted:
                exhausted = True
                break
            labels = np.asarray(out)
            if labels.ndim == 3:  # log-probabilities: the labels only
                labels = labels.argmax(axis=2)
            correct = labels == y_train[None, :]
            errors = 1.0 - correct.mean(axis=1)
            thetas.append(theta)
            corrects.append(correct)

            loglik = _FactorisedLikelihood(np.vstack(thetas), np.vstack(corrects), prior_sd, FACTORISED_ALPHA)
            support = _slice_sample(loglik, prior_draws(n_support), prior_sd, _SLICE_STEPS, rng)
            threshold = np.sort(log_prior(support) + loglik(support))[
                int(np.floor(self.truncation_quantile * (n_support - 1)))]

            def inside(t, loglik=loglik, threshold=threshold):
                return log_prior(t) + loglik(t) > threshold

            overlap = float(inside(prior_draws(_OVERLAP_DRAWS, diag_rng)).mean())
            samples = support[: self.n_samples]  # independent chains: any n of them are a sample

            best_so_far = min(best_so_far, float(errors.min()))
            history.append([float(errors.min())])
            info["n_simulations"].append(int(n_sim))
            info["round_best_error"].append(float(errors.min()))
            info["round_mean_error"].append(float(errors.mean()))
            info["n_informative_texts"].append(int(loglik.n_informative))
            info["proposal_acceptance"].append(float(rate))
            info["proposal_fallback"].append(int(fallback))
            info["prior_overlap"].append(overlap)
            kept, kept_key, exhausted = self._keep_round(problem, r, samples, n_sim, best_so_far, use_val,
                                                         info, kept, kept_key, validated)
            if exhausted:
                break
        return self._result(kept, info, history, exhausted, prior_draws, validated)

    def _fit(self, problem, torch, NPE, posterior_nn):
        dim = int(problem.dim)
        n_classes = int(problem.n_classes)
        y_train = np.asarray(problem.y("train"))
        use_val = self.select_by_validation and problem.has_split("val")

        prior = torch.distributions.MultivariateNormal(
            torch.zeros(dim), covariance_matrix=self.prior_variance * torch.eye(dim)
        )
        kind = self.density_estimator
        if kind == "auto":
            kind = "mdn" if dim <= AUTO_MDN_MAX_DIM else "maf"
        net_kwargs = dict(z_score_theta="independent", z_score_x="none",
                          hidden_features=self.hidden_features)
        if kind == "mdn":
            net_kwargs["num_components"] = self.num_components
        elif kind in ("maf", "nsf"):
            net_kwargs["num_transforms"] = self.num_transforms
        estimator = posterior_nn(kind, **net_kwargs)
        inference = NPE(prior=prior, density_estimator=estimator, show_progress_bars=False,
                        tracker=_NullTracker())
        x_o = torch.from_numpy(encode_summary(y_train[None, :], y_train, n_classes, self.summary))
        train_kwargs = dict(
            training_batch_size=self.training_batch_size, learning_rate=self.learning_rate,
            max_num_epochs=self.max_num_epochs, stop_after_epochs=self.stop_after_epochs,
            show_train_summary=False,
        )
        if self.sequential == "truncated":
            # TSNPE: every round's draws follow the prior within the region,
            # so maximum likelihood on all of them estimates the posterior there.
            train_kwargs["force_first_round_loss"] = True
        train_kwargs.update(self.training_kwargs)

        info = {"summary": self.summary, "sequential": self.sequential,
                "density_estimator": kind, "n_simulations": [],
                "round_best_error": [], "round_mean_error": [], "epochs": [], "converged": [],
                "proposal_acceptance": [], "proposal_fallback": [], "prior_overlap": [], "val_errors": [],
                "selected_round": None}
        history = []
        best_so_far = np.inf
        exhausted = False
        posterior = region = None
        kept, kept_key, validated = None, None, []
        for r in range(self.n_rounds):
            n_sim = self._affordable(problem)
            if n_sim < self.min_simulations:
                exhausted = True
                break
            rate, fallback = np.nan, 0
            with _quiet_sbi(), _torch_threads(torch, self.n_threads):
                if posterior is None:
                    theta = prior.sample((n_sim,))
                elif self.sequential == "truncated":
                    theta, rate, fallback = self._truncated_proposal(
                        lambda m: prior.sample((m,)), lambda m: posterior.sample((m,), show_progress_bars=False),
                        region, n_sim, torch.cat)
                else:
                    theta = posterior.sample((n_sim,), show_progress_bars=False)
            try:
                out = problem.outputs(theta.detach().cpu().numpy().astype(np.float64), "train")
            except BudgetExhausted:
                exhausted = True
                break
            labels = np.asarray(out)
            if labels.ndim == 3:  # log-probabilities: SNPE uses the labels only
                labels = labels.argmax(axis=2)
            errors = (labels != y_train[None, :]).mean(axis=1)
            x = torch.from_numpy(encode_summary(labels, y_train, n_classes, self.summary))

            # TSNPE's proposal is the prior within the region, so its draws
            # enter as prior draws (maximum likelihood); APT passes the proposal.
            proposal = posterior if self.sequential == "apt" else None
            with _quiet_sbi(), _torch_threads(torch, self.n_threads):
                inference.append_simulations(theta.float(), x, proposal=proposal)
                try:
                    density = inference.train(**train_kwargs)
                except torch.linalg.LinAlgError as exc:  # APT's analytic MDN correction
                    raise RuntimeError(
                        f"sbi's APT correction failed in round {r} ({exc}); the previous posterior is "
                        "broader than the prior in some direction. Use sequential='truncated' "
                        "(the default) or density_estimator='maf'."
                    ) from exc
                posterior = inference.build_posterior(density).set_default_x(x_o)
                samples = posterior.sample((self.n_samples,), show_progress_bars=False)
                # the region serves both the diagnostic and the next round's TSNPE proposal
                region = self._region(posterior)
                overlap = self._prior_overlap(prior, region, torch)
            samples = samples.detach().cpu().numpy().astype(np.float64)

            best_so_far = min(best_so_far, float(errors.min()))
            history.append([float(errors.min())])
            epochs = int(inference.summary["epochs_trained"][-1])
            info["n_simulations"].append(int(n_sim))
            info["round_best_error"].append(float(errors.min()))
            info["round_mean_error"].append(float(errors.mean()))
            info["epochs"].append(epochs)
            info["converged"].append(epochs < int(train_kwargs["max_num_epochs"]))
            info["proposal_acceptance"].append(float(rate))
            info["proposal_fallback"].append(int(fallback))
            info["prior_overlap"].append(overlap)

            kept, kept_key, exhausted = self._keep_round(problem, r, samples, n_sim, best_so_far, use_val,
                                                         info, kept, kept_key, validated)
            if exhausted:
                break

        return self._result(kept, info, history, exhausted,
                            lambda n: prior.sample((n,)).numpy().astype(np.float64), validated)

    def _result(self, kept, info, history, exhausted, prior_draws, validated):
        """The LearnerResult of either path, with the prior-like warning and
        the record of the validated rounds (when the kept one is among them)."""
        advice = []
        if kept is None:  # not one round fitted in the budget: the posterior is the prior
            kept = prior_draws(self.n_samples)
        elif (overlap := info["prior_overlap"][info["selected_round"]]) >= PRIOR_LIKE_OVERLAP:
            advice.append((PosteriorWarning, (
                f"method='snpe': the posterior at the observed labels rules out almost nothing of the "
                f"prior ({overlap:.1%} of prior draws lie in its {1 - self.truncation_quantile:.1%} "
                f"highest-density region, after {sum(info['n_simulations'])} simulations), so its "
                "prompts are in effect prior draws. Either the labels barely depend on the prompt, or "
                "no simulation came near the observed labels and the estimator could not learn the "
                "posterior there (see 'Known limit' in skprompt.inference.snpe). method='abc-smc' or "
                "a larger budget may do better."
            )))
        weights = np.full(len(kept), 1.0 / len(kept))
        history = np.asarray(history, dtype=np.float64).reshape(-1, 1)
        selection = None
        if validated and info["selected_round"] in [r for r, _, _ in validated]:
            # the kept round, chosen by its samples' vote (ties: the later round)
            selection = [SelectionSlot([(z, np.full(len(z), 1.0 / len(z))) for _, z, _ in validated],
                                       np.stack([e for _, _, e in validated]),
                                       -np.array([r for r, _, _ in validated], dtype=np.float64))]
        return LearnerResult(kept, weights, history, len(history), exhausted, info, advice, selection)
