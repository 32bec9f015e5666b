r"""Likelihood-free prompt posteriors: ABC sequential Monte Carlo (``"abc-smc"``).

ABC-SMC needs only the *labels* a black-box API predicts. It samples prompt
vectors ``z`` from the approximate Bayesian computation (ABC) posterior

.. math::  \pi_\varepsilon(z) \propto \pi(z)\, 1[d(z) \le \varepsilon],
   \qquad \pi = N(0, v I),\quad d(z) = \text{training error rate of } z,

for a decreasing sequence of tolerances ``eps_0 > eps_1 > ...``, carrying a
weighted population of ``n_particles`` prompts from one tolerance to the
next. Two moves are available: resample-move with ABC-MCMC (``move="mcmc"``,
the default; Del Moral et al., 2012; Drovandi & Pettitt, 2011) and population
Monte Carlo with importance weights (``move="pmc"``; Beaumont et al., 2009;
Toni et al., 2009), which resamples and moves like ``"mcmc"`` when its
weights degenerate. The whole weighted population is the result.

The algorithm step by step, how its defaults were chosen and its references:
docs/algorithms.md, "ABC-SMC".
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from .base import BudgetExhausted, Learner, LearnerResult, PosteriorWarning, SelectionSlot, aggregate_outputs
from .cmaes import seeded_generator

__all__ = ["ABCSMCLearner", "effective_sample_size", "population_ess", "weighted_quantile", "systematic_resample"]

#: Options of ``method_params`` for ``method="abc-smc"`` (see :meth:`ABCSMCLearner.from_params`).
METHOD_PARAMS = (
    "n_particles",
    "move",
    "prior_variance",
    "max_rounds",
    "quantile",
    "kernel",
    "kernel_scale",
    "kernel_floor",
    "ess_threshold",
    "n_initial",
    "max_simulations_per_round",
    "batch_size",
)

#: Default population size (docs/algorithms.md, ABC-SMC, "Defaults (measured)").
N_PARTICLES = 16

#: ABC-MCMC: each particle should move at least once with probability 1 - MOVE_MISS (Drovandi & Pettitt
#: ask 0.01; 0.1 is measured: docs/algorithms.md, ABC-SMC, "Defaults (measured)").
MOVE_MISS = 0.1

#: pCN step (in prior standard deviations) of the first move of a run, and the acceptance rate it adapts to.
PCN_INITIAL_STEP = 0.5
PCN_TARGET_ACCEPTANCE = 0.3

#: Below this effective sample size the kept population is reported as degenerate (a PosteriorWarning).
KEPT_ESS_WARNING = 2.0


def effective_sample_size(weights):
    """Kish's effective sample size ``(Σ w)² / Σ w²`` of importance weights."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))


def population_ess(samples, weights):
    """Kish's effective sample size of a population after merging identical
    particles (summing their weights): ``n`` copies of one prompt count as 1,
    which the effective sample size of uniform weights would not see.

    >>> population_ess([[0.0], [0.0], [1.0], [2.0]], [0.25, 0.25, 0.25, 0.25])
    2.6666666666666665
    """
    samples = np.asarray(samples, dtype=np.float64)
    _, inverse = np.unique(samples, axis=0, return_inverse=True)
    return effective_sample_size(np.bincount(np.ravel(inverse), weights=np.asarray(weights, dtype=np.float64)))


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
    """Gaussian random walk ``z' = z + L e``, ``e ~ N(0, I)``, with its log-density
    up to a constant (the same for every pair, so it cancels in the normalised
    weights). scipy has no vectorised many-means Gaussian density, hence the
    whitening by hand: ``log K(x | m) = -|L^{-1}(x - m)|² / 2``. ``floor`` is a
    variance: no coordinate's variance (diag), no eigenvalue (full) below it."""

    prior_reversible = False

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


