"""Likelihood-free prompt posteriors: ABC sequential Monte Carlo (``"abc-smc"``).

ABC-SMC needs only the *labels* a black-box API predicts. It samples prompt
vectors ``z`` from the approximate Bayesian computation (ABC) posterior

.. math::  \\pi_\\varepsilon(z) \\propto \\pi(z)\\, 1[d(z) \\le \\varepsilon],
   \\qquad \\pi = N(0, v I),\\quad d(z) = \\text{training error rate of } z,

for a decreasing sequence of tolerances ``eps_0 > eps_1 > ...``, carrying a
weighted population of ``n_particles`` prompts from one tolerance to the
next. Two moves are available: population Monte Carlo with importance
weights (``move="pmc"``, the default; Beaumont et al., 2009; Toni et al.,
2009) and resample-move with ABC-MCMC (``move="mcmc"``; Del Moral et al.,
2012; Drovandi & Pettitt, 2011).

Algorithm
---------
Round 0 (rejection ABC, bounded)
    Draw ``n_initial`` prompts from the prior, in *one* request, and keep
    ``n_particles`` of them: the tolerance is the ``n_particles``-th smallest
    error and the population is drawn uniformly (without replacement) among
    all draws within it (uniformly, so that ties do not favour lower errors
    and the population stays a sample of the restricted prior). The proposal
    is the prior, so the weights are exactly uniform.
Tolerance schedule (rounds t >= 1)
    ``eps_t`` is the weighted ``quantile`` of the current population's
    errors. Errors are multiples of ``1 / n_train``, so ties are the rule:
    when the quantile equals ``eps_{t-1}`` (a plateau), ``eps_t`` is the
    largest error in the population below ``eps_{t-1}``, or, if every
    particle sits at ``eps_{t-1}``, the next level ``eps_{t-1} - 1/n_train``.
    The targeted tolerance therefore strictly decreases every round; a
    population at zero error ends the run (``"converged"``).
Kernel
    Gaussian, with covariance ``kernel_scale`` times the weighted covariance
    of the population: its diagonal (``kernel="diag"``, the default, as the
    population is usually smaller than the dimension) or the full matrix
    (``kernel="full"``, for ``n_particles`` well above the dimension). It is
    recomputed every round, so it shrinks with the population. Default scale:
    2 for ``"pmc"`` (Beaumont et al.), ``2.38² / dim`` for ``"mcmc"`` (the
    random-walk Metropolis scale of Roberts & Rosenthal, 2001).

``move="pmc"``: population Monte Carlo
    *Proposals.* A parent is drawn with probability equal to its weight and
    perturbed by the kernel. Candidates are proposed in batches, each scored
    in a single ``problem.outputs`` request; the batch size is the number of
    particles still missing divided by the acceptance rate observed so far
    (1.2x margin). The first ``n_particles`` candidates within ``eps_t``, in
    proposal order, form the new population (rejection sampling from the
    proposal mixture restricted to the tolerance).
    *Importance weights.* ``w_i ∝ π(z_i) / Σ_j W_j K(z_i | z_j)``: the prior
    over the density of the proposal mixture actually used (``W_j`` the
    parents' selection probabilities), normalised to sum to 1.
    *Resampling.* When the effective sample size ``1 / Σ w_i²`` falls below
    ``ess_threshold * n_particles``, the parents of the next round are a
    systematic resample of the population with equal selection probabilities
    (and the weight denominator uses that mixture). The *returned* population
    is never resampled: it keeps its weights, a lower-variance predictive
    than duplicated prompts.
    *Per-round cap.* A round simulates at most ``max_simulations_per_round``
    candidates (and no more than the budget affords). If fewer than
    ``n_particles`` reach ``eps_t``, the tolerance is relaxed to the
    ``n_particles``-th smallest error among *all* the round's candidates and
    the population is drawn uniformly among the candidates within it,
    provided that is not looser than ``eps_{t-1}``. A relaxed round that does
    not lower the tolerance is kept (it refreshes the population) and ends
    the run (``"stalled"``: the next round would face the same acceptance
    rate). If not even ``n_particles`` candidates reach ``eps_{t-1}``, the
    round is discarded and the run stops (``"stalled"``).
    *Caveat.* Importance weights degenerate with the dimension: measured on a
    label-only toy, with 20-100 particles the ESS falls to 1-2 in the first
    perturbation round at ``dim=100`` (a proposal mixture of narrow Gaussians
    in many dimensions is a poor importance density). The result is then
    effectively one prompt; ``move="mcmc"`` keeps a diverse population.

``move="mcmc"``: resample-move
    *Reweight and resample.* For a deterministic simulator the incremental
    weight of a particle is ``1[d <= eps_t]`` (Del Moral et al., 2012, with
    one simulation per particle); the survivors are resampled (systematic) to
    ``n_particles``, with equal weights.
    *Move.* Each particle takes random-walk Metropolis-Hastings steps that
    leave the ABC posterior at ``eps_t`` invariant: propose ``z' = z + L e``,
    accept with probability ``min(1, π(z')/π(z)) · 1[d(z') <= eps_t]``. The
    prior test is done first, so only its survivors are simulated (one
    request per sweep over the population). After the first sweep, the
    number of sweeps is set so that each particle moves at least once with
    probability 0.99 given the observed acceptance rate ``p``:
    ``ceil(log 0.01 / log(1 - p))`` (Drovandi & Pettitt, 2011), within the
    per-round cap. Weights stay uniform; ``ess_threshold`` is not used.
    *Plateau.* When every particle sits at ``eps_{t-1}`` the round moves the
    population at ``eps_{t-1}`` (a refresh, reported as ``relaxed``); if that
    finds no particle below ``eps_{t-1}``, the run stops (``"stalled"``).

Stopping
    Always bounded: after ``max_rounds`` rounds (round 0 included); when the
    budget cannot pay ``n_particles`` simulations plus the validation of a
    population (``"budget"``; validation queries are reserved before a round
    starts, so a started round can always be validated); at zero tolerance
    (``"converged"``); on a stall (above). The tolerance decreases at least
    every other round, so there are at most ``2 (n_train + 1)`` rounds even
    with ``max_rounds`` and the budget unbounded; each round simulates at
    most ``max_simulations_per_round`` candidates.
Model selection (Shen et al., 2023)
    After each round the population's weighted-vote predictive (the weighted
    histogram of its predicted labels, :func:`~skprompt.inference.base.aggregate_outputs`)
    is scored on the validation split, and the population of the round with
    the best validation accuracy is returned with its weights (ties: the
    later, tighter round). Without a validation split the last completed
    population is returned.

What differs from the reference code (Shen et al., 2023)
---------------------------------------------------------
The public code accepts particles whose accuracy beats a threshold that grows
by ``1/N`` per round, perturbs a uniformly chosen parent with a fixed
diagonal Gaussian and has no importance weights (that branch crashes), no cap
on the prior draws of round 0, and a loop that never ends when no particle
reaches the threshold. Here: a population that targets the ABC posterior
(importance weights, or Metropolis-Hastings moves that leave it invariant)
rather than the kernel-distorted proposal; parents chosen by weight; a kernel
adapted to, and shrinking with, the population; an adaptive quantile
schedule that handles the discrete error levels; ESS-triggered resampling;
batched simulation; hard bounds on simulations per round, rounds and
queries. The prior is ``N(0, prior_variance I)``; the paper used
``prior_variance=50`` with its own projection scale, whereas skprompt's
projection maps ``z ~ N(0, I)`` to perturbations with the spread of the
embeddings; the estimator sets ``prior_variance = sigma0**2``, the scale
its CMA-ES searches start at.

References
----------
Beaumont, Cornuet, Marin, Robert (2009). Adaptive approximate Bayesian
computation. *Biometrika* 96(4).
Toni, Welch, Strelkowa, Ipsen, Stumpf (2009). Approximate Bayesian
computation scheme for parameter inference and model selection in dynamical
systems. *J. R. Soc. Interface* 6.
Del Moral, Doucet, Jasra (2012). An adaptive sequential Monte Carlo method for
approximate Bayesian computation. *Statistics and Computing* 22.
Drovandi, Pettitt (2011). Estimation of parameters for macroparasite
population evolution using approximate Bayesian computation. *Biometrics* 67.
Roberts, Rosenthal (2001). Optimal scaling for various Metropolis-Hastings
algorithms. *Statistical Science* 16.
Shen, Huang, Liang, Wang, Wei, Li (2023). Reliable gradient-free and
likelihood-free prompt tuning. *Findings of EACL*.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from .base import BudgetExhausted, Learner, LearnerResult, aggregate_outputs, predictive_error
from .cmaes import seeded_generator

__all__ = ["ABCSMCLearner", "effective_sample_size", "weighted_quantile", "systematic_resample"]

#: Options of ``method_params`` for ``method="abc-smc"`` (see :meth:`ABCSMCLearner.from_params`).
METHOD_PARAMS = (
    "move",
    "prior_variance",
    "max_rounds",
    "quantile",
    "kernel",
    "kernel_scale",
    "ess_threshold",
    "n_initial",
    "max_simulations_per_round",
    "batch_size",
)

#: ABC-MCMC: each particle should move at least once with probability 1 - MOVE_MISS (Drovandi & Pettitt).
MOVE_MISS = 0.01


def effective_sample_size(weights):
    """Kish's effective sample size ``(Σ w)² / Σ w²`` of importance weights."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))


