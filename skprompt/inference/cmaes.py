"""Black-Box Tuning and prompt ensembles: independent CMA-ES runs.

``"bbt"`` is one CMA-ES run (Sun et al., 2022); ``"ensemble"`` is
``n_prompts`` independent runs with distinct seeds, weighted uniformly (Shen
et al., 2023). All members advance in lock-step so that one generation of the
whole ensemble is scored in a single request to the problem (one backend call,
which the backend batches within its memory bound).

Model selection, as in the paper: after every generation, each member's best
training candidate of that generation is scored on the validation split, and
the member keeps the candidate with the lowest validation loss (ties broken by
the training loss). The starting point ``z = 0`` is scored first (once, shared
by all members; on the validation split, or on the training split without
one), so a run keeps a tuned prompt only if it is *strictly* better than the
prompt it started from -- with ``prompt_position="tail"`` that is the
zero-shot template itself. A tie keeps the start: with a zero-one loss on a
few validation texts ties are common, and a tuned prompt that is no better
is only a noisier one. Without a validation split the member keeps its
lowest training loss.

Keeping the start against noise (``keep_start=True``; the estimator turns it
on for ``bbt``, not for ``ensemble``): a
member's kept prompt replaces the start only if its validation loss beats
the start's by more than one standard error of their paired per-text
differences; otherwise the member reverts to ``z = 0``. The selection keeps
the best of ~15 generation bests on a few dozen validation texts, so a
strictly lower validation loss is often noise (docs/defaults.md, "Read-outs
of the kept prompts": it helped where the search cost log loss and took back
a little where the search earned; ``ensemble`` lost 0.4 points with it).

Diversity (``bootstrap=True``): each member's training loss weights the
training texts by its own Bayesian-bootstrap draw (Dirichlet(1, ..., 1)
weights, Rubin 1981), so the members fit different, equally plausible
versions of the data at no extra query -- the members' spread then reflects
how much the few labelled texts pin the prompt down. Validation is
unweighted.
"""

from __future__ import annotations

import warnings

import cma
import numpy as np
from sklearn.utils import check_random_state

from ..losses import LOSSES, compute_loss
from .base import BudgetExhausted, Learner, LearnerResult, SelectionSlot, request_cost

__all__ = ["CMAEnsembleLearner", "make_cma", "seeded_generator"]


def seeded_generator(random_state):
    """A numpy Generator drawn from ``random_state`` (int, RandomState or None)."""
    rs = check_random_state(random_state)
    return np.random.default_rng(rs.randint(0, 2**31 - 1))


def make_cma(x0, sigma0, popsize, max_iter, rng, **extra):
    """A ``cma.CMAEvolutionStrategy`` whose sampling uses ``rng``.

    cma seeds numpy's *global* generator when given a seed; passing our own
    ``randn`` keeps runs reproducible, independent of each other and of
    global state (and safe to run in threads).
    """
    opts = {
        "popsize": int(popsize),
        "maxiter": int(max_iter),
        "randn": lambda *shape: rng.standard_normal(shape),
        "seed": np.nan,
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
        "tolflatfitness": max(int(max_iter), 1),  # zero-one losses are flat often; do not stop on it
    }
    opts.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), float(sigma0), opts)


