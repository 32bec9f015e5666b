"""Gradient-free variational inference over prompts (``method="vi"``).

The learner fits a diagonal Gaussian ``q(z) = N(mu, diag(exp(log_var)))`` over
the search space by minimising a Monte Carlo negative ELBO with CMA-ES, the
search that needs no gradient (Shen et al., "Reliable Gradient-free and
Likelihood-free Prompt Tuning", EACL 2023 Findings).

Algorithm
---------
CMA-ES searches the vector ``x = [mu, log_var]`` of length ``2 * dim``,
starting at ``mu = 0``, ``log_var = init_log_var``, with initial step
``sigma0`` for the means and :data:`LOG_VAR_STEP` (1.5) for the
log-variances (see "Step sizes" below). The candidate ``x`` is scored by

    L(q) = N * mean_s loss(z_s) + kl_weight * KL(q || N(0, prior_variance * I)),
    z_s = mu + exp(log_var / 2) * eps_s,   s = 1 .. n_mc,

with ``N`` the number of training texts and ``loss`` the estimator's training
loss (the mean per text, so that ``N * loss`` is the negative log-likelihood
for ``"ce"``; other losses give a generalised, Gibbs posterior). The minimiser
of ``E_q[N * loss] + kl_weight * KL`` over all distributions is the tempered
posterior ``p(z) * exp(-N * loss(z) / kl_weight)``; ``kl_weight = 1`` is
Bayes' rule, a smaller value sharpens it towards the best prompt.

* **log-variance**, so every candidate has a positive variance; it is bounded
  (by cma's ``BoundTransform``) to ``[log(min_variance), log(prior_variance)]``:
  the lower bound keeps q from collapsing to a point (``min_variance = 1e-4``,
  a standard deviation of 1% of the prior's at ``sigma0 = 1``), the upper bound
  keeps q no wider than the prior, which only adds KL and noise.
* **Common random numbers.** Each generation draws one ``eps`` of shape
  ``(n_mc, dim)`` and every candidate of that generation uses it, so the
  ranking CMA-ES sees compares the candidates on the same noise; ``eps`` is
  fresh at the next generation, so the search does not fit one draw.
* **One request per generation.** The ``popsize * n_mc`` draws of a
  generation are scored in a single ``problem.loss`` call.
* **The KL** between diagonal Gaussians is in closed form
  (:func:`gaussian_kl`), so only the likelihood term is estimated.

Step sizes
----------
The two halves of ``x`` live on different scales: the means on the scale of
``sigma0`` (the prior's standard deviation with the defaults), the
log-variances on the scale of 1 (``log_var`` must travel ``log(prior /
optimal variance)``, a few units, whatever ``sigma0`` is). CMA-ES is
therefore started with per-coordinate steps (cma's ``CMA_stds``, multipliers
of ``sigma0``): ``1`` for the means and ``LOG_VAR_STEP / sigma0`` for the
log-variances, so their initial step is ``LOG_VAR_STEP`` itself. With a
single step ``sigma0 = 0.1`` for both, as before, q's variance barely moved
from the prior in 50 dimensions (the table's "0.1" column). cma also caps a
bounded coordinate's standard deviation at a third of its range (option
``maxstd_boundrange``), ``log(100) / 3 = 1.54`` with the default bounds, so
a larger step would act as 1.54 there (steps 2, 3 and 5 gave identical
runs); candidates stay within the
log-variance bounds (its ``BoundTransform`` maps every candidate into them).

The step was chosen on the quadratic problem of ``tests/test_vi.py`` at the
estimator's defaults (``dim=50``, ``popsize=8``, ``sigma0=0.1``,
``prior_variance=0.01``, ``kl_weight=0.1``, ``n_mc=2``, training split only,
optimal means 2.1 posterior sd from 0), with the optimal variance 1.5 to 50
times below the prior's. The figure is q's median variance over the 50
coordinates divided by the optimal variance, geometric mean over seeds 0-7;
the columns are the log-variances' initial step (0.1: the old single step
``sigma0``):

=======================  ====  =====  =====  =====  =====  =====
optimal variance         gens  0.1    0.75   1.0    1.25   1.5
=======================  ====  =====  =====  =====  =====  =====
6.7e-3 (prior / 1.5)     15    1.46   0.73   0.56   0.36   0.37
\\                        50    1.43   0.57   0.42   0.38   0.28
3.0e-3 (prior / 3.3)     15    3.24   1.41   1.11   0.77   0.60
\\                        50    3.18   0.89   0.71   0.53   0.40
1.0e-3 (prior / 10)      15    9.75   3.95   2.83   1.63   1.56
\\                        50    9.48   2.12   1.31   1.07   0.93
2.0e-4 (prior / 50)      15    48.7   20.0   15.3   9.9    6.7
\\                        50    47.1   10.1   5.7    4.3    3.5
=======================  ====  =====  =====  =====  =====  =====

Over the eight rows the typical error (``exp`` of the mean ``|log ratio|``)
is a factor 6.8 for the old step 0.1, 3.0 for 0.75, 2.6 for 1.0
and 2.5 for both 1.25 and 1.5. Of those two, 1.5 is the one that brings
q within a factor 2 of the optimum in the estimator's default 15
generations when the optimum is 10 times below the prior (17 of 20 seeds,
against 13 of 20 for 1.25 and none of 8 for 1.0). Its cost is in the first
rows: when the optimum is within a factor 3 of the prior, q ends 2-3 times
too narrow. The log-variances steer the objective only weakly (its
curvature in each ``log_var`` at the optimum is ``kl_weight / 2``, whatever
the data), so CMA-ES's mean wanders in them, and more on the flat side of
the valley (linear below the optimum, exponential above); larger steps
wander more. More draws per candidate (``n_mc = 8``) did not remove it, so
it is the search's noise, not the Monte Carlo estimate's. In 15
generations the means do not move closer to their optimum at any of these
steps (2.4 posterior sd off, from 2.1 at the start): at ``dim = 50`` the
estimator's default budget learns the variances, not the means.

Which q is kept (selection)
---------------------------
After every generation the CMA-ES distribution mean -- its current estimate of
the optimum, built from the ranks of a whole population and so less noisy
than any one candidate's Monte Carlo score -- is taken as "the current q". With
a validation split, that q is scored by the log loss of its *predictive*
distribution on the validation texts: the average of the class probabilities
of ``n_val_draws`` draws ``mu + s * eps_val``, with one ``eps_val`` fixed for
the whole run (common random numbers again). The kept q takes its **means**
from the generation with the lowest validation log loss (as the paper selects
its q by validation loss: this guards against means over-fitted to the
training texts) and its **variances** from the last generation's q, the
training objective's current optimum. Validation does not judge the
variances: its differences between generations come from where the means
wandered, so keeping the whole best-validated q often kept an early, wide one
(on the quadratic toy of ``tests/test_vi.py`` at the estimator's defaults,
seeds 0-19: median variance 2.85 times the optimum, geometric mean, against
1.51 with the last generation's variances, which also validated and tested
better).

The validation draws are new prompts: with a read-out fitted per candidate
(``problem.fits_readout``, the estimator's ``calibration``) they cost their
training queries too, so a generation costs ``popsize * n_mc * N +
n_val_draws * (n_val + N)`` queries (``n_val_draws * n_val`` without a
read-out), and ``VariationalLearner.minimum_budget`` adds the training
queries of the ``n_samples`` kept draws' read-outs.

Without a validation split the final CMA-ES mean is kept. Keeping the
candidate with the lowest Monte Carlo ELBO instead would keep the luckiest
noise draw: on the quadratic problem of ``tests/test_vi.py`` (known optimal
q; 20 seeds, ``n_mc=10``, ``popsize=10``, 50 or 100 generations) it put the
variances up to a factor 5.5 and the means up to 1.1 posterior standard
deviations off, against a factor 1.8 and 0.6 for the final mean.

``n_samples`` prompts drawn from the kept q form ``samples_``, weighted
uniformly.

Defaults
--------
The real-model measurements below predate the per-coordinate steps: they ran
with the log-variances' step at ``sigma0 = 0.1``, where q's variance stayed
near the prior, and have not been repeated since.

``n_mc = 2`` draws per candidate (the paper used 10), ``kl_weight = 0.1``
(the paper used 1e-3) and ``prior_variance = sigma0**2`` (0.01 with the
estimator's default ``sigma0=0.1``; the paper used 50) were chosen by
measurement. The estimator's random projection maps ``z ~ N(0, I)`` to
prompt perturbations with the spread of the model's own input embeddings, so
this prior is "perturbations of ``sigma0`` times the embedding spread", the
same scale CMA-ES starts searching at, and the initial q
(``init_log_var = 2 log sigma0``) is the prior itself.

On the real model (SmolLM2-135M-Instruct, Rotten Tomatoes, 16 examples per
class, 300 test texts, ``budget=3000``; seeds 0, 1, 2; zero-shot accuracy
.770 / .787 / .747):

==============================  ======  ======  ======  =====
(n_mc, kl_weight)               seed 0  seed 1  seed 2  mean
==============================  ======  ======  ======  =====
(10, 1), the previous default   .750    .803    .743    .765
(4, 1)                          .773    .800    .743    .772
(4, 0.1)                        .783    .800    .743    .775
(2, 0.1), the default           .793    .807    .743    .781
==============================  ======  ======  ======  =====

Common random numbers make two draws per candidate enough to rank a
generation, and fewer draws buy more generations from the same budget; the
milder tempering (``kl_weight = 0.1``) lets q move away from the prior that
24 training texts cannot overcome in 50 dimensions at ``kl_weight = 1``.
Earlier, on a synthetic task (below), ``(kl_weight, prior_variance)`` =
``(1, 1)`` and ``(0.1, 0.3)`` (in units of ``sigma0**2`` there: ``sigma0=1``)
were within noise of each other and the paper's ``(1e-3, 50)`` was worst.
The measurement: a synthetic, misspecified task whose class score
is ``3 * x_i . tanh(C z)`` (``C`` a random ``5 x dim`` map, ``x_i`` a text's
features, labels from a noisy linear rule), 24 training, 8 validation and
2,000 test texts, ``popsize=10``, ``n_mc=10``, 5 prompts drawn from q, 20
seeds per cell, paired differences in test log loss against
``(kl_weight=1, prior_variance=1)``:

==================  ==============  ==============  ==============  ==============
(kl_weight, v)      dim 20, 20 it   dim 50, 20 it   dim 20, 50 it   dim 10, 50 it
==================  ==============  ==============  ==============  ==============
(1, 1)              0.470           0.558           0.472           0.494
(1e-3, 50) paper    +0.153 ± 0.048  +0.159 ± 0.041  +0.128 ± 0.044  -0.013 ± 0.023
(0.1, 0.3)          +0.007 ± 0.013  +0.017 ± 0.037  -0.002 ± 0.016  -0.053 ± 0.018
(0.1, 1)            +0.047 ± 0.028  +0.030 ± 0.028  +0.055 ± 0.033  -0.005 ± 0.026
(1, 0.3)            +0.026 ± 0.022  +0.032 ± 0.043  +0.037 ± 0.027  -0.051 ± 0.025
(3, 1)              +0.032 ± 0.015  +0.077 ± 0.033  +0.029 ± 0.019  +0.025 ± 0.022
==================  ==============  ==============  ==============  ==============

``(1, 1)`` is within noise of the best in three settings; at dim 10 with
50 generations the narrower prior 0.3 did better by 0.05. It has the lowest
ECE (10 bins) of these VI settings in three of the four (0.046, 0.082, 0.047;
the paper's setting: 0.097, 0.124, 0.094; ``(0.1, 0.3)``: 0.072, 0.100,
0.068). ``prior_variance = 50`` was the worst prior at every ``kl_weight``
of the full grid (``kl_weight`` in {1e-3, 0.1, 1, 3} x ``v`` in {0.3, 1, 3,
50}) at dim 20 with 20 generations. With ``kl_weight = 1e-3`` the
tempered posterior is so cold that q shrinks towards a point (the
``min_variance`` floor) and the method becomes a noisy single-prompt search.
On the same task a 5-member CMA-ES ensemble with the same generations (half
of VI's training queries) matched or beat VI in log loss
(-0.017 ± 0.025 to -0.073 ± 0.030); this is a proxy task, not a language
model.

Selecting by the CMA-ES mean rather than each generation's best candidate
was also measured there (at ``(1, 1)``; dim 20 with 20 generations, dim 10
with 50): the best candidate gave +0.020 ± 0.016 and +0.016 ± 0.023 test
log loss.

Differences from the paper's public code (``maohaos2/SBI_LLM``,
``algorithm.CMA_ELBO``): it searches the variance itself (starting at 1) and
uses its absolute value, so a variance can reach 0; it draws independent noise
for every candidate; it scores every candidate's 10 draws on the validation
split and keeps the candidate with the lowest validation loss; and it counts
generations, not queries. Here the log-variance is bounded, the noise is
shared within a generation (and fixed for validation), one q per generation
-- the CMA-ES mean -- is validated, a query budget is honoured, and every
draw comes from generators seeded by ``random_state``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from sklearn.utils import check_random_state

from .base import (
    BudgetExhausted,
    Learner,
    LearnerResult,
    aggregate_outputs,
    predictive_log_loss,
    request_cost,
)
from .cmaes import make_cma, seeded_generator

__all__ = ["VariationalLearner", "DEFAULT_PARAMS", "check_method_params", "gaussian_kl"]

#: Initial CMA-ES step of the log-variances, in log units, whatever ``sigma0``
#: (the means' step); chosen on the quadratic toy (module docs, "Step sizes").
LOG_VAR_STEP = 1.5

#: Method-specific options of ``method="vi"`` (``method_params``) and their defaults.
#:
#: ``n_mc`` : int >= 1
#:     Draws from each candidate q per Monte Carlo ELBO estimate.
#: ``kl_weight`` : float > 0
#:     Weight lambda of the KL term (1 = Bayes' rule; the paper used 1e-3).
#: ``prior_variance`` : float > 0 or None
#:     Variance of the isotropic Gaussian prior; ``None`` means ``sigma0**2``
#:     (the paper used 50).
#: ``init_log_var`` : float or None
#:     Initial log-variance of q; ``None`` means ``2 * log(sigma0)``, so that
#:     the initial q is CMA-ES's own initial search distribution (and, with
#:     the default prior, the prior).
#: ``min_variance`` : float > 0
#:     Lower bound of the variance of q (per dimension); must be below the
#:     prior variance.
#: ``n_val_draws`` : int >= 1 or None
#:     Draws from q whose averaged probabilities are scored on the validation
#:     split; ``None`` means ``n_mc``.
DEFAULT_PARAMS = {
    "n_mc": 2,
    "kl_weight": 0.1,
    "prior_variance": None,
    "init_log_var": None,
    "min_variance": 1e-4,
    "n_val_draws": None,
}


def _check_number(name, value, kind, low=None, low_inclusive=True, allow_none=False):
    if value is None and allow_none:
        return None
    if kind == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        expected = "an int"
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    if not ok:
        raise ValueError(
            f"method_params[{name!r}] must be {expected}{' or None' if allow_none else ''}; got {value!r}."
        )
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(
            f"method_params[{name!r}] must be {'>=' if low_inclusive else '>'} {low}; got {value!r}."
        )
    return int(value) if kind == "int" else float(value)


def check_method_params(method_params):
    """Validate ``method_params`` for ``method="vi"`` and fill in the defaults.

    Parameters
    ----------
    method_params : dict or None
        Keys among :data:`DEFAULT_PARAMS`.

    Returns
    -------
    dict
        Every key of :data:`DEFAULT_PARAMS`, validated.

    Raises
    ------
    ValueError
        On an unknown key or a value of the wrong type or range.

    Examples
    --------
    >>> check_method_params({"kl_weight": 0.1})["kl_weight"]
    0.1
    >>> check_method_params({"n_mcs": 5})
    Traceback (most recent call last):
    ...
    ValueError: method_params has unknown key(s) ['n_mcs'] for method='vi'; expected keys among ['init_log_var', 'kl_weight', 'min_variance', 'n_mc', 'n_val_draws', 'prior_variance'].
    """
    if method_params is None:
        method_params = {}
    if not isinstance(method_params, dict):
        raise ValueError(f"method_params must be a dict or None; got {type(method_params).__name__}.")
    unknown = sorted(set(method_params) - set(DEFAULT_PARAMS), key=str)
    if unknown:
        raise ValueError(
            f"method_params has unknown key(s) {unknown} for method='vi'; "
            f"expected keys among {sorted(DEFAULT_PARAMS)}."
        )
    p = {**DEFAULT_PARAMS, **method_params}
    out = {
        "n_mc": _check_number("n_mc", p["n_mc"], "int", low=1),
        "kl_weight": _check_number("kl_weight", p["kl_weight"], "real", low=0, low_inclusive=False),
        "prior_variance": _check_number("prior_variance", p["prior_variance"], "real", low=0,
                                        low_inclusive=False, allow_none=True),
        "init_log_var": _check_number("init_log_var", p["init_log_var"], "real", allow_none=True),
        "min_variance": _check_number("min_variance", p["min_variance"], "real", low=0, low_inclusive=False),
        "n_val_draws": _check_number("n_val_draws", p["n_val_draws"], "int", low=1, allow_none=True),
    }
    if out["prior_variance"] is not None and out["min_variance"] >= out["prior_variance"]:
        raise ValueError(
            f"method_params['min_variance'] must be below prior_variance={out['prior_variance']!r}; "
            f"got {out['min_variance']!r}."
        )
    return out


def gaussian_kl(mu, var, prior_variance):
    """KL(N(mu, diag(var)) || N(0, prior_variance * I)), in closed form.

    ``0.5 * sum_i (var_i / v + mu_i**2 / v - 1 - log(var_i / v))`` with
    ``v = prior_variance``.

    Parameters
    ----------
    mu, var : array-like of shape (..., dim)
        Means and variances of diagonal Gaussians.
    prior_variance : float

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> float(gaussian_kl([0.0, 0.0], [2.0, 2.0], 2.0))
    0.0
    """
    mu = np.asarray(mu, dtype=np.float64)
    ratio = np.asarray(var, dtype=np.float64) / prior_variance
    return 0.5 * np.sum(ratio + mu**2 / prior_variance - 1.0 - np.log(ratio), axis=-1)


class VariationalLearner(Learner):
    """Gradient-free variational inference: CMA-ES over a diagonal Gaussian q(z).

    See the module documentation for the algorithm and the selection rule.

    Parameters
    ----------
    n_samples : int
        Prompts drawn from the kept q (the estimator's ``n_prompts``).
    popsize : int
        CMA-ES population size (candidate q per generation).
    max_iter : int
        CMA-ES generations.
    sigma0 : float
        Initial CMA-ES step size of the means. The log-variances start with
        the step :data:`LOG_VAR_STEP` (1.5) instead, whatever ``sigma0``
        (cma's ``CMA_stds = [1] * dim + [LOG_VAR_STEP / sigma0] * dim``;
        module docs, "Step sizes").
    n_mc, kl_weight, prior_variance, init_log_var, min_variance, n_val_draws
        See :data:`DEFAULT_PARAMS`.

    Examples
    --------
    A one-dimensional problem whose ``N * loss`` is ``(z - 1)**2 / 2``; with
    ``kl_weight=1`` and ``prior_variance=1`` the optimal q is ``N(0.5, 0.5)``:

    >>> import numpy as np
    >>> class Quadratic:
    ...     dim, labels_only, n_classes, loss_name, remaining = 1, False, 2, "ce", np.inf
    ...     def has_split(self, split): return split == "train"
    ...     def n_texts(self, split): return 10
    ...     def loss(self, Z, split): return 0.5 * (Z[:, 0] - 1.0) ** 2 / 10
    ...     def report(self, **info): pass
    >>> learner = VariationalLearner(n_samples=3, popsize=8, max_iter=60, sigma0=1.0, n_mc=20,
    ...                              kl_weight=1.0, prior_variance=1.0)
    >>> result = learner.fit(Quadratic(), random_state=0)
    >>> result.samples.shape
    (3, 1)
    >>> bool(abs(result.info["mean"][0] - 0.5) < 0.15)
    True
    """

    needs_scores = True

    def __init__(self, n_samples, popsize, max_iter, sigma0, *, n_mc=DEFAULT_PARAMS["n_mc"],
                 kl_weight=DEFAULT_PARAMS["kl_weight"], prior_variance=DEFAULT_PARAMS["prior_variance"],
                 init_log_var=DEFAULT_PARAMS["init_log_var"], min_variance=DEFAULT_PARAMS["min_variance"],
                 n_val_draws=DEFAULT_PARAMS["n_val_draws"]):
        self.n_samples = n_samples
        self.popsize = popsize
        self.max_iter = max_iter
        self.sigma0 = sigma0
        self.n_mc = n_mc
        self.kl_weight = kl_weight
        self.prior_variance = prior_variance
        self.init_log_var = init_log_var
        self.min_variance = min_variance
        self.n_val_draws = n_val_draws

    @classmethod
    def from_params(cls, n_samples, popsize, max_iter, sigma0, method_params=None):
        """Build from the estimator's parameters and its ``method_params`` dict.

        ``method_params`` is validated by :func:`check_method_params`, and
        ``min_variance`` against the resolved prior variance, so that bad
        options fail before any query.
        """
        learner = cls(n_samples, popsize, max_iter, sigma0, **check_method_params(method_params))
        learner._check_variances()
        return learner

    # ------------------------------------------------------------------ cost
    @property
    def _n_val_draws(self):
        return self.n_mc if self.n_val_draws is None else int(self.n_val_draws)

    def _iteration_cost(self, problem):
        """Queries of one generation: ``popsize * n_mc`` draws on the training
        texts and ``n_val_draws`` new draws on the validation texts (plus, with
        a read-out per candidate, their training texts)."""
        cost = request_cost(problem, self.popsize * self.n_mc, "train")
        if problem.has_split("val"):
            cost += request_cost(problem, self._n_val_draws, "val", fresh=True)
        return cost

    def _readout_cost(self, problem):
        """Training queries of the ``n_samples`` kept draws' read-outs: new
        prompts, read out after the fit where the problem fits read-outs."""
        if not getattr(problem, "fits_readout", False):
            return 0
        return request_cost(problem, self.n_samples, "train")

    def minimum_budget(self, problem):
        """Queries of a fit with one generation: ``_iteration_cost`` plus,
        where the problem fits a read-out per candidate
        (``problem.fits_readout``), the training queries of the
        ``n_samples`` kept draws' read-outs."""
        return self._iteration_cost(problem) + self._readout_cost(problem)

    # ------------------------------------------------------------------- fit
    @property
    def _prior_variance(self):
        return float(self.sigma0) ** 2 if self.prior_variance is None else float(self.prior_variance)

    def _check_variances(self):
        if self.min_variance >= self._prior_variance:
            raise ValueError(
                f"min_variance={self.min_variance!r} must be below the prior variance "
                f"{self._prior_variance!r} (prior_variance={self.prior_variance!r}, sigma0={self.sigma0!r})."
            )

    def fit(self, problem, random_state):
        """Fit q on ``problem``; return ``n_samples`` draws from the kept q.

        Returns
        -------
        LearnerResult
            ``history`` holds the lowest Monte Carlo negative ELBO among each
            generation's candidates (shape ``(n_iter, 1)``); ``info`` holds the
            kept q (``"mean"``, from the generation ``"generation"``, 0-based,
            -1 for the initial q, and ``"variance"``, from the last
            generation's q, ``exp`` of its log-variances), the negative ELBO terms of each
            generation's best candidate (``"elbo"``, ``"nll"``, ``"kl"``),
            the validation log loss of each generation's q
            (``"val_log_loss"``, empty without a validation split) and
            ``"selection"`` (``"val_log_loss"`` or ``"final_mean"``).
        """
        self._check_variances()
        prior_variance = self._prior_variance
        rs = check_random_state(random_state)
        cma_rng, noise_rng, sample_rng = (seeded_generator(rs) for _ in range(3))
        dim = problem.dim
        n_train = problem.n_texts("train")
        lo, hi = math.log(self.min_variance), math.log(prior_variance)
        init = 2.0 * math.log(self.sigma0) if self.init_log_var is None else float(self.init_log_var)
        # cma's BoundTransform needs x0 strictly inside the bounds
        margin = 1e-3 * (hi - lo)
        init = min(max(init, lo + margin), hi - margin)
        x0 = np.concatenate([np.zeros(dim), np.full(dim, init)])
        bounds = [[-np.inf] * dim + [lo] * dim, [np.inf] * dim + [hi] * dim]
        # cma's step of coordinate i is sigma0 * CMA_stds[i]: sigma0 for the
        # means, LOG_VAR_STEP for the log-variances (see the module docs).
        stds = np.concatenate([np.ones(dim), np.full(dim, LOG_VAR_STEP / self.sigma0)])
        es = make_cma(x0, self.sigma0, self.popsize, self.max_iter, cma_rng, bounds=bounds, CMA_stds=stds)

        use_val = problem.has_split("val")
        n_val_draws = self._n_val_draws
        # One validation noise for the whole run: successive q are compared on the same draws.
        eps_val = noise_rng.standard_normal((n_val_draws, dim)) if use_val else None
        y_val = np.asarray(problem.y("val")) if use_val else None

        def split_x(x):
            x = np.asarray(x, dtype=np.float64)
            return x[..., :dim], np.clip(x[..., dim:], lo, hi)

        def val_log_loss(mu, log_var):
            Z = mu + np.exp(0.5 * log_var) * eps_val
            proba = aggregate_outputs(problem.outputs(Z, "val"), np.ones(n_val_draws), problem.n_classes)
            return predictive_log_loss(proba, y_val)

        # the kept q: means of the best-validated generation (the last one
        # without validation), variances of the last generation (module docs)
        kept_mu, kept_log_var = split_x(x0)
        kept_gen, kept_val = -1, np.inf
        history, elbos, nlls, kls, val_losses = [], [], [], [], []
        exhausted = False
        n_iter = 0
        for gen in range(self.max_iter):
            if es.stop():
                break
            if self._iteration_cost(problem) > problem.remaining:
                exhausted = True
                break
            X = np.asarray(es.ask(), dtype=np.float64)  # (popsize, 2 dim), log-variances within bounds
            mu, log_var = split_x(X)
            eps = noise_rng.standard_normal((self.n_mc, dim))  # common random numbers
            Z = mu[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps[None, :, :]
            try:
                losses = problem.loss(Z.reshape(-1, dim), "train")
            except BudgetExhausted:
                exhausted = True
                break
            nll = n_train * np.asarray(losses, dtype=np.float64).reshape(len(X), self.n_mc).mean(axis=1)
            kl = gaussian_kl(mu, np.exp(log_var), prior_variance)
            elbo = nll + self.kl_weight * kl
            es.tell(list(X), elbo.tolist())
            j = int(np.argmin(elbo))
            history.append(elbo[j])
            elbos.append(float(elbo[j]))
            nlls.append(float(nll[j]))
            kls.append(float(kl[j]))
            n_iter += 1
            current_mu, current_log_var = split_x(es.result.xfavorite)
            if use_val:
                try:
                    v = val_log_loss(current_mu, current_log_var)
                except BudgetExhausted:
                    exhausted = True
                    break
                val_losses.append(v)
                if v < kept_val:
                    kept_mu, kept_gen, kept_val = current_mu, gen, v
            else:
                kept_mu, kept_gen = current_mu, gen
            kept_log_var = current_log_var
            problem.report(neg_elbo=float(elbo[j]))
        kept_var = np.exp(kept_log_var)
        samples = kept_mu + np.sqrt(kept_var) * sample_rng.standard_normal((self.n_samples, dim))
        weights = np.full(self.n_samples, 1.0 / self.n_samples)
        info = {
            "mean": kept_mu.copy(),
            "variance": kept_var.copy(),
            "generation": kept_gen,
            "selection": "val_log_loss" if use_val else "final_mean",
            "elbo": np.asarray(elbos),
            "nll": np.asarray(nlls),
            "kl": np.asarray(kls),
            "val_log_loss": np.asarray(val_losses),
            "kl_weight": self.kl_weight,
            "prior_variance": prior_variance,
        }
        history = np.asarray(history, dtype=np.float64).reshape(-1, 1)
        return LearnerResult(samples, weights, history, n_iter, exhausted, info)
