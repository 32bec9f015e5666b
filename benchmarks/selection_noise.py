"""Does the search cost calibration through selection noise and a small read-out fit? (issue #20, item 3)

On the demo task (Rotten Tomatoes, 16 texts per class to fit, 500 test
texts) a tuned prompt had worse log loss and ECE than the untuned template.
Two suspects, both measured here from one fit per (method, seed), post hoc
and at no extra query (every score is in the backend's cache):

- the read-out of a kept prompt is fitted on the training half of the fit
  texts only, while zero-shot's uses all of them: ``pooled`` refits the kept
  prompts' read-outs (same family) on training + validation texts;
- the kept prompt wins the validation loss among ~15 generation bests by
  noise: ``guard`` keeps the start ``z = 0`` unless a member's validation
  loss beats the start's by more than one standard error of the per-text
  differences (paired).

Each row gives test accuracy / log loss / ECE of: the fit as it is, pooled,
guard, guard + pooled, and the start with the pooled read-out (the
zero-shot estimator's prediction), with the train and validation losses of
the start and of the kept prompts. Resumable: one JSON per (task, method,
seed) in ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/selection_noise.py --seeds 0 1 2 --out selection_noise/

``--bench-split`` fits as ``skprompt bench --size standard`` does (16 + 16
texts per class, ``validation_fraction=0.5``, 300 test texts with
``--n-test 300``), and ``--cache <bench out>/queries.sqlite`` replays a bench
run's answers, so that the fits are the bench's own and cost no model call.
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
from skprompt.benchmark import make_estimator
from skprompt.datasets import few_shot_split, load_task
from skprompt.evaluation import prediction_metrics
from skprompt.models import default_backend
from skprompt.readout import apply_readout, choose_readout, fit_family


def _raw(clf, Z, texts):
    return clf.backend_.score(clf.projection_(Z), list(texts), list(clf.classes_), top_k=clf.top_k_)


def _fit(clf, raw, y, kind=None):
    """Read-outs of the family ``kind`` (default: the one ``clf`` uses), fitted on ``raw`` answers with labels
    ``y`` (indices)."""
    offsets, scales, maps = fit_family(raw, y, kind or clf.calibration_, len(clf.classes_))
    return offsets, scales, (maps if (kind or clf.calibration_) == "topk" else None)


def _proba(raw, readout):
    return np.exp(apply_readout(raw, *readout)).mean(axis=0)


def _nll(raw, readout, y):
    """Per-candidate, per-text negative log-likelihood (n_candidates, n_texts)."""
    logp = apply_readout(raw, *readout)
    return -logp[:, np.arange(len(y)), y]


def run_one(task, method, seed, n_per_class, n_test, model=None, bench_split=False, cache=None):
    if bench_split:  # as skprompt.benchmark: k + k texts per class, all of them given to fit, half held out
        split = few_shot_split(task.texts, task.target, n_per_class=n_per_class, n_val_per_class=n_per_class,
                               n_test=n_test, random_state=seed)
        split.X_train = list(split.X_train) + list(split.X_val)
        split.y_train = np.concatenate([split.y_train, split.y_val])
    else:
        split = few_shot_split(task.texts, task.target, n_per_class=n_per_class, n_test=n_test, random_state=seed)
    backend = default_backend(template=task.template, verbalizer=task.verbalizer, model=model, cache=cache)
    clf = (make_estimator(method, backend, seed, budget=None) if bench_split
           else BlackBoxPromptClassifier(backend, method=method, random_state=seed))
    start = time.perf_counter()
    with RecordSplit() as record:
        clf.fit(split.X_train, split.y_train)
    seconds = time.perf_counter() - start
    (train_x, train_y), (val_x, val_y) = record.split["train"], record.split["val"]
    test_y = np.searchsorted(clf.classes_, split.y_test)
    samples = clf.samples_
    zero = np.zeros((1, samples.shape[1]))
    both = np.vstack([zero, samples])
    raw = {part: _raw(clf, both, x) for part, x in (("train", train_x), ("val", val_x), ("test", split.X_test))}
    pooled_raw = np.concatenate([raw["train"], raw["val"]], axis=1)
    pooled_y = np.concatenate([train_y, val_y])
    own = _fit(clf, raw["train"], train_y)  # as in the search: fitted on the training texts
    pooled = _fit(clf, pooled_raw, pooled_y)
    # the family chosen again, as "auto" does, on every fit text: the start's answers or the first kept prompt's
    start_kind, _ = choose_readout(pooled_raw[:1], pooled_y, n_classes=len(clf.classes_))
    kept_kind, _ = choose_readout(pooled_raw[1:2], pooled_y, n_classes=len(clf.classes_))

    def pick(readout, rows):
        return tuple(None if r is None else (r[rows] if not isinstance(r, list) else [r[i] for i in rows])
                     for r in readout)

    val_nll = _nll(raw["val"], own, val_y)  # (1 + members, n_val)
    diff = val_nll[1:] - val_nll[:1]  # kept minus start, per text
    se = diff.std(axis=1, ddof=1) / np.sqrt(diff.shape[1])
    keep = diff.mean(axis=1) < -se  # a member beats the start by more than its noise
    members = np.arange(1, len(both))
    guarded = np.where(keep, members, 0)
    row = {"task": task.name, "method": method, "seed": seed, "seconds": seconds, "n_queries": int(clf.n_queries_),
           "calibration": clf.calibration_, "family_start_pooled": start_kind, "family_kept_pooled": kept_kind,
           "kept_by_guard": keep.tolist(),
           "val_gain": (-diff.mean(axis=1)).tolist(), "val_gain_se": se.tolist()}
    for part, y in (("train", train_y), ("val", val_y), ("test", test_y)):
        nll = _nll(raw[part], own, y).mean(axis=1)
        row[f"{part}_nll_start"], row[f"{part}_nll_kept"] = float(nll[0]), float(nll[1:].mean())
    variants = {
        "fitted": clf.predict_proba(split.X_test),
        "pooled": _proba(raw["test"][members], pick(pooled, members)),
        "guard": _proba(raw["test"][guarded], pick(own, guarded)),
        "guard+pooled": _proba(raw["test"][guarded], pick(pooled, guarded)),
        "start, pooled": _proba(raw["test"][:1], pick(pooled, [0])),
        "pooled, family on the start's": _proba(raw["test"][members],
                                                pick(_fit(clf, pooled_raw, pooled_y, start_kind), members)),
        "pooled, family on the kept's": _proba(raw["test"][members],
                                               pick(_fit(clf, pooled_raw, pooled_y, kept_kind), members)),
    }
    for name, proba in variants.items():
        m = prediction_metrics(split.y_test, proba, clf.classes_)
        row[name] = {k: float(m[k]) for k in ("accuracy", "log_loss", "ece")}
    return row


def table(out):
    rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, "*.json")))]
    names = ["fitted", "pooled", "guard", "guard+pooled", "start, pooled", "pooled, family on the start's",
             "pooled, family on the kept's"]
    lines = ["| task | method | seeds | " + " | ".join(names) + " | guard kept | train NLL start/kept | "
             "val NLL start/kept | test NLL start/kept |", "|---" * (len(names) + 7) + "|"]
    for key in sorted({(r["task"], r["method"]) for r in rows}):
        sel = [r for r in rows if (r["task"], r["method"]) == key]
        cells = [" / ".join(f"{np.mean([r[n][m] for r in sel]):.3f}" for m in ("accuracy", "log_loss", "ece"))
                 if all(n in r for r in sel) else "" for n in names]
        kept = np.mean([np.mean(r["kept_by_guard"]) for r in sel])
        nll = [f"{np.mean([r[f'{p}_nll_start'] for r in sel]):.3f} / {np.mean([r[f'{p}_nll_kept'] for r in sel]):.3f}"
               for p in ("train", "val", "test")]
        lines.append(f"| {key[0]} | {key[1]} | {','.join(str(r['seed']) for r in sel)} | " + " | ".join(cells)
                     + f" | {kept:.2f} | " + " | ".join(nll) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--methods", nargs="+", default=["bbt", "ensemble"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--model", default=None, help="bundled model (default: skprompt's default)")
    parser.add_argument("--bench-split", action="store_true",
                        help="fit as `skprompt bench` does (k + k texts per class, validation_fraction=0.5)")
    parser.add_argument("--cache", default=None, help="the backend's query cache (a bench run's queries.sqlite)")
    parser.add_argument("--out", required=True, help="folder of per-(task, method, seed) JSON files (resumable)")
    parser.add_argument("--table", action="store_true", help="only print the table of what is in --out")
    args = parser.parse_args()
    if not args.table:
        task = load_task(args.task)
        jobs = [(f"{args.task}__{method}__{seed}",
                 functools.partial(run_one, task, method, seed, args.n_per_class, args.n_test,
                                   args.model, args.bench_split, args.cache))
                for seed in args.seeds for method in args.methods]
        for row in run_rows(args.out, jobs):
            print(f"{row['method']} seed {row['seed']}: " + ", ".join(
                f"{n} {row[n]['log_loss']:.3f}" for n in ("fitted", "pooled", "guard", "start, pooled")),
                flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