def weighted_quantile(values, weights, q):
    """The smallest value ``v`` with ``Σ_{values <= v} w >= q Σ w``.

    For discrete values (error counts) this returns a value that occurs, as the
    tolerance schedule needs.

    >>> weighted_quantile([3, 1, 2, 2], [0.1, 0.2, 0.3, 0.4], 0.5)
    2
    """
    values = np.asarray(values)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    i = int(np.searchsorted(cum, q - 1e-12, side="left"))
    return values[order][min(i, len(values) - 1)].item()


def systematic_resample(weights, rng):
    """Indices of a systematic resample of ``len(weights)`` particles.

    Lower variance than multinomial resampling; every particle of weight
    ``w`` is copied ``floor(n w)`` or ``ceil(n w)`` times.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    positions = (rng.random() + np.arange(n)) / n
    cum = np.cumsum(w / w.sum())
    cum[-1] = 1.0
    return np.searchsorted(cum, positions, side="right")


class _GaussianKernel:
    """Gaussian perturbation ``z' = z + L e``, ``e ~ N(0, I)``, with its log-density
    up to a constant (the same for every pair, so it cancels in the normalised
    weights). scipy has no vectorised many-means Gaussian density, hence the
    whitening by hand: ``log K(x | m) = -|L^{-1}(x - m)|² / 2``."""

    def __init__(self, samples, weights, kind, scale, floor):
        w = weights / weights.sum()
        mean = w @ samples
        centred = samples - mean
        if kind == "diag":
            var = scale * (w @ centred**2)
            self.std = np.sqrt(np.maximum(var, floor))
            self.chol = None
        else:
            cov = scale * (centred.T * w) @ centred
            jitter = max(floor, 1e-9 * float(np.mean(np.diag(cov))))
            self.chol = cholesky(cov + jitter * np.eye(cov.shape[0]), lower=True)
            self.std = None

    def perturb(self, parents, rng):
        e = rng.standard_normal(parents.shape)
        return parents + (e * self.std if self.chol is None else e @ self.chol.T)

    def whiten(self, x):
        if self.chol is None:
            return x / self.std
        return solve_triangular(self.chol, x.T, lower=True).T

    def log_density(self, x, means):
        """Matrix ``(len(x), len(means))`` of ``log K(x_i | means_j)`` + const."""
        return -0.5 * cdist(self.whiten(x), self.whiten(means), "sqeuclidean")


class _Simulator:
    """What one fit needs from the problem: error counts of a batch in one
    request, the validation score of a population, and the simulations the
    budget still affords (validation of one population reserved)."""

    def __init__(self, problem, n_particles):
        self.problem = problem
        self.n_train = int(problem.n_texts("train"))
        self.y = np.asarray(problem.y("train"), dtype=np.int64)
        self.use_val = bool(problem.has_split("val"))
        self.y_val = np.asarray(problem.y("val"), dtype=np.int64) if self.use_val else None
        self.val_cost = n_particles * problem.n_texts("val") if self.use_val else 0

    def affordable(self):
        left = self.problem.remaining - self.val_cost
        return math.inf if math.isinf(left) else max(int(left // self.n_train), 0)

    @staticmethod
    def _labels(outputs):
        out = np.asarray(outputs)
        return out.argmax(axis=2) if out.ndim == 3 else out  # a score problem: its arg-max labels

    def errors(self, Z):
        """Training error counts (the ABC distance times ``n_train``), one request."""
        return (self._labels(self.problem.outputs(Z, "train")) != self.y[None, :]).sum(axis=1)

    def val_accuracy(self, Z, w):
        """Accuracy of the weighted vote of ``Z`` on the validation split, one request."""
        labels = self._labels(self.problem.outputs(Z, "val"))
        return 1.0 - predictive_error(aggregate_outputs(labels, w, self.problem.n_classes), self.y_val)


@dataclass
class _Round:
    """One completed round: population, weights, error counts, tolerance (a count)."""

    pop: np.ndarray
    w: np.ndarray
    dist: np.ndarray
    eps: int
    target: int
    proposed: int  # candidates proposed (pmc) or Metropolis-Hastings steps (mcmc)
    accepted: int
    simulations: int
    requests: int
    ess: float
    resampled: bool = False
    relaxed: bool = False
    stalled: bool = False


class ABCSMCLearner(Learner):
    """ABC sequential Monte Carlo over prompt vectors, from predicted labels only.

    See the module docstring for the algorithm. The distance is the training
    error rate of the labels a prompt predicts; the result is a weighted
    population of prompts.

    Parameters
    ----------
    n_particles : int, default=20
        Population size (>= 2): the number of prompts returned.
    move : {"pmc", "mcmc"}, default="pmc"
        ``"pmc"``: perturbed parents with importance weights (Beaumont et
        al.); ``"mcmc"``: resample the particles within the new tolerance and
        move them with ABC Metropolis-Hastings steps (Del Moral et al.;
        Drovandi & Pettitt), uniform weights.
    prior_variance : float, default=1.0
        Variance ``v`` of the prior ``N(0, v I)``. skprompt's projection maps
        ``N(0, I)`` to perturbations spread like the model's embeddings; the
        estimator passes ``sigma0**2`` unless told otherwise (the paper used
        50 with another projection scale).
    max_rounds : int, default=10
        Rounds at most, round 0 (rejection from the prior) included.
    quantile : float in (0, 1], default=0.5
        The next tolerance is this weighted quantile of the population's
        errors (forced strictly below the current tolerance).
    kernel : {"diag", "full"}, default="diag"
        Covariance of the Gaussian perturbation: diagonal or full weighted
        covariance of the population (full needs ``n_particles`` well above
        the dimension to be well estimated).
    kernel_scale : float or None, default=None
        Multiplier of the population covariance. ``None``: 2 for ``"pmc"``
        (Beaumont et al.), ``2.38² / dim`` for ``"mcmc"``.
    ess_threshold : float in [0, 1], default=0.5
        ``"pmc"`` only: resample the parents when the effective sample size
        falls below ``ess_threshold * n_particles`` (0: never; 1: whenever the
        weights are not uniform).
    n_initial : int or None, default=None
        Prior draws in round 0 (>= ``n_particles``); ``None`` means
        ``ceil(n_particles / quantile)``.
    max_simulations_per_round : int or None, default=None
        Cap on the candidates simulated in one round (>= ``n_particles``;
        for ``"mcmc"``, on the proposed moves: at most this / n_particles
        sweeps); ``None`` means ``10 * n_particles``.
    batch_size : int or None, default=None
        ``"pmc"`` only: candidates per request; ``None`` adapts it to the
        acceptance rate (missing particles / rate, times 1.2).

    Examples
    --------
    A toy label-only "API": a prompt ``z`` in R^2 labels a point ``x`` by the
    sign of ``z · x``.

    >>> import numpy as np
    >>> from skprompt.inference.abc_smc import ABCSMCLearner
    >>> class Toy:
    ...     dim, n_classes, labels_only, loss_name = 2, 2, True, "zero_one"
    ...     X = np.random.default_rng(0).standard_normal((30, 2))
    ...     queries, remaining = 0, float("inf")
    ...     def y(self, split): return (self.X @ [1.0, -0.5] > 0).astype(int)
    ...     def has_split(self, split): return split == "train"
    ...     def n_texts(self, split): return len(self.X)
    ...     def outputs(self, Z, split): return (Z @ self.X.T > 0).astype(int)
    ...     def report(self, **info): pass
    >>> res = ABCSMCLearner(n_particles=50, max_rounds=5).fit(Toy(), random_state=0)
    >>> res.samples.shape, bool(np.isclose(res.weights.sum(), 1.0))
    ((50, 2), True)
    >>> bool(res.history[-1, 0] <= res.history[0, 0])
    True
    """

    needs_scores = False

    def __init__(self, n_particles=20, *, move="pmc", prior_variance=1.0, max_rounds=10, quantile=0.5,
                 kernel="diag", kernel_scale=None, ess_threshold=0.5, n_initial=None,
                 max_simulations_per_round=None, batch_size=None):
        self.n_particles = n_particles
        self.move = move
        self.prior_variance = prior_variance
        self.max_rounds = max_rounds
        self.quantile = quantile
        self.kernel = kernel
        self.kernel_scale = kernel_scale
        self.ess_threshold = ess_threshold
        self.n_initial = n_initial
        self.max_simulations_per_round = max_simulations_per_round
        self.batch_size = batch_size
        self._check_params()

    @classmethod
    def from_params(cls, n_particles, method_params=None):
        """Build from the estimator's ``n_prompts`` and its ``method_params`` dict.

        Raises a ``ValueError`` naming any unknown key.
        """
        method_params = dict(method_params or {})
        unknown = sorted(set(method_params) - set(METHOD_PARAMS))
        if unknown:
            raise ValueError(
                f"method_params has unknown key(s) {unknown} for method='abc-smc'; "
                f"expected some of {list(METHOD_PARAMS)}."
            )
        return cls(n_particles, **method_params)

    # ------------------------------------------------------------ checking
    def _check_params(self):
        def integer(name, value, low, allow_none=False):
            if value is None and allow_none:
                return
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}{' or None' if allow_none else ''}; got {value!r}.")

        def real(name, value, low, high, low_open, high_open=False, allow_none=False):
            if value is None and allow_none:
                return
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
            if not ok:
                lo, hi = "(" if low_open else "[", ")" if high_open else "]"
                raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}"
                                 f"{' or None' if allow_none else ''}; got {value!r}.")

        def option(name, value, options):
            if value not in options:
                raise ValueError(f"{name} must be one of {list(options)}; got {value!r}.")

        integer("n_particles", self.n_particles, 2)
        option("move", self.move, ("pmc", "mcmc"))
        real("prior_variance", self.prior_variance, 0, math.inf, True, True)
        integer("max_rounds", self.max_rounds, 1)
        real("quantile", self.quantile, 0, 1, True)
        option("kernel", self.kernel, ("diag", "full"))
        real("kernel_scale", self.kernel_scale, 0, math.inf, True, True, allow_none=True)
        real("ess_threshold", self.ess_threshold, 0, 1, False)
        integer("n_initial", self.n_initial, self.n_particles, allow_none=True)
        integer("max_simulations_per_round", self.max_simulations_per_round, self.n_particles, allow_none=True)
        integer("batch_size", self.batch_size, 1, allow_none=True)

    @property
    def _n_initial(self):
        if self.n_initial is not None:
            return int(self.n_initial)
        return int(math.ceil(self.n_particles / self.quantile - 1e-9))

    @property
    def _round_cap(self):
        if self.max_simulations_per_round is not None:
            return int(self.max_simulations_per_round)
        return 10 * self.n_particles

    def _kernel(self, pop, w):
        scale = self.kernel_scale
        if scale is None:
            scale = 2.0 if self.move == "pmc" else 2.38**2 / pop.shape[1]
        return _GaussianKernel(pop, w, self.kernel, scale, 1e-12 * self.prior_variance)

    def minimum_budget(self, problem):
        """Queries of the smallest round 0: ``n_particles`` prior draws on the
        training split, plus their validation."""
        val = self.n_particles * problem.n_texts("val") if problem.has_split("val") else 0
        return self.n_particles * problem.n_texts("train") + val

    # ---------------------------------------------------------------- fit
    def fit(self, problem, random_state):
        """Run ABC-SMC on ``problem``; see the module docstring.

        Returns
        -------
        LearnerResult
            ``samples``/``weights``: the kept population and its normalised
            weights; ``history``: the smallest training error in each round's
            population, shape ``(n_rounds, 1)``; ``info``: per round
            ``tolerance``, ``target_tolerance``, ``acceptance_rate``
            (accepted / proposed candidates or moves), ``ess``,
            ``val_accuracy`` (NaN without validation split), ``simulations``,
            ``requests`` (training requests), ``resampled``, ``relaxed``; and
            ``kept_round``, ``stop_reason`` (``"max_rounds"``, ``"budget"``,
            ``"converged"``, ``"stalled"``), ``n_simulations``,
            ``train_errors`` (of the kept particles).
        """
        self._check_params()
        rng = seeded_generator(random_state)
        n = int(self.n_particles)
        sim = _Simulator(problem, n)
        keys = ("tolerance", "target_tolerance", "acceptance_rate", "ess", "val_accuracy", "simulations",
                "requests", "resampled", "relaxed")
        log = {k: [] for k in keys}
        rounds = []

        def close(r):
            """Validate, record and report a completed round."""
            val = np.nan
            if sim.use_val:
                try:
                    val = sim.val_accuracy(r.pop, r.w)
                except BudgetExhausted:  # not expected: validation queries are reserved
                    pass
            rounds.append(r)
            entry = (r.eps / sim.n_train, r.target / sim.n_train, r.accepted / max(r.proposed, 1), r.ess, float(val),
                     r.simulations, r.requests, r.resampled, r.relaxed)
            for key, value in zip(keys, entry):
                log[key].append(value)
            problem.report(round=len(rounds) - 1, tolerance=r.eps / sim.n_train,
                           acceptance_rate=log["acceptance_rate"][-1], ess=r.ess, val_accuracy=float(val),
                           simulations=r.simulations, best_train_error=float(r.dist.min() / sim.n_train))

        m0 = min(self._n_initial, sim.affordable())
        if m0 < n:
            raise BudgetExhausted(
                f"ABC-SMC needs {self.minimum_budget(problem)} queries for its first round "
                f"({n} particles on {sim.n_train} training texts); {problem.remaining} left."
            )
        exhausted = m0 < self._n_initial
        stop_reason = "budget" if exhausted else "max_rounds"
        current = self._round_zero(sim, rng, int(m0))
        close(current)
        step = self._pmc_round if self.move == "pmc" else self._mcmc_round
        while len(rounds) < self.max_rounds:
            if current.eps == 0:
                stop_reason = "converged"
                break
            if sim.affordable() < n:
                exhausted, stop_reason = True, "budget"
                break
            new, ran_out = step(sim, rng, current, len(rounds))
            exhausted = exhausted or ran_out
            if new is None:  # the round could not form a population: keep the previous one
                stop_reason = "budget" if ran_out else "stalled"
                break
            close(new)
            # belt and braces: a round that neither lowers the tolerance nor finds a lower error ends the run
            stalled = new.stalled or (new.eps >= current.eps and new.dist.min() >= current.eps)
            current = new
            if stalled:
                stop_reason = "budget" if ran_out else "stalled"
                break

        vals = np.asarray(log["val_accuracy"], dtype=np.float64)
        if sim.use_val and np.any(np.isfinite(vals)):
            kept = int(np.flatnonzero(vals == np.nanmax(vals))[-1])  # ties: the later, tighter round
        else:
            kept = len(rounds) - 1
        best = rounds[kept]
        history = np.array([[r.dist.min() / sim.n_train] for r in rounds], dtype=np.float64)
        info = dict(log)
        info.update(kept_round=kept, stop_reason=stop_reason, n_simulations=int(np.sum(log["simulations"])),
                    train_errors=best.dist / sim.n_train)
        return LearnerResult(best.pop, best.w, history, len(rounds), exhausted, info)

    # -------------------------------------------------------------- rounds
    def _round_zero(self, sim, rng, m0):
        """Rejection from the prior: ``m0`` draws in one request, ``n`` kept."""
        n = self.n_particles
        Z = rng.standard_normal((m0, sim.problem.dim)) * math.sqrt(self.prior_variance)
        d = sim.errors(Z)
        eps = int(np.sort(d)[n - 1])
        keep = np.sort(rng.choice(np.flatnonzero(d <= eps), n, replace=False))
        return _Round(Z[keep], np.full(n, 1.0 / n), d[keep], eps, eps, m0, n, m0, 1, float(n))

    def _target(self, cur):
        """Next tolerance: the weighted quantile, strictly below ``cur.eps``."""
        target = int(weighted_quantile(cur.dist, cur.w, self.quantile))
        if target >= cur.eps:
            lower = cur.dist[cur.dist < cur.eps]
            target = int(lower.max()) if lower.size else cur.eps - 1
        return target

    def _pmc_round(self, sim, rng, cur, t):
        """Population Monte Carlo: returns (round or None, budget ran out)."""
        n, cap = self.n_particles, self._round_cap
        target = self._target(cur)
        kernel = self._kernel(cur.pop, cur.w)
        resampled = effective_sample_size(cur.w) < self.ess_threshold * n
        if resampled:
            parents, parent_w = cur.pop[systematic_resample(cur.w, rng)], np.full(n, 1.0 / n)
        else:
            parents, parent_w = cur.pop, cur.w
        # the first batch assumes the previous round's acceptance rate (round 1: the quantile)
        prior_rate = self.quantile if t == 1 else max(cur.accepted / cur.proposed, 1.0 / cap)
        Zs, ds, n_acc, n_sim, ran_out = [], [], 0, 0, False
        while n_acc < n:
            cap_left, budget_left = cap - n_sim, sim.affordable()
            if budget_left < min(cap_left, 1):
                ran_out = True
            room = min(cap_left, budget_left)
            if room <= 0:
                break
            if self.batch_size is not None:
                size = self.batch_size
            else:
                rate = (n_acc + 1) / (n_sim + 2) if n_sim else prior_rate
                size = max(int(math.ceil(1.2 * (n - n_acc) / max(rate, 1e-3))), n - n_acc)
            size = int(min(size, room))
            Z = kernel.perturb(parents[rng.choice(n, size=size, p=parent_w)], rng)
            try:
                d = sim.errors(Z)
            except BudgetExhausted:  # the problem refused; nothing was queried
                ran_out = True
                break
            Zs.append(Z)
            ds.append(d)
            n_sim += size
            n_acc += int(np.sum(d <= target))
        Z = np.vstack(Zs) if Zs else np.empty((0, cur.pop.shape[1]))
        d = np.concatenate(ds) if ds else np.empty(0, dtype=np.int64)
        relaxed = n_acc < n
        if not relaxed:  # the first n within the target, in proposal order
            eps = target
            keep = np.flatnonzero(d <= target)[:n]
        elif n_sim >= n and int(np.sort(d)[n - 1]) <= cur.eps:
            eps = int(np.sort(d)[n - 1])
            keep = np.sort(rng.choice(np.flatnonzero(d <= eps), n, replace=False))
        else:  # not even n candidates within the current tolerance
            return None, ran_out
        # importance weights: prior / density of the proposal mixture (constants cancel)
        Zk = Z[keep]
        with np.errstate(divide="ignore"):
            log_parent_w = np.log(parent_w)
        log_w = -0.5 * np.sum(Zk**2, axis=1) / self.prior_variance - logsumexp(
            kernel.log_density(Zk, parents) + log_parent_w[None, :], axis=1
        )
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        new = _Round(Zk, w, d[keep], eps, target, n_sim, n_acc, n_sim, len(Zs), effective_sample_size(w),
                     resampled, relaxed, stalled=eps >= cur.eps)
        return new, ran_out

    def _mcmc_round(self, sim, rng, cur, t):
        """Resample-move with ABC Metropolis-Hastings: returns (round, budget ran out)."""
        n, v = self.n_particles, self.prior_variance
        target = self._target(cur)
        alive = cur.dist <= target
        refresh = not alive.any()
        if refresh:  # every particle at cur.eps: move at cur.eps, try to find lower ones
            target, alive = cur.eps, np.ones(n, dtype=bool)
        w_alive = cur.w * alive
        ess = effective_sample_size(w_alive)
        # the kernel from the survivors, or from the whole population if they have no spread
        spread = len(np.unique(cur.pop[alive], axis=0)) >= 2
        kernel = self._kernel(cur.pop, w_alive if spread else cur.w)
        idx = systematic_resample(w_alive, rng)
        pop, dist = cur.pop[idx].copy(), cur.dist[idx].copy()
        max_sweeps = max(self._round_cap // n, 1)
        n_sweeps, sweeps, n_acc, n_sim, n_req, ran_out = None, 0, 0, 0, 0, False
        while sweeps < (max_sweeps if n_sweeps is None else n_sweeps):
            budget_left = sim.affordable()
            if budget_left <= 0:
                ran_out = True
                break
            prop = kernel.perturb(pop, rng)
            log_u = np.log(rng.random(n))
            # Metropolis-Hastings on the prior first: only its survivors are simulated
            cand = np.flatnonzero(log_u < (np.sum(pop**2, axis=1) - np.sum(prop**2, axis=1)) / (2 * v))
            cand = cand[: int(min(len(cand), budget_left))]  # the rest: rejected moves (still invariant)
            if cand.size:
                try:
                    d = sim.errors(prop[cand])
                except BudgetExhausted:
                    ran_out = True
                    break
                n_req += 1
                n_sim += cand.size
                ok = d <= target
                pop[cand[ok]], dist[cand[ok]] = prop[cand[ok]], d[ok]
                n_acc += int(ok.sum())
            sweeps += 1
            if n_sweeps is None:  # Drovandi & Pettitt: moves so that each particle moves w.p. 1 - MOVE_MISS
                p = n_acc / n
                need = 1 if p >= 1 else max_sweeps if p <= 0 else math.ceil(math.log(MOVE_MISS) / math.log1p(-p))
                n_sweeps = int(min(max(need, 1), max_sweeps))
        new = _Round(pop, np.full(n, 1.0 / n), dist, target, target, sweeps * n, n_acc, n_sim, n_req, ess,
                     True, refresh, stalled=refresh and dist.min() >= cur.eps)
        return new, ran_out
