"""Gradient-free variational inference over prompts (``method="vi"``).

The learner fits a diagonal Gaussian ``q(z) = N(mu, diag(exp(log_var)))`` over
the search space by minimising a Monte Carlo negative ELBO with CMA-ES, the
search that needs no gradient (Shen et al., "Reliable Gradient-free and
Likelihood-free Prompt Tuning", EACL 2023 Findings).

The algorithm step by step, how its defaults were chosen and its references:
docs/algorithms.md, "Gradient-free variational inference".
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
        """Queries of the ``n_samples`` kept draws' read-outs: new prompts,
        read out after the fit (on the training and validation texts) where
        the problem fits read-outs."""
        if not getattr(problem, "fits_readout", False):
            return 0
        if problem.has_split("val"):
            return request_cost(problem, self.n_samples, "val", fresh=True)
        return request_cost(problem, self.n_samples, "train")

    def minimum_budget(self, problem):
        """Queries of a fit with one generation: ``_iteration_cost`` plus,
        where the problem fits a read-out per candidate
        (``problem.fits_readout``), the queries of the ``n_samples`` kept
        draws' read-outs."""
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
