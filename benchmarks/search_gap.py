"""Where does black-box search lose to the white box? (issue #20, item 2)

One table on a task (BBC News by default), several seeds, the standard
split (16 + 16 texts per class to fit, 300 test texts): the untuned template
with the default read-out, the white box on the full prompt, the white box
restricted to the black-box search space (gradient through the same random
projection from the same start: ``GradientPromptClassifier(intrinsic_dim=)``),
and CMA-ES (``bbt``) at 1x / 3x / 10x its default iterations, with
``intrinsic_dim`` 200 / 500, ``sigma0`` 0.3 and five more prompt vectors
before the template's tail (``n_prompt_tokens``). Each row reports accuracy and
log loss on the texts the search trained on, its validation texts and the
test texts, so that under-optimisation (train loss stays high) and
over-fitting (train falls, validation and test do not) can be told apart.

Resumable: every (row, seed) is one JSON file in ``--out``; a finished one
is skipped (finished rows are kept in docs/results/search_gap/: copy them
into ``--out`` to go on). Run from a checkout::

    OMP_NUM_THREADS=1 python benchmarks/search_gap.py --seeds 0 1 2 --out search_gap/

Hours per seed on one CPU core (the 10x row alone is about ten default
fits). ``--rows`` picks rows by name; ``--table`` prints the table of what
is there.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import time

import numpy as np

from _rows import RecordSplit, run_rows
from skprompt import BlackBoxPromptClassifier
from skprompt.datasets import few_shot_split, load_task
from skprompt.evaluation import prediction_metrics
from skprompt.models import default_backend
from skprompt.readout import DEFAULT_TOP_K, apply_readout, choose_readout, fit_family
from skprompt.whitebox import GradientPromptClassifier

#: name -> (estimator, parameters); the black-box rows start from the defaults.
ROWS = {
    "zero-shot": ("black", {"method": "zero-shot"}),
    "white box": ("white", {}),
    "white box, d=50": ("white", {"intrinsic_dim": 50, "learning_rate": 0.05}),
    "bbt 1x": ("black", {"method": "bbt"}),
    "bbt 3x": ("black", {"method": "bbt", "max_iter": 45}),
    "bbt 10x": ("black", {"method": "bbt", "max_iter": 150}),
    "bbt d=200": ("black", {"method": "bbt", "intrinsic_dim": 200}),
    "bbt d=500": ("black", {"method": "bbt", "intrinsic_dim": 500}),
    "bbt sigma0=0.3": ("black", {"method": "bbt", "sigma0": 0.3}),
    # more prompt capacity: 5 free vectors before the tail's (at the mean input embedding at z = 0)
    "bbt tail+5": ("black", {"method": "bbt", "extra_prompt_tokens": 5}),
}


def run_one(task, name, seed, model, n_test):
    kind, params = ROWS[name]
    split = few_shot_split(task.texts, task.target, n_per_class=16, n_val_per_class=16, n_test=n_test,
                           random_state=seed)
    X = list(split.X_train) + list(split.X_val)
    y = np.concatenate([split.y_train, split.y_val])
    backend = default_backend(template=task.template, verbalizer=task.verbalizer, model=model)
    params = dict(params)
    if "extra_prompt_tokens" in params:
        params["n_prompt_tokens"] = backend.default_prompt_length + params.pop("extra_prompt_tokens")
    if kind == "black":
        clf = BlackBoxPromptClassifier(backend, random_state=seed, **params)
    else:
        clf = GradientPromptClassifier(backend, random_state=seed, **params)
    start = time.perf_counter()
    with RecordSplit() as record:
        clf.fit(X, y)
    seconds = time.perf_counter() - start
    parts = {"test": (list(split.X_test), split.y_test)}
    for part, (texts, idx) in (record.split or {}).items():
        parts[part] = (texts, clf.classes_[idx])
    if record.split is None:  # zero-shot: its read-out learnt from every fit text
        parts["train"] = (X, y)
    row = {"row": name, "seed": seed, "model": model, "task": task.name, "params": params, "seconds": seconds,
           "n_queries": int(getattr(clf, "n_queries_", 0)), "calibration": getattr(clf, "calibration_", None)}
    for part, (texts, labels) in parts.items():
        metrics = prediction_metrics(labels, clf.predict_proba(texts), clf.classes_)
        for key in ("accuracy", "log_loss", "ece"):
            row[f"{part}_{key}"] = float(metrics[key])
    if kind == "white":  # the same prompt read out as the black box reads its prompts ("auto" on every fit text)
        proba, family = _with_readout(backend, clf.prompt_embeddings_, X, y, list(split.X_test), clf.classes_)
        metrics = prediction_metrics(split.y_test, proba, clf.classes_)
        row["readout"] = family
        for key in ("accuracy", "log_loss", "ece"):
            row[f"test_{key}_with_readout"] = float(metrics[key])
    return row


def _with_readout(backend, prompt, X, y, test, classes):
    """Test probabilities of ``prompt`` through the read-out ``calibration="auto"`` would fit on ``X, y``."""
    k = min(DEFAULT_TOP_K, backend.max_top_k)
    fit = backend.score(prompt, list(X), list(classes), top_k=k)
    out = backend.score(prompt, test, list(classes), top_k=k)
    y_idx = np.searchsorted(classes, y)
    family, _ = choose_readout(fit, y_idx, n_classes=len(classes))
    offsets, scales, maps = fit_family(fit, y_idx, family, len(classes))
    return np.exp(apply_readout(out, offsets, scales, maps if family == "topk" else None))[0], family


def table(out):
    rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, "*.json")))]
    cols = [f"{p}_{m}" for p in ("train", "val", "test") for m in ("accuracy", "log_loss")]
    lines = ["| row | seeds | " + " | ".join(cols) + " | test ECE | queries |", "|---" * (len(cols) + 4) + "|"]
    extra = []
    for name in ROWS:
        sel = [r for r in rows if r["row"] == name]
        if not sel:
            continue
        cell = lambda k: (f"{np.mean([r[k] for r in sel]):.3f}" if all(k in r for r in sel) else "")  # noqa: E731
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in sel)} | "
                     + " | ".join(cell(c) for c in cols)
                     + f" | {cell('test_ece')} | {np.mean([r['n_queries'] for r in sel]):.0f} |")
        with_readout = [r for r in sel if "test_accuracy_with_readout" in r]
        if with_readout:
            extra.append(f"| {name} + the black box's read-out | {','.join(str(r['seed']) for r in with_readout)} | "
                         + " / ".join(f"{np.mean([r[f'test_{m}_with_readout'] for r in with_readout]):.3f}"
                                      for m in ("accuracy", "log_loss", "ece")) + " |")
    if extra:
        lines += ["", "| row | seeds | test accuracy / log loss / ECE |", "|---|---|---|"] + extra
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bbc_news")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--out", required=True, help="folder of per-(row, seed) JSON files (resumable)")
    parser.add_argument("--table", action="store_true", help="only print the table of what is in --out")
    args = parser.parse_args()
    if not args.table:
        task = load_task(args.task)
        jobs = [(f"{args.model}__{name.replace(' ', '_').replace(',', '')}__{seed}",
                 functools.partial(run_one, task, name, seed, args.model, args.n_test))
                for seed in args.seeds for name in args.rows]
        for row in run_rows(args.out, jobs):
            print(f"{row['row']} seed {row['seed']}: train {row.get('train_accuracy', float('nan')):.3f} "
                  f"val {row.get('val_accuracy', float('nan')):.3f} test {row['test_accuracy']:.3f} "
                  f"(log loss {row['test_log_loss']:.3f}, {row['seconds']:.0f} s)", flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