class _PCNKernel:
    """Preconditioned Crank-Nicolson: ``z' = ρ z + s √v e`` with ``ρ = √(1 - s²)``.

    Reversible with respect to the prior ``N(0, v I)`` (Cotter et al., 2013),
    so a Metropolis-Hastings move with it accepts on the tolerance alone.
    ``step`` is ``s`` in (0, 1]: 1 proposes independent prior draws."""

    prior_reversible = True

    def __init__(self, step, prior_variance):
        self.step = float(step)
        self.rho = math.sqrt(max(1.0 - self.step**2, 0.0))
        self.sd = self.step * math.sqrt(prior_variance)

    def perturb(self, parents, rng):
        return self.rho * parents + self.sd * rng.standard_normal(parents.shape)

    def log_density(self, x, means):
        return -0.5 * cdist(x / self.sd, self.rho * means / self.sd, "sqeuclidean")


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

    def validate(self, Z, w):
        """Per-text errors of the weighted vote of ``Z`` on the validation
        split and each prompt's validation error count, one request."""
        labels = self._labels(self.problem.outputs(Z, "val"))
        vote = aggregate_outputs(labels, w, self.problem.n_classes).argmax(axis=1)
        return (vote != self.y_val).astype(np.float64), (labels != self.y_val[None, :]).sum(axis=1)


@dataclass
class _Moves:
    """What a Metropolis-Hastings move did."""

    sweeps: int = 0
    proposed: int = 0
    accepted: int = 0
    simulations: int = 0
    requests: int = 0
    ran_out: bool = False


@dataclass
class _Round:
    """One round: population, weights, error counts, tolerance (a count). A
    round that could not form a population (``pop is None``) is discarded but
    still accounts for its simulations."""

    pop: np.ndarray | None
    w: np.ndarray | None
    dist: np.ndarray | None
    eps: int
    target: int
    proposed: int  # candidates proposed (pmc) or Metropolis-Hastings steps (mcmc)
    accepted: int
    simulations: int  # every simulation of the round: candidates and moves
    requests: int
    ess: float  # importance weights (pmc) or survivors (mcmc), before any resampling
    resampled: bool = False
    relaxed: bool = False
    stalled: bool = False
    moves: _Moves | None = None
    val_errors: np.ndarray | None = None
    vote_errors: np.ndarray | None = None