class CMAEnsembleLearner(Learner):
    """``n_members`` independent CMA-ES runs, each keeping one prompt.

    Parameters
    ----------
    n_members : int
        Number of independent runs (1 for BBT).
    popsize : int
        CMA-ES population size per run.
    max_iter : int
        Generations per run.
    sigma0 : float
        Initial CMA-ES step size (x0 = 0).
    bootstrap : bool, default=False
        Give each member its own Bayesian-bootstrap weights over the
        training texts (see the module docstring).
    keep_start : bool, default=False
        Revert a member to ``z = 0`` unless its kept prompt beats the start
        on validation by more than one standard error (see the module
        docstring). Needs a validation split; ignored without one.
    """

    needs_scores = False  # the loss may be zero_one, which labels allow

    def __init__(self, n_members, popsize, max_iter, sigma0, bootstrap=False, keep_start=False):
        self.n_members = n_members
        self.popsize = popsize
        self.max_iter = max_iter
        self.sigma0 = sigma0
        self.bootstrap = bootstrap
        self.keep_start = keep_start

    def _iteration_cost(self, problem, n_active):
        cost = request_cost(problem, n_active * self.popsize, "train")
        if problem.has_split("val"):
            cost += request_cost(problem, n_active, "val")
        return cost

    def minimum_budget(self, problem):
        # the start is scored before any training query: on the validation split a
        # read-out fitted per candidate needs its training scores too (fresh)
        start = request_cost(problem, 1, "val" if problem.has_split("val") else "train", fresh=True)
        return start + self._iteration_cost(problem, self.n_members)

    def fit(self, problem, random_state):
        rs = check_random_state(random_state)
        dim = problem.dim
        members = [
            make_cma(np.zeros(dim), self.sigma0, self.popsize, self.max_iter, seeded_generator(rs))
            for _ in range(self.n_members)
        ]
        use_val = problem.has_split("val")
        n_train = problem.n_texts("train")
        if self.bootstrap:
            boot = rs.dirichlet(np.ones(n_train), size=self.n_members) * n_train
        else:
            boot = np.ones((self.n_members, n_train))
        # The start z = 0, scored once for every member (on the training split with each
        # member's own text weights when there is no validation split). It is kept on ties:
        # its key's second entry, -inf, wins every tie of the first.
        start_split = "val" if use_val else "train"
        # label-only: every validated option and its per-text errors, so that the
        # estimator can re-make each member's choice without any one text
        record = bool(problem.labels_only) and use_val
        options = [[] for _ in range(self.n_members)]
        # keep_start: the start's per-text validation losses, and each member's best's
        guarded = self.keep_start and use_val
        per_text = LOSSES[problem.loss_name]
        start_text = None
        best_text = [None] * self.n_members
        try:
            out = problem.outputs(np.zeros((1, dim)), start_split)
            if guarded:
                start_text = per_text(out, problem.y("val"))[0]
            start_loss = compute_loss(problem.loss_name, np.repeat(out, self.n_members, axis=0),
                                      problem.y(start_split), None if use_val else boot)
            if record:
                for k in range(self.n_members):
                    options[k].append((np.zeros(dim), self._errors(out[0], problem), -np.inf))
        except BudgetExhausted:
            start_loss = np.full(self.n_members, np.inf)
        best_key = [(float(v), -np.inf) for v in start_loss]  # (selection loss, train loss)
        best_z = [np.zeros(dim) for _ in range(self.n_members)]
        best_train = np.full(self.n_members, np.inf)
        history = []
        exhausted = False
        n_iter = 0
        for _ in range(self.max_iter):
            active = [k for k, es in enumerate(members) if not es.stop()]
            if not active:
                break
            if self._iteration_cost(problem, len(active)) > problem.remaining:
                exhausted = True
                break
            candidates = [np.asarray(members[k].ask()) for k in active]
            try:
                weights = np.repeat(boot[active], self.popsize, axis=0)
                losses = problem.loss(np.vstack(candidates), "train", sample_weight=weights)
            except BudgetExhausted:
                exhausted = True
                break
            losses = losses.reshape(len(active), self.popsize)
            gen_best = []
            for i, k in enumerate(active):
                members[k].tell(list(candidates[i]), losses[i].tolist())
                j = int(np.argmin(losses[i]))
                gen_best.append((candidates[i][j], float(losses[i][j])))
                best_train[k] = min(best_train[k], float(losses[i][j]))
            if use_val:
                try:
                    val_out = problem.outputs(np.vstack([z for z, _ in gen_best]), "val")
                    val = compute_loss(problem.loss_name, val_out, problem.y("val"))
                except BudgetExhausted:
                    exhausted = True
                    val = None
                if record and val is not None:
                    for i, k in enumerate(active):
                        options[k].append((gen_best[i][0].copy(), self._errors(val_out[i], problem),
                                           gen_best[i][1]))
            for i, k in enumerate(active):
                z, tl = gen_best[i]
                key = (float(val[i]), tl) if use_val and val is not None else (tl, tl)
                if use_val and val is None:
                    continue
                if key < best_key[k]:
                    best_key[k], best_z[k] = key, z.copy()
                    if guarded:
                        best_text[k] = per_text(val_out[i:i + 1], problem.y("val"))[0]
            row = np.full(self.n_members, np.nan)
            row[active] = best_train[active]
            history.append(row)
            n_iter += 1
            problem.report(best_train_loss=float(np.min(best_train)))
            if exhausted:
                break
        guard = None
        if start_text is not None:
            guard = self._guard(start_text, best_text)
            for k in np.flatnonzero(guard["reverted"]):
                best_z[k], best_key[k], boot[k] = np.zeros(dim), (float(start_loss[k]), -np.inf), 1.0
        samples = np.vstack(best_z)
        weights = np.full(self.n_members, 1.0 / self.n_members)
        history = np.vstack(history) if history else np.empty((0, self.n_members))
        info = {"selection_losses": [k[0] for k in best_key], "start_loss": float(start_loss[0]),
                "kept_start": [not np.any(z) for z in best_z]}
        if guard is not None:
            info["start_guard"] = guard
        if self.bootstrap:
            info["bootstrap_weights"] = boot
        selection = None
        if record and all(options):
            selection = [SelectionSlot([(z[None, :], np.ones(1)) for z, _, _ in opts],
                                       np.stack([e for _, e, _ in opts]), np.array([t for _, _, t in opts]),
                                       1.0 / self.n_members)
                         for opts in options]
        return LearnerResult(samples, weights, history, n_iter, exhausted, info, selection=selection)

    @staticmethod
    def _guard(start_text, best_text):
        """Which members revert to the start: those whose kept prompt's mean
        per-text validation loss is not below the start's by more than one
        standard error of the paired differences (members that kept the
        start have nothing to revert). With one validation text the noise
        cannot be told, and a tuned member reverts."""
        gain, se, reverted = [], [], []
        for text in best_text:
            if text is None:  # kept the start
                gain.append(0.0), se.append(0.0), reverted.append(False)
                continue
            diff = np.asarray(start_text) - np.asarray(text)  # > 0 where the kept prompt does better
            g = float(diff.mean())
            s = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.inf
            gain.append(g), se.append(s), reverted.append(not g > s)
        return {"gain": gain, "se": se, "reverted": reverted}

    @staticmethod
    def _errors(labels, problem):
        """Per-text zero-one errors of one candidate's validation labels."""
        return (np.asarray(labels) != np.asarray(problem.y("val"))).astype(np.float64)
