"""Calibration of the factorised SNPE screen (issue #19, defect 2).

``inference="factorised"`` lets a training text into the likelihood only if
its correctness depends on θ by a test at level ``FACTORISED_ALPHA / n_texts``
(:func:`skprompt.inference.snpe._screen_p_values`). The screen used to be
the logistic regression's likelihood ratio against chi-square(dim), which is
inflated at dim 50 and 200 simulations; this script measures the old and the
new screen.

Run from a checkout::

    OMP_NUM_THREADS=1 python benchmarks/snpe_screen.py toy          # about 5 minutes on 1 core
    OMP_NUM_THREADS=1 python benchmarks/snpe_screen.py real --seeds 0   # 2 fits per seed, 10-25 min each

``toy``: correctness drawn independently of θ (a rate per text, uniform in
[0.05, 0.95]) on ``n`` prior draws in ``dim`` dimensions: the null
distribution of the old statistic, the familywise rate (at least one text
kept) of both screens, the share of texts kept when each text's correctness
is a logistic in its own direction of θ (power), and the cost of building
the likelihood (screen plus the kept texts' logistic fits).

``real``: ``BlackBoxPromptClassifier(method="snpe", inference="factorised")``
with the bundled SmolLM2 on Rotten Tomatoes (16 + 16 texts per class, 300 test
texts), once with the old screen (monkeypatched in) and once with the
current one, on the same backend (its cache serves the second fit the
queries the two share). Prints ``fit_info_["n_informative_texts"]`` per round,
the selected round and the test accuracy of both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import expit, xlogy
from scipy.stats import chi2

from skprompt.inference import snpe


def old_statistics(units, correct):
    """The old screen's statistic per text: 2 (log L(logistic, C=1) - log L(constant));
    NaN for a text every simulation gets right or wrong."""
    from sklearn.linear_model import LogisticRegression

    n = len(units)
    out = np.full(correct.shape[1], np.nan)
    for i in range(correct.shape[1]):
        c = correct[:, i].astype(int)
        k = int(c.sum())
        if k in (0, n):
            continue
        p = LogisticRegression(C=1.0, max_iter=1000).fit(units, c).predict_proba(units)[:, 1]
        fitted = float((xlogy(c, p) + xlogy(1 - c, 1 - p)).sum())
        constant = k * np.log(k / n) + (n - k) * np.log(1 - k / n)
        out[i] = 2.0 * (fitted - constant)
    return out


class OldFactorisedLikelihood(snpe._FactorisedLikelihood):
    """The likelihood with the old screen (likelihood ratio against chi-square(dim))."""

    def __init__(self, theta, correct, prior_sd, alpha):
        from sklearn.linear_model import LogisticRegression

        units = theta / prior_sd
        n, dim = units.shape
        stats = old_statistics(units, correct)
        self.p_values = np.where(np.isnan(stats), 1.0, chi2.sf(np.nan_to_num(stats), dim))
        weights, biases = [], []
        for i in np.flatnonzero(self.p_values < alpha / correct.shape[1]):
            model = LogisticRegression(C=1.0, max_iter=1000).fit(units, correct[:, i].astype(int))
            weights.append(model.coef_[0] / prior_sd)
            biases.append(float(model.intercept_[0]))
        self.n_informative = len(weights)
        self.weights = np.array(weights, dtype=np.float64).reshape(-1, dim)
        self.biases = np.array(biases, dtype=np.float64)


def _null(rng, n, dim, n_texts):
    theta = rng.standard_normal((n, dim))
    rate = rng.uniform(0.05, 0.95, n_texts)
    return theta, rng.random((n, n_texts)) < rate


def _logistic(rng, n, dim, n_texts, effect):
    theta = rng.standard_normal((n, dim))
    direction = rng.standard_normal((n_texts, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return theta, rng.random((n, n_texts)) < expit(effect * theta @ direction.T)


def toy(args):
    rng = np.random.default_rng(args.seed)
    n, dim, alpha = args.n, args.dim, snpe.FACTORISED_ALPHA
    print(f"n = {n} simulations, dim = {dim}, alpha = {alpha} (Bonferroni over texts)")

    stats = np.concatenate([old_statistics(*_null(rng, n, dim, 10)) for _ in range(args.null_reps // 10)])
    q = np.quantile(stats, [0.5, 0.95, 0.99])
    print(f"old statistic under the null ({len(stats)} texts): mean {stats.mean():.1f} (chi2: {dim}), "
          f"sd {stats.std():.1f} (chi2: {np.sqrt(2 * dim):.1f}), quantiles 50/95/99 % "
          f"{q[0]:.1f}/{q[1]:.1f}/{q[2]:.1f} (chi2: {chi2.ppf(0.5, dim):.1f}/{chi2.ppf(0.95, dim):.1f}/"
          f"{chi2.ppf(0.99, dim):.1f}); per-text rejection at {alpha}/24: "
          f"{np.mean(chi2.sf(stats, dim) < alpha / 24):.4f} (nominal {alpha / 24:.4f})")

    for n_texts in args.texts:
        fw_old, fw_new = [], []
        for _ in range(args.reps):
            theta, correct = _null(rng, n, dim, n_texts)
            fw_new.append(snpe._FactorisedLikelihood(theta, correct, 1.0, alpha).n_informative > 0)
            fw_old.append(OldFactorisedLikelihood(theta, correct, 1.0, alpha).n_informative > 0)
        se = np.sqrt(alpha * (1 - alpha) / args.reps)
        print(f"familywise rate, {n_texts} null texts, {args.reps} fits: old {np.mean(fw_old):.3f}, "
              f"new {np.mean(fw_new):.3f} (nominal {alpha}, binomial se {se:.3f})")

    # later rounds: all simulations so far, the first round's prior draws and
    # then draws of the prior truncated to theta_0 > t (the Beta law is exact
    # on prior draws only); new screen only (cheap)
    def truncated(m, t):
        out, got = [], 0
        while got < m:
            z = rng.standard_normal((20_000, dim))
            out.append(z[z[:, 0] > t])
            got += len(out[-1])
        return np.vstack(out)[:m]

    for label, cuts in [("2 rounds, theta_0 > 1", [1.0]), ("5 rounds, theta_0 > 0.5, 1, 1.5, 2", [0.5, 1, 1.5, 2])]:
        for lo, hi in [(0.05, 0.95), (0.003, 0.02)]:
            fw = []
            for _ in range(args.reps * 3):
                theta = np.vstack([rng.standard_normal((n, dim))] + [truncated(n, t) for t in cuts])
                correct = rng.random((len(theta), 24)) < rng.uniform(lo, hi, 24)
                fw.append((snpe._screen_p_values(theta, correct) < alpha / 24).any())
            print(f"familywise rate, 24 null texts (rates {lo}-{hi}), {label}, {len(fw)} fits: new {np.mean(fw):.3f}")

    for effect in args.effects:
        k_old, k_new = [], []
        for _ in range(max(1, args.reps // 20)):
            theta, correct = _logistic(rng, n, dim, 24, effect)
            k_new.append(snpe._FactorisedLikelihood(theta, correct, 1.0, alpha).n_informative / 24)
            k_old.append(OldFactorisedLikelihood(theta, correct, 1.0, alpha).n_informative / 24)
        print(f"power, 24 texts logistic in their own direction, slope {effect}: "
              f"old keeps {np.mean(k_old):.3f}, new {np.mean(k_new):.3f}")

    for n_texts, n_sim in [(24, 200), (80, 200), (80, 1000)]:
        theta, correct = _null(rng, n_sim, dim, n_texts)
        for name, fn in [("screen only", lambda: snpe._screen_p_values(theta, correct)),
                         ("new likelihood (null: nothing kept)",
                          lambda: snpe._FactorisedLikelihood(theta, correct, 1.0, alpha)),
                         ("old likelihood", lambda: OldFactorisedLikelihood(theta, correct, 1.0, alpha))]:
            t = time.perf_counter()
            for _ in range(3):
                fn()
            print(f"cost, {n_texts} texts x {n_sim} simulations x {dim} dims, {name}: "
                  f"{(time.perf_counter() - t) / 3 * 1e3:.1f} ms")


def real(args):
    from skprompt import BlackBoxPromptClassifier
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    for seed in args.seeds:
        split = few_shot_split(task.texts, task.target, n_per_class=16, n_val_per_class=16, n_test=300,
                               random_state=seed)
        X = list(split.X_train) + list(split.X_val)
        y = np.concatenate([split.y_train, split.y_val])
        backend = default_backend(template=task.template, verbalizer=task.verbalizer)
        for name, cls in [("old screen", OldFactorisedLikelihood), ("new screen", snpe._FactorisedLikelihood)]:
            original = snpe._FactorisedLikelihood
            snpe._FactorisedLikelihood = cls
            try:
                t = time.perf_counter()
                clf = BlackBoxPromptClassifier(backend, method="snpe", method_params={"inference": "factorised"},
                                               random_state=seed, validation_fraction=0.5).fit(X, y)
                wall = time.perf_counter() - t
            finally:
                snpe._FactorisedLikelihood = original
            info = clf.fit_info_
            acc = float(np.mean(clf.predict(split.X_test) == np.asarray(split.y_test)))
            print(f"seed {seed}, {name}: n_informative_texts {info['n_informative_texts']}, "
                  f"round_mean_error {np.round(info['round_mean_error'], 3).tolist()}, "
                  f"val_errors {np.round(info['val_errors'], 3).tolist()}, "
                  f"selected round {info['selected_round']}, test accuracy {acc:.3f} ({wall:.0f} s)",
                  flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("toy")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--null-reps", type=int, default=1000)
    p.add_argument("--texts", type=lambda s: [int(v) for v in s.split(",")], default=[24])
    p.add_argument("--effects", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 1.5, 2.0])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=toy)
    p = sub.add_parser("real")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.set_defaults(run=real)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