class ABCSMCLearner(Learner):
    """ABC sequential Monte Carlo over prompt vectors, from predicted labels only.

    See docs/algorithms.md (ABC-SMC) for the algorithm. The distance is the training
    error rate of the labels a prompt predicts; the result is a weighted
    population of prompts.

    Parameters
    ----------
    n_particles : int, default=16
        Population size (>= 2): the number of prompts returned. The default
        is measured (docs/algorithms.md, "Defaults (measured)"); the estimator passes
        ``max(n_prompts, 16)`` unless ``method_params`` sets it
        (:meth:`from_params`).
    move : {"mcmc", "pmc"}, default="mcmc"
        ``"mcmc"``: resample the particles within the new tolerance and
        move them with ABC Metropolis-Hastings steps (Del Moral et al.;
        Drovandi & Pettitt), uniform weights; ``"pmc"``: perturbed parents
        with importance weights (Beaumont et al.), resampled and moved like
        ``"mcmc"`` when their effective sample size falls below
        ``ess_threshold * n_particles``.
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
    kernel : {"pcn", "diag", "full"}, default="pcn"
        ``"pcn"``: the prior-reversible proposal ``z' = ρ z + s √v e``
        (``ρ = √(1 - s²)``; a move accepts on the tolerance alone; the step
        ``s`` adapts to the acceptance rate). ``"diag"``/``"full"``: a
        Gaussian random walk with the diagonal or full weighted covariance of
        the population (full needs ``n_particles`` well above the dimension
        to be well estimated).
    kernel_scale : float or None, default=None
        ``"diag"``/``"full"``: multiplier of the population covariance.
        ``None``: 2 for the proposals of ``"pmc"`` (Beaumont et al.),
        ``2.38² / dim`` for Metropolis-Hastings moves (Roberts & Rosenthal).
        ``"pcn"``: the step ``s`` of the first move, in (0, 1] (``None``:
        0.5), adapted after each round.
    kernel_floor : float in [0, 1], default=0.1
        Smallest kernel standard deviation per coordinate, as a fraction of
        the prior's ``√v`` (the ``"pcn"`` step ``s`` is floored at it too),
        so that a population that has contracted still moves.
    ess_threshold : float in [0, 1], default=0.5
        ``"pmc"`` only: resample and move the population when its effective
        sample size falls below ``ess_threshold * n_particles`` (0: never;
        1: whenever the weights are not uniform).
    n_initial : int or None, default=None
        Prior draws in round 0 (>= ``n_particles``); ``None`` means
        ``ceil(n_particles / quantile)``.
    max_simulations_per_round : int or None, default=None
        Cap on the candidates simulated in one round (>= ``n_particles``;
        for Metropolis-Hastings moves, on the proposed moves: at most this /
        n_particles sweeps; a ``"pmc"`` round that resamples may spend as
        much again on its moves); ``None`` means ``10 * n_particles``.
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
    >>> bool(res.history[-1, 0] <= res.history[0, 0]), res.info["kept_ess"] > 2, res.warnings
    (True, True, [])
    """

    needs_scores = False

    def __init__(self, n_particles=N_PARTICLES, *, move="mcmc", prior_variance=1.0, max_rounds=10, quantile=0.5,
                 kernel="pcn", kernel_scale=None, kernel_floor=0.1, ess_threshold=0.5, n_initial=None,
                 max_simulations_per_round=None, batch_size=None):
        self.n_particles = n_particles
        self.move = move
        self.prior_variance = prior_variance
        self.max_rounds = max_rounds
        self.quantile = quantile
        self.kernel = kernel
        self.kernel_scale = kernel_scale
        self.kernel_floor = kernel_floor
        self.ess_threshold = ess_threshold
        self.n_initial = n_initial
        self.max_simulations_per_round = max_simulations_per_round
        self.batch_size = batch_size
        self._check_params()

    @classmethod
    def from_params(cls, n_prompts, method_params=None):
        """Build from the estimator's ``n_prompts`` and its ``method_params`` dict.

        The population size is ``method_params["n_particles"]`` when given,
        else ``max(n_prompts, 16)`` (``n_prompts`` is a floor: a population of
        a handful of particles degenerates, docs/algorithms.md). The whole
        weighted population is returned, so the estimator keeps
        ``n_particles`` prompts. Raises a ``ValueError`` naming any unknown key.
        """
        method_params = dict(method_params or {})
        unknown = sorted(set(method_params) - set(METHOD_PARAMS))
        if unknown:
            raise ValueError(
                f"method_params has unknown key(s) {unknown} for method='abc-smc'; "
                f"expected some of {list(METHOD_PARAMS)}."
            )
        if method_params.get("n_particles") is None:
            method_params["n_particles"] = max(int(n_prompts), N_PARTICLES)
        return cls(**method_params)

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
        option("move", self.move, ("mcmc", "pmc"))
        real("prior_variance", self.prior_variance, 0, math.inf, True, True)
        integer("max_rounds", self.max_rounds, 1)
        real("quantile", self.quantile, 0, 1, True)
        option("kernel", self.kernel, ("pcn", "diag", "full"))
        if self.kernel == "pcn":
            real("kernel_scale", self.kernel_scale, 0, 1, True, allow_none=True)
        else:
            real("kernel_scale", self.kernel_scale, 0, math.inf, True, True, allow_none=True)
        real("kernel_floor", self.kernel_floor, 0, 1, False)
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

    def _floor_variance(self):
        return max(float(self.kernel_floor) ** 2, 1e-12) * self.prior_variance

    def _proposal_kernel(self, pop, w, state):
        """The kernel of ``"pmc"`` candidates."""
        if self.kernel == "pcn":
            return _PCNKernel(state["step"], self.prior_variance)
        scale = 2.0 if self.kernel_scale is None else self.kernel_scale
        return _GaussianKernel(pop, w, self.kernel, scale, self._floor_variance())

    def _move_kernel(self, pop, w, state):
        """The kernel of Metropolis-Hastings moves."""
        if self.kernel == "pcn":
            return _PCNKernel(state["step"], self.prior_variance)
        scale = 2.38**2 / pop.shape[1] if self.kernel_scale is None else self.kernel_scale
        return _GaussianKernel(pop, w, self.kernel, scale, self._floor_variance())

    def _adapt(self, state, rate):
        """pCN: scale the step towards the target acceptance rate (kept within [floor, 1])."""
        if self.kernel == "pcn" and np.isfinite(rate):
            step = state["step"] * math.exp(rate - PCN_TARGET_ACCEPTANCE)
            state["step"] = float(min(max(step, self.kernel_floor, 1e-6), 1.0))

    def minimum_budget(self, problem):
        """Queries of the smallest round 0: ``n_particles`` prior draws on the
        training split, plus their validation."""
        val = self.n_particles * problem.n_texts("val") if problem.has_split("val") else 0
        return self.n_particles * problem.n_texts("train") + val

    # ---------------------------------------------------------------- fit
    def fit(self, problem, random_state):
        """Run ABC-SMC on ``problem``; see docs/algorithms.md, "ABC-SMC".

        Returns
        -------
        LearnerResult
            ``samples``/``weights``: the kept population and its normalised
            weights; ``history``: the smallest training error in each round's
            population, shape ``(n_rounds, 1)``; ``info``: per completed round
            ``tolerance``, ``target_tolerance``, ``acceptance_rate``
            (accepted / proposed candidates or moves), ``ess`` (of the
            importance weights, or of the survivors for ``"mcmc"``, before
            resampling), ``population_ess`` (of the population the round
            hands on, identical particles merged: :func:`population_ess`),
            ``move_acceptance_rate`` (of its Metropolis-Hastings moves; NaN
            without), ``step`` (the ``"pcn"`` step ``s`` the round started
            with; NaN for round 0 and the other kernels), ``val_accuracy`` (NaN without
            validation split), ``simulations`` (candidates and moves),
            ``requests`` (training requests), ``resampled`` (resampled and
            moved), ``relaxed``; and ``kept_round``, ``kept_ess`` (the
            kept population's ``population_ess``), ``stop_reason``
            (``"max_rounds"``, ``"budget"``, ``"converged"``, ``"stalled"``),
            ``discarded_simulations`` (of a last round that could not form a
            population), ``n_simulations`` (all of them: ``n_simulations *
            n_train`` plus ``n_particles * n_val`` per completed round are
            the queries of the fit), ``train_errors`` and ``val_errors``
            (error rates of the kept particles; ``val_errors`` is None
            without validation split). ``warnings``: a
            :class:`~skprompt.inference.base.PosteriorWarning` when
            ``kept_ess`` is below 2.
        """
        self._check_params()
        rng = seeded_generator(random_state)
        n = int(self.n_particles)
        sim = _Simulator(problem, n)
        keys = ("tolerance", "target_tolerance", "acceptance_rate", "ess", "population_ess", "move_acceptance_rate",
                "step", "val_accuracy", "simulations", "requests", "resampled", "relaxed")
        log = {k: [] for k in keys}
        rounds = []
        first = PCN_INITIAL_STEP if self.kernel_scale is None else float(self.kernel_scale)
        state = {"step": max(first, float(self.kernel_floor))}

        def close(r, step):
            """Validate, record and report a completed round."""
            val = np.nan
            if sim.use_val:
                try:
                    r.vote_errors, r.val_errors = sim.validate(r.pop, r.w)
                    val = 1.0 - float(r.vote_errors.mean())
                except BudgetExhausted:  # not expected: validation queries are reserved
                    pass
            rounds.append(r)
            mv = r.moves
            entry = (r.eps / sim.n_train, r.target / sim.n_train, r.accepted / max(r.proposed, 1), r.ess,
                     population_ess(r.pop, r.w), mv.accepted / max(mv.proposed, 1) if mv else np.nan, step,
                     float(val), r.simulations, r.requests, r.resampled, r.relaxed)
            for key, value in zip(keys, entry):
                log[key].append(value)
            problem.report(round=len(rounds) - 1, tolerance=r.eps / sim.n_train,
                           acceptance_rate=log["acceptance_rate"][-1], ess=log["population_ess"][-1],
                           val_accuracy=float(val), simulations=r.simulations,
                           best_train_error=float(r.dist.min() / sim.n_train))

        m0 = min(self._n_initial, sim.affordable())
        if m0 < n:
            raise BudgetExhausted(
                f"ABC-SMC needs {self.minimum_budget(problem)} queries for its first round "
                f"({n} particles on {sim.n_train} training texts); {problem.remaining} left."
            )
        exhausted = m0 < self._n_initial
        stop_reason = "budget" if exhausted else "max_rounds"
        current = self._round_zero(sim, rng, int(m0))
        close(current, np.nan)
        discarded = 0
        step_fn = self._pmc_round if self.move == "pmc" else self._mcmc_round
        while len(rounds) < self.max_rounds:
            if current.eps == 0:
                stop_reason = "converged"
                break
            if sim.affordable() < n:
                exhausted, stop_reason = True, "budget"
                break
            step = state["step"] if self.kernel == "pcn" else np.nan
            new, ran_out = step_fn(sim, rng, current, len(rounds), state)
            exhausted = exhausted or ran_out
            if new.pop is None:  # the round could not form a population: keep the previous one
                discarded = new.simulations
                stop_reason = "budget" if ran_out else "stalled"
                break
            close(new, step)
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
        kept_ess = float(log["population_ess"][kept])
        info.update(kept_round=kept, kept_ess=kept_ess, stop_reason=stop_reason,
                    discarded_simulations=int(discarded),
                    n_simulations=int(np.sum(log["simulations"]) + discarded),
                    train_errors=best.dist / sim.n_train,
                    val_errors=None if best.val_errors is None else best.val_errors / problem.n_texts("val"))
        advice = []
        if kept_ess < KEPT_ESS_WARNING:
            advice.append((PosteriorWarning, (
                f"method='abc-smc' kept a population of {n} prompts whose effective sample size is "
                f"{kept_ess:.2f} (round {kept}, tolerance {log['tolerance'][kept]:.3f}): the posterior is "
                "effectively a single prompt. Try move='mcmc' with kernel='pcn' (the defaults), more particles "
                "(method_params n_particles), a larger budget, or kernel_floor > 0."
            )))
        validated = [i for i, r in enumerate(rounds) if r.vote_errors is not None]
        selection = None
        if sim.use_val and validated:  # the kept round, chosen by its population's vote (ties: the later)
            selection = [SelectionSlot([(rounds[i].pop, rounds[i].w) for i in validated],
                                       np.stack([rounds[i].vote_errors for i in validated]),
                                       -np.asarray(validated, dtype=np.float64))]
        return LearnerResult(best.pop, best.w, history, len(rounds), exhausted, info, advice, selection)

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

    def _move(self, sim, rng, pop, dist, target, kernel, max_sweeps, state):
        """Metropolis-Hastings sweeps over the population that leave the ABC
        posterior at ``target`` invariant; modifies ``pop``/``dist`` in place.

        A random-walk proposal is first tested on the prior ratio, so only its
        survivors are simulated; a pCN proposal is prior-reversible and is
        simulated directly (its step adapts after each sweep). One request per
        sweep. Sweeps go on until each particle has moved at least once with
        probability ``1 - MOVE_MISS`` at the acceptance rate observed so far,
        within ``max_sweeps``."""
        n, v = len(pop), self.prior_variance
        mv = _Moves()
        while mv.sweeps < max_sweeps:
            budget_left = sim.affordable()
            if budget_left <= 0:
                mv.ran_out = True
                break
            prop = kernel.perturb(pop, rng)
            if kernel.prior_reversible:
                cand = np.arange(n)
            else:  # Metropolis-Hastings on the prior first: only its survivors are simulated
                log_u = np.log(rng.random(n))
                cand = np.flatnonzero(log_u < (np.sum(pop**2, axis=1) - np.sum(prop**2, axis=1)) / (2 * v))
            cand = cand[: int(min(len(cand), budget_left))]  # the rest: rejected moves (still invariant)
            accepted = 0
            if cand.size:
                try:
                    d = sim.errors(prop[cand])
                except BudgetExhausted:
                    mv.ran_out = True
                    break
                mv.requests += 1
                mv.simulations += cand.size
                ok = d <= target
                pop[cand[ok]], dist[cand[ok]] = prop[cand[ok]], d[ok]
                accepted = int(ok.sum())
            mv.accepted += accepted
            mv.sweeps += 1
            mv.proposed += n
            if kernel.prior_reversible:
                self._adapt(state, accepted / n)
                kernel = _PCNKernel(state["step"], v)
            # Drovandi & Pettitt: enough sweeps for each particle to move w.p. 1 - MOVE_MISS
            p = mv.accepted / mv.proposed
            if p >= 1 or (p > 0 and mv.sweeps >= math.log(MOVE_MISS) / math.log1p(-p)):
                break
        return mv

    def _pmc_round(self, sim, rng, cur, t, state):
        """Population Monte Carlo, then resample-move if the weights degenerate:
        returns (round, budget ran out); the round's ``pop`` is None if it was discarded."""
        n, cap = self.n_particles, self._round_cap
        target = self._target(cur)
        kernel = self._proposal_kernel(cur.pop, cur.w, state)
        parents, parent_w = cur.pop, cur.w
        # the first batch assumes the previous round's acceptance rate (round 1: the quantile)
        prior_rate = self.quantile if t == 1 else max(cur.accepted / max(cur.proposed, 1), 1.0 / cap)
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
        if self.kernel == "pcn":
            self._adapt(state, n_acc / max(n_sim, 1))
        relaxed = n_acc < n
        if not relaxed:  # the first n within the target, in proposal order
            eps = target
            keep = np.flatnonzero(d <= target)[:n]
        elif n_sim >= n and int(np.sort(d)[n - 1]) <= cur.eps:
            eps = int(np.sort(d)[n - 1])
            keep = np.sort(rng.choice(np.flatnonzero(d <= eps), n, replace=False))
        else:  # not even n candidates within the current tolerance: discarded, its simulations counted
            return _Round(None, None, None, cur.eps, target, n_sim, n_acc, n_sim, len(Zs), np.nan), ran_out
        # importance weights: prior / density of the proposal mixture (constants cancel)
        Zk, dk = Z[keep], d[keep]
        with np.errstate(divide="ignore"):
            log_parent_w = np.log(parent_w)
        log_w = -0.5 * np.sum(Zk**2, axis=1) / self.prior_variance - logsumexp(
            kernel.log_density(Zk, parents) + log_parent_w[None, :], axis=1
        )
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        ess = effective_sample_size(w)
        new = _Round(Zk, w, dk, eps, target, n_sim, n_acc, n_sim, len(Zs), ess, relaxed=relaxed,
                     stalled=eps >= cur.eps)
        if ess < self.ess_threshold * n and not ran_out and sim.affordable() > 0:
            # rejuvenate: resample, then Metropolis-Hastings moves at the round's tolerance
            idx = systematic_resample(w, rng)
            pop, dist = Zk[idx].copy(), dk[idx].copy()
            uniform = np.full(n, 1.0 / n)
            mv = self._move(sim, rng, pop, dist, eps, self._move_kernel(pop, uniform, state), max(cap // n, 1),
                            state)
            new.pop, new.w, new.dist, new.resampled, new.moves = pop, uniform, dist, True, mv
            new.simulations += mv.simulations
            new.requests += mv.requests
            ran_out = ran_out or mv.ran_out
        return new, ran_out

    def _mcmc_round(self, sim, rng, cur, t, state):
        """Resample-move with ABC Metropolis-Hastings: returns (round, budget ran out)."""
        n = self.n_particles
        target = self._target(cur)
        alive = cur.dist <= target
        refresh = not alive.any()
        if refresh:  # every particle at cur.eps: move at cur.eps, try to find lower ones
            target, alive = cur.eps, np.ones(n, dtype=bool)
        w_alive = cur.w * alive
        ess = effective_sample_size(w_alive)
        # the kernel from the survivors, or from the whole population if they have no spread
        spread = len(np.unique(cur.pop[alive], axis=0)) >= 2
        kernel = self._move_kernel(cur.pop, w_alive if spread else cur.w, state)
        idx = systematic_resample(w_alive, rng)
        pop, dist = cur.pop[idx].copy(), cur.dist[idx].copy()
        mv = self._move(sim, rng, pop, dist, target, kernel, max(self._round_cap // n, 1), state)
        new = _Round(pop, np.full(n, 1.0 / n), dist, target, target, mv.proposed, mv.accepted, mv.simulations,
                     mv.requests, ess, True, refresh, stalled=refresh and dist.min() >= cur.eps, moves=mv)
        return new, mv.ran_out
