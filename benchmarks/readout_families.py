"""Read-out families of the untuned template (issue #20, item 1).

``method="zero-shot"`` with each ``calibration`` (``None``, ``"affine"``,
``"linear"``, ``"topk"``, ``"auto"``) on the standard split of the benchmark (16 + 16
texts per class to fit, 300 test texts) of each task, per seed: accuracy,
ECE, log loss on the test texts, and which family ``"auto"`` chose with its
cross-validated log losses. Every calibration reads the same scores (one
backend per task and seed, whose cache serves them), so a seed costs one
query per fit and test text.

Run from a checkout::

    OMP_NUM_THREADS=1 python benchmarks/readout_families.py --seeds 0 1 2 --out readout_families.json

About 10 minutes on one core for SmolLM2 (``--model gemma-3-270m``: about
twice that). Prints a table of means over seeds and writes every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from skprompt import BlackBoxPromptClassifier
from skprompt.datasets import few_shot_split, load_task
from skprompt.evaluation import prediction_metrics
from skprompt.models import default_backend

CALIBRATIONS = (None, "affine", "linear", "topk", "auto")


def run(tasks, seeds, model, k=16, n_test=300):
    rows = []
    for task_name in tasks:
        task = load_task(task_name)
        for seed in seeds:
            split = few_shot_split(task.texts, task.target, n_per_class=k, n_val_per_class=k, n_test=n_test,
                                   random_state=seed)
            X = list(split.X_train) + list(split.X_val)
            y = np.concatenate([split.y_train, split.y_val])
            backend = default_backend(template=task.template, verbalizer=task.verbalizer, model=model)
            for calibration in CALIBRATIONS:
                start = time.perf_counter()
                clf = BlackBoxPromptClassifier(backend, method="zero-shot", calibration=calibration,
                                               random_state=seed).fit(X, y)
                proba = clf.predict_proba(split.X_test)
                metrics = prediction_metrics(split.y_test, proba, clf.classes_)
                row = {"task": task_name, "seed": seed, "calibration": str(calibration),
                       "chosen": clf.calibration_, "report": clf.fit_info_.get("calibration"),
                       "seconds": time.perf_counter() - start,
                       **{m: float(metrics[m]) for m in ("accuracy", "ece", "log_loss")}}
                rows.append(row)
                print(f"{task_name:>15} seed {seed} {str(calibration):>6} -> {str(clf.calibration_):>6}: "
                      f"acc {row['accuracy']:.3f} ECE {row['ece']:.3f} NLL {row['log_loss']:.3f}", flush=True)
    return rows


def table(rows):
    lines = ["| task | calibration | accuracy | ECE | NLL | auto chose |", "|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for calibration in map(str, CALIBRATIONS):
            sel = [r for r in rows if r["task"] == task and r["calibration"] == calibration]
            cell = {m: f"{np.mean([r[m] for r in sel]):.3f} ± {np.std([r[m] for r in sel]):.3f}"
                    for m in ("accuracy", "ece", "log_loss")}
            chose = ", ".join(r["chosen"] for r in sel) if calibration == "auto" else ""
            lines.append(f"| {task} | {calibration} | {cell['accuracy']} | {cell['ece']} | {cell['log_loss']} "
                         f"| {chose} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "bbc_news", "tweets"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    args = parser.parse_args()
    rows = run(args.tasks, args.seeds, args.model)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
